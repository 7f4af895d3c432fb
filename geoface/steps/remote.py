"""`geoface remote [check|push|pull]`: the DVC remote that keeps the pipeline's data (README "Sharing data").

The repository's .dvc/config names a default remote, `local`, at `../../geoface-dvc-remote` (DVC resolves it from
the .dvc folder: the folder `geoface-dvc-remote` beside the repository), so a fresh clone pushes and pulls without
setup, and clones side by side share it. Point it elsewhere for one clone with
`dvc remote modify --local local url PATH`, or add a cloud remote (`dvc remote add -d NAME s3://...`).

`check` says which remote is the default and whether it can be written (a local folder: created if missing and a
probe file written and removed; a cloud URL is left to DVC); `push` / `pull` check it, then run DVC's own push /
pull (`Repo.push()` / `Repo.pull()`). Every failure is one line naming the remote and its URL.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from dvc.exceptions import DvcException, NotDvcRepoError
from dvc.repo import Repo

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import write_bytes

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RemoteError(GeofaceError, ValueError):
    """A DVC remote that is missing, unusable or failed: the message names it and where it points."""


def _open(repo_dir: Path | str) -> Repo:
    try:
        return Repo(Repo.find_root(str(repo_dir)))
    except NotDvcRepoError:
        raise RemoteError(f"{Path(repo_dir).resolve()}: not inside a DVC repository") from None
    except DvcException as e:  # e.g. ConfigError: a .dvc/config line or key DVC cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RemoteError(f"{Path(repo_dir).resolve()}: DVC cannot open the repository: {first}") from None


def default_remote(repo: Repo) -> tuple[str, str]:
    """(name, url) of the default remote, URLs of local folders made absolute by DVC; RemoteError when none is set."""
    name = repo.config["core"].get("remote")
    config = Path(repo.dvc_dir) / "config"
    if not name:
        raise RemoteError(f"no default DVC remote is configured in {config} (or config.local): "
                          "`dvc remote add -d NAME URL`")
    remotes = repo.config.get("remote", {})
    if name not in remotes or not remotes[name].get("url"):
        raise RemoteError(f"the default DVC remote {name!r} named in {config} has no URL: "
                          f"`dvc remote add -d {name} URL`")
    return name, str(remotes[name]["url"])


def check_remote(repo_dir: Path | str = ".") -> dict:
    """{"remote", "url", "kind": "local" | "cloud", "writable": True | None (not checked)}; RemoteError otherwise."""
    with _open(repo_dir) as repo:
        name, url = default_remote(repo)
    if _SCHEME.match(url) and not url.startswith("file://"):
        return {"remote": name, "url": url, "kind": "cloud", "writable": None}
    folder = Path(url[len("file://"):] if url.startswith("file://") else url)
    probe = folder / f".geoface-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(probe, b"")
        probe.unlink()
    except OSError as e:
        raise RemoteError(f"DVC remote {name!r} at {folder}: not writable ({e.strerror or e})") from None
    return {"remote": name, "url": str(folder), "kind": "local", "writable": True}


def transfer(direction: str, repo_dir: Path | str = ".") -> dict:
    """`push` or `pull` the data of every stage with DVC, after `check_remote`; returns the check and the count."""
    info = check_remote(repo_dir)
    with _open(repo_dir) as repo:
        try:
            n = repo.push() if direction == "push" else repo.pull()
        except DvcException as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RemoteError(f"dvc {direction} with remote {info['remote']!r} at {info['url']}: {first}") from None
    count = n if isinstance(n, int) else sum(len(v) if isinstance(v, (list, dict)) else int(bool(v))
                                             for v in (n or {}).values())
    return {**info, direction: count}
