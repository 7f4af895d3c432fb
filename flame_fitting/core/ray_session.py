"""The secret and the folder of the Ray a stage starts itself (executor.kind ray without an address; executor.py).

Ray runs whatever a client that reaches its GCS submits, as the user who started it; loopback (executor.py
`_loopback_node`) keeps other machines out, not the machine's other users. `private_ray_session()` closes the rest, for
the block that starts, uses and shuts down that Ray:
- token authentication (`RAY_AUTH_MODE=token`) with a fresh random token (256 bits, `secrets.token_hex(32)`) held in
  this process's environment only (`RAY_AUTH_TOKEN`; `RAY_AUTH_TOKEN_PATH` unset for the block): the GCS, raylet,
  agents and workers Ray starts inherit it, and Ray refuses a client that does not present it (the GCS:
  "InvalidAuthToken: Authentication token is missing or incorrect"; the runtime-env agent's HTTP port: 401). Without
  this, Ray 2.60's `ray.init()` turns token mode on by itself, but with the token of `~/.ray/auth_token` (written by
  Ray, mode 0644, the same for every Ray this user starts), which another user reads wherever the home folder can be
  entered;
- Ray's temporary folder (`RAY_TMPDIR`: its session folder, logs, sockets, spilled objects, the GCS port) in a new
  folder only this user can enter (tempfile.mkdtemp: mode 0700; Ray makes the folders under it world-writable, 0777),
  removed after the block. It holds an empty folder `geoface-owner-<host>-<pid>` (temp_names.process_tag: the
  stage's process), so that the folder of a stage killed by SIGKILL, which runs no clean-up, is removed by the next
  one (`clean_stale_ray_folders`). The owner is not in the folder's own name: Ray's socket paths under it must stay
  within 107 bytes (AF_UNIX), which leaves 20 bytes for the parent folder; a longer temporary folder ($RAY_TMPDIR or
  $TMPDIR: on a cluster's compute node often a long per-job path) made every Ray start fail with an OSError
  traceback, so the folder is then made in /tmp (`ray_parent`).
The environment is restored after the block, and Ray's cached settings and token re-read from it.
docs/scaling.md "Who can reach the Ray".
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flame_fitting.core.errors import ExecutorError
from flame_fitting.core.temp_names import process_tag, tag_gone

_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")
PREFIX = "gf-ray-"  # the private folders' names: gf-ray-<8 random characters> (tempfile.mkdtemp)
_OWNER = re.compile(r"geoface-owner-([A-Za-z0-9]+-[0-9]+)")  # the empty folder naming the process that made it


def clean_stale_ray_folders(parent: Path | str) -> list[Path]:
    """Remove the private Ray folders under `parent` left by stages whose process is gone (killed by SIGKILL: no
    clean-up ran); returns them. Only a folder named gf-ray-*, not a link, owned by this user, holding exactly one
    `geoface-owner-<host>-<pid>` folder whose process ran on this host and is gone (temp_names.tag_gone) is
    removed: one of a live process, of another host, or without that folder (written before it, or not ours) stays."""
    removed = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(PREFIX)]
    except OSError:
        return removed
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            owners = [m.group(1) for m in map(_OWNER.fullmatch, os.listdir(e.path)) if m]
        except OSError:
            continue
        if len(owners) == 1 and tag_gone(owners[0]):
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(Path(e.path))
    return removed


# the folder's name and the longest socket path Ray makes under it, in bytes: /gf-ray-<8>, then
# /ray/session_<date 26>_<pid ≤ 7>/sockets/plasma_store.<node ≤ 99> (ray/_private/node.py _prepare_socket_file)
_UNDER_PARENT = len("/gf-ray-12345678") + len("/ray/session_2026-12-08_00-02-52_346406_4194304/sockets/plasma_store.99")
SOCKET_PATH_MAX = 107  # AF_UNIX, without the terminating NUL (Ray's own check: validate_socket_filename)


def ray_parent(default: str) -> str:
    """The folder to make the private folder in: `default` (Ray's choice: $RAY_TMPDIR, $TMPDIR, /tmp) when Ray's socket
    paths under it fit in SOCKET_PATH_MAX bytes, else /tmp if this user can write there (the private folder is 0700
    whatever its parent), else `default` (Ray's start then fails, and the stage says so in one line)."""
    if len(os.fsencode(os.path.abspath(default))) + _UNDER_PARENT <= SOCKET_PATH_MAX:
        return default
    return "/tmp" if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK | os.X_OK) else default


def _reread(ray) -> None:
    """Ray's settings (RayConfig: the authentication mode) and its token read again from the environment."""
    raylet = ray._raylet
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def private_ray_session(ray) -> Iterator[None]:
    """For the block: a fresh token in token mode and a private temporary folder for a Ray started in it (module
    docstring); the folders of killed stages are removed first."""
    saved = {k: os.environ.get(k) for k in _KEYS}
    # Ray's own choice of folder ($RAY_TMPDIR, $TMPDIR, /tmp) unless its socket paths would not fit (ray_parent)
    parent = ray_parent(ray._common.utils.get_default_system_temp_dir())
    clean_stale_ray_folders(parent)
    try:
        folder = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
    except OSError as e:  # $RAY_TMPDIR / $TMPDIR missing, not a folder, not writable
        raise ExecutorError(f"executor.kind=ray: cannot make the local Ray's folder in {parent} "
                            f"($RAY_TMPDIR, else $TMPDIR, else /tmp): {e.strerror or e}; nothing was changed") from None
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_TMPDIR=folder)
    try:
        os.mkdir(os.path.join(folder, f"geoface-owner-{process_tag()}"), 0o700)
        _reread(ray)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reread(ray)
        shutil.rmtree(folder, ignore_errors=True)
