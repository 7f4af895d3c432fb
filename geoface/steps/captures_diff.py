"""`geoface diff-captures OLD NEW`: what changed between two captures (docs/lineage.md).

OLD and NEW are each a capture folder, or a git revision of the DVC repository (a commit, branch or tag). For a
revision, the capture is the one recorded in that revision's dvc.lock at `path` (default: data/captures, the
captures stage's output), read through DVC's own file system (`dvc.api.DVCFileSystem(repo, rev=REV)`): DVC looks the
files up by their md5 in that revision's dvc.lock and reads them from the local cache, or from the default remote
when the cache lacks them. Only capture.json, manifest.parquet and the cameras.json files are read (plus the masks of
a capture written before manifests held mask hashes): images are compared by the content hashes in the manifest,
never downloaded.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from dvc.api import DVCFileSystem
from dvc.config import ConfigError
from dvc.exceptions import NotDvcRepoError
from dvc.repo import Repo
from dvc.utils.serialize import ParseError
from dvc.utils.strictyaml import YAMLValidationError

from flame_fitting.core.errors import GeofaceError
from flame_fitting.formats.capture import capture_index, read_index
from flame_fitting.formats.capture_version import CaptureIndex, diff_indexes

DEFAULT_PATH = "data/captures"  # the captures stage's output in dvc.yaml


class DiffError(GeofaceError, ValueError):
    """A capture that cannot be read: the message names it (folder, or revision and path)."""


def _repo_folder(repo: Path | str) -> Path:
    """`repo` (the --repo option: a folder inside the repository) as a Path; DiffError when it is no folder."""
    p = Path(repo)
    if not p.exists():
        raise DiffError(f"--repo {repo}: no such folder")
    if not p.is_dir():
        raise DiffError(f"--repo {repo}: not a folder")
    return p


def _git_root(start: Path) -> Path | None:
    r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True)
    return Path(r.stdout.strip()) if r.returncode == 0 else None


def _is_revision(rev: str, root: Path) -> bool:
    r = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root,
                       capture_output=True, text=True)
    return r.returncode == 0


def revision_index(rev: str, path: str = DEFAULT_PATH, repo: Path | str = ".") -> CaptureIndex:
    """The index of the capture at `path` in revision `rev` of the DVC repository around `repo`."""
    repo = _repo_folder(repo)
    try:
        root = Path(Repo.find_root(str(repo)))
    except NotDvcRepoError:
        raise DiffError(f"{rev}: not a folder, and {Path(repo).resolve()} is not inside a DVC repository") from None
    where = f"{rev}:{path}"
    fs = DVCFileSystem(str(root), rev=rev)

    def read(rel: str) -> bytes:
        name = f"{path.rstrip('/')}/{rel}"
        try:
            return fs.read_bytes(name)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise
        except (ParseError, YAMLValidationError, ConfigError) as e:  # not a cache miss: no `dvc fetch` would help
            raise DiffError(f"{where}/{rel}: DVC cannot read the repository at revision {rev}: "
                            f"{str(e).strip().splitlines()[0]}") from None
        except Exception as e:  # not in the cache nor on the remote, remote unreachable, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DiffError(f"{where}/{rel}: DVC cannot read it from the cache or the default remote ({first}); "
                            f"`dvc fetch --rev {rev}` or `dvc pull` with a configured remote") from None

    return read_index(where, read)


def load_side(arg: str, path: str = DEFAULT_PATH, repo: Path | str = ".") -> CaptureIndex:
    """OLD or NEW: an existing folder is a capture folder; otherwise a git revision (module docstring)."""
    p = Path(arg)
    if p.exists():
        return capture_index(p)
    root = _git_root(_repo_folder(repo))
    if root is None or not _is_revision(arg, root):
        raise DiffError(f"{arg}: neither a capture folder nor a git revision of "
                        f"{root if root is not None else Path(repo).resolve()}")
    return revision_index(arg, path, repo)


def diff_captures(old: str, new: str, path: str = DEFAULT_PATH, repo: Path | str = ".") -> dict:
    """diff_indexes of OLD and NEW (each a capture folder or a git revision); CaptureError / DiffError naming the
    capture that cannot be read."""
    return diff_indexes(load_side(old, path, repo), load_side(new, path, repo))
