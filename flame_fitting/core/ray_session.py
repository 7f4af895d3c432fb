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
  removed after the block.
The environment is restored after the block, and Ray's cached settings and token re-read from it.
docs/scaling.md "Who can reach the Ray".
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")


def _reread(ray) -> None:
    """Ray's settings (RayConfig: the authentication mode) and its token read again from the environment."""
    raylet = ray._raylet
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def private_ray_session(ray) -> Iterator[None]:
    """For the block: a fresh token in token mode and a private temporary folder for a Ray started in it (module
    docstring)."""
    saved = {k: os.environ.get(k) for k in _KEYS}
    # Ray's own choice of folder ($RAY_TMPDIR, $TMPDIR, /tmp): its socket paths must stay short
    folder = tempfile.mkdtemp(prefix="gf-ray-", dir=ray._common.utils.get_default_system_temp_dir())
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_TMPDIR=folder)
    try:
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
