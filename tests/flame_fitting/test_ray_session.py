"""The private Ray folders of stages killed by SIGKILL (flame_fitting/core/ray_session.py): a stage that starts its
own Ray runs it in a 0700 gf-ray-* folder removed when the executor closes; a killed stage runs no clean-up, so its
folder used to stay for ever, one per killed run. Now each folder holds `geoface-owner-<host>-<pid>` and the next
stage removes the folders whose process is gone, and only those. No Ray is started here: the folders are made the
way the stage makes them, by a real process."""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flame_fitting.core.temp_names import process_tag
from flame_fitting.core.ray_session import clean_stale_ray_folders

REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The pid of a process that ran and was reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def ray_folder(parent: Path, name: str, *owners: str) -> Path:
    """A folder as a stage leaves it: its owner folders, and some of Ray's files under it."""
    folder = parent / name
    (folder / "ray" / "session_1" / "logs").mkdir(parents=True)
    (folder / "ray" / "session_1" / "logs" / "raylet.out").write_text("log\n")
    for owner in owners:
        (folder / f"geoface-owner-{owner}").mkdir()
    folder.chmod(0o700)
    return folder


def test_only_folders_of_gone_processes_of_this_host_are_removed(tmp_path):
    host = process_tag().rsplit("-", 1)[0]
    gone, alive = f"{host}-{dead_pid()}", process_tag()
    stale = ray_folder(tmp_path, "gf-ray-stale123", gone)
    kept = [ray_folder(tmp_path, "gf-ray-alive123", alive),  # a stage that still runs (this process)
            ray_folder(tmp_path, "gf-ray-other123", f"otherhost0a1b2c3d-{gone.rsplit('-', 1)[1]}"),  # another host
            ray_folder(tmp_path, "gf-ray-before12"),  # no owner: made before owners were recorded, or not ours
            ray_folder(tmp_path, "gf-ray-twice123", gone, alive),  # not one owner: not ours to judge
            ray_folder(tmp_path, "ray-gone1234567", gone)]  # not our name
    target = ray_folder(tmp_path, "target", gone)
    (tmp_path / "gf-ray-link1234").symlink_to(target)  # a link to a folder that would qualify: not followed
    (tmp_path / "gf-ray-file1234").write_text("x")
    if os.getuid() == 0:  # another user's folder (only root can make one here)
        theirs = ray_folder(tmp_path, "gf-ray-theirs12", gone)
        os.chown(theirs, 65534, 65534)
        kept.append(theirs)

    assert clean_stale_ray_folders(tmp_path) == [stale]
    assert not stale.exists()
    assert all(k.is_dir() and (k / "ray" / "session_1" / "logs" / "raylet.out").is_file() for k in kept)
    assert target.is_dir() and (tmp_path / "gf-ray-link1234").is_symlink() and (tmp_path / "gf-ray-file1234").is_file()
    assert clean_stale_ray_folders(tmp_path) == []  # nothing more
    assert clean_stale_ray_folders(tmp_path / "missing") == []


STAGE = """import os, sys, time, ray
sys.path.insert(0, sys.argv[1])
from flame_fitting.core.ray_session import private_ray_session
with private_ray_session(ray):
    print(os.environ["RAY_TMPDIR"], flush=True)
    time.sleep(600)
"""


def test_the_folder_of_a_killed_stage_is_removed_by_the_next_session(monkeypatch, request):
    """A real process enters the session (its folder made as for a Ray of its own), is killed by SIGKILL, and its
    folder stays; the next session removes it, keeps the folder of a session still running, and marks its own."""
    ray = pytest.importorskip("ray")
    from flame_fitting.core.ray_session import private_ray_session

    # short: under a parent too long for Ray's socket paths the session makes its folder in /tmp (ray_parent)
    tmp_path = Path(tempfile.mkdtemp(prefix="gf-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path)}
    killed, running = (subprocess.Popen([sys.executable, "-c", STAGE, str(REPO)], env=env, stdout=subprocess.PIPE,
                                        text=True) for _ in range(2))
    try:
        folders = [Path(p.stdout.readline().strip()) for p in (killed, running)]
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert all(f.parent == tmp_path and f.is_dir() for f in folders)  # the killed one's stays until then
        assert os.listdir(folders[0]) == [f"geoface-owner-{process_tag().rsplit('-', 1)[0]}-{killed.pid}"]

        monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
        with private_ray_session(ray):
            own = Path(os.environ["RAY_TMPDIR"])
            assert not folders[0].exists() and folders[1].is_dir()
            assert own.parent == tmp_path and stat.S_IMODE(own.stat().st_mode) == 0o700
            assert os.listdir(own) == [f"geoface-owner-{process_tag()}"]
        assert not own.exists() and os.environ["RAY_TMPDIR"] == str(tmp_path)
    finally:
        for p in (killed, running):
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()


def test_the_parent_folder_is_replaced_by_tmp_only_where_rays_socket_paths_would_not_fit():
    """Ray's longest socket path under the private folder, with the longest pid and a cluster's 99th node, is what
    `ray_parent` budgets: a parent of 20 bytes is kept, one of 21 is replaced by /tmp."""
    from flame_fitting.core.ray_session import SOCKET_PATH_MAX, _UNDER_PARENT, ray_parent

    longest = "/" + "p" * 19 + "/gf-ray-abcdefgh/ray/session_2026-12-08_00-02-52_346406_4194304/sockets/plasma_store.99"
    assert len(longest) == SOCKET_PATH_MAX == 20 + _UNDER_PARENT
    assert ray_parent("/" + "p" * 19) == "/" + "p" * 19 and ray_parent("/tmp") == "/tmp"
    assert ray_parent("/" + "p" * 20) == "/tmp" and ray_parent("/scratch/slurm/job_12345678/tmp") == "/tmp"
