"""Training on several processes (what several GPUs run under `accelerate launch`), as a CPU DDP group (gloo):
a reference-dropped micro-batch leaves the sd21 MLP alignment head without gradients, which DDP refuses unless
it looks for unused parameters ("Expected to have finished reduction in the prior iteration" before the fix), and
only the main process publishes the model, loss CSV and metrics (every process renamed them before); a process that
cannot start, or cannot read its batch of a step, stops every process, with one line naming it (the others waited at
a barrier, or in DDP's forward and backward, for as long as it lived)."""
import inspect
import json
import os
import subprocess
from pathlib import Path

import pytest

from geoface_model.checkpoint import read_csv, touch_run
from geoface_model.run_lock import try_lock
from geoface_model.sd21.tiny import write_tiny_sd21
from geoface_model.synthetic import make_synthetic_shard
from geoface_model.train_run import run_id
from warm_python import warm_python

REPO = Path(__file__).resolve().parents[2]
# what RANK_SCRIPT and STOP_SCRIPT import, imported once by the warm Python the processes are forked from
PRELOAD = ["torch", "accelerate", "flame_fitting.core.errors", "geoface_model.train_run", "geoface_model.ranks"]


def config(root, geometry_norm="dataset"):
    from geoface_model.config import GeoFaceConfig
    return GeoFaceConfig.from_sections(
        tokens=dict(resolution=64, patch_size=16, uv_resolution=64, geo_patch_size=16),
        model=dict(backbone="sd21_mv", base_path=root + "/base", align_head="mlp", qk_norm=True,
                   geometry_norm=geometry_norm),
        loss=dict(align_weight=0.5),
        train=dict(steps=3, batch_size=1, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1, checkpoint_every=3, ema_decay=0.9,
                   cond_dropout=0.5, log_every=1))


RANK_SCRIPT = inspect.getsource(config) + """
import sys
import torch
torch.set_num_threads(1)
from accelerate import PartialState
root, data = sys.argv[1], sys.argv[2]
# the processes form a DDP group on the CPU (gloo), as several GPUs would; they meet through a file (see `launch`)
PartialState(cpu=True, init_method=f"file://{root}/rendezvous")
from flame_fitting.core.errors import GeofaceError, error_line
from geoface_model.train_run import train_model
norm = "none" if "no-geo-norm" in sys.argv[3:] else "dataset"  # none: no sample is read before the first step
try:
    m = train_model(config(root, norm), data, root + "/state", root + "/model", root + "/loss.csv",
                    root + "/train.json")
except (GeofaceError, OSError) as e:  # what the stage prints as one line (stages/common.py `run`)
    print("error:", error_line(e), flush=True)
    if "linger" in sys.argv[3:]:  # stays alive after its error, as a caller that caught it (a notebook) or a dead
        sys.stdin.read()            # peer that NCCL does not notice: the others must not wait for it
    sys.exit(1)
print("steps_run", m["steps_run"])
"""


@pytest.fixture(scope="module")
def python(tmp_path_factory):
    """The processes' interpreter: forks of one Python that imported what the scripts import (a fresh interpreter
    per process spent ~5 s each importing torch, accelerate and diffusers); each is still a process of its own."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with warm_python(tmp_path_factory.mktemp("warm"), PRELOAD, env=env) as argv:
        yield argv


def test_two_processes_train_with_reference_dropout_and_publish_once(tmp_path, python):
    write_tiny_sd21(tmp_path / "base", seed=0)
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=3, resolution=64,
                         uv_resolution=64, patch_size=16, geo_patch_size=16, seed=0)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    procs = launch(python, tmp_path, [str(tmp_path / "ds")] * 2)
    outs = [p.communicate(timeout=280)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "steps_run 3" in out
    rows = read_csv(tmp_path / "loss.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((tmp_path / "train.json").read_text())["steps_run"] == 3
    assert (tmp_path / "model" / "geoface_config.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if ".geoface-tmp-" in p.name]  # no race left a temporary


def launch(python, tmp_path, data, linger=None, args=()):
    """Start the two processes of a run with the interpreter `python` (rank r trains on data[r], `args` after it); the
    one numbered `linger` stays alive after its error until its stdin closes.

    The processes meet through a file in `tmp_path` (torch's FileStore), not at a TCP port picked free beforehand:
    another process could take that port before rank 0 listened on it (a Ray test beside this file binds dozens),
    and rank 1 then retried its connection until the test's timeout (TimeoutExpired after 150 s)."""
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        argv = [*python, str(tmp_path / "rank.py"), str(tmp_path), data[rank], *args]
        procs.append(subprocess.Popen(argv + ["linger"] * (rank == linger), env=env, cwd=tmp_path,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


@pytest.mark.parametrize("refusal", ["run folder locked", "shard damaged on rank 1", "config unwritable on rank 0"])
def test_a_process_that_cannot_start_stops_every_process(tmp_path, python, refusal):
    """The failing process stays alive after its error: the other one stops on its own (it waited at a barrier
    before: a hang, here until the test's time ran out), exits 1 and names the failing process and its error."""
    write_tiny_sd21(tmp_path / "base", seed=0)
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=3, resolution=64,
                         uv_resolution=64, patch_size=16, geo_patch_size=16, seed=0)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    data = [str(tmp_path / "ds")] * 2
    run_dir = tmp_path / "state" / run_id(config(str(tmp_path)), tmp_path / "ds")
    if refusal == "run folder locked":  # another training (this test's process) holds the run folder
        failing, lock = 0, try_lock(run_dir)
        touch_run(run_dir, run_dir.name)
        expected = f"{run_dir}: another training of this run is in progress (process {os.getpid()} on "
    elif refusal == "shard damaged on rank 1":  # as on a node with its own copy of the dataset
        failing, shard = 1, (tmp_path / "ds" / "train.safetensors").read_bytes()
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "train.safetensors").write_bytes(shard[:len(shard) // 2])
        data[1] = str(tmp_path / "bad")
        expected = f"{tmp_path / 'bad' / 'train.safetensors'}: not a readable safetensors file"
    else:  # the main process alone writes the run's config; a folder stands where it goes (a full disk would do)
        failing = 0
        (run_dir / "geoface_config.json").mkdir(parents=True)
        expected = f"-> {run_dir / 'geoface_config.json'}: Is a directory"  # the rename of its temporary
    procs = launch(python, tmp_path, data, linger=failing)
    try:
        failed_line, other_line = error_lines(procs, failing)
    finally:
        if refusal == "run folder locked":
            os.close(lock)
    assert expected in failed_line
    assert other_line == f"error: stopping with process {failing} of 2, which could not start: " + failed_line[7:]
    assert not (tmp_path / "model").exists()


def error_lines(procs, failing, timeout=150):
    """The `error: ` lines of the failing process (alive until its stdin closes) and of the other, once both ended."""
    try:
        other = procs[1 - failing].communicate(timeout=timeout)[0]
    finally:
        failed = procs[failing].communicate(input="", timeout=timeout)[0]
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[failing].returncode == 1 and procs[1 - failing].returncode == 1, (failed, other)
    failed_line, = [ln for ln in failed.splitlines() if ln.startswith("error: ")]
    other_line, = [ln for ln in other.splitlines() if ln.startswith("error: ")]
    return failed_line, other_line


def test_a_process_that_cannot_read_its_batch_stops_every_process(tmp_path, python):
    """Rank 1's copy of the shard has a header that reads (the start passes) but samples whose alignment targets name
    tokens that do not exist, found when the first training step reads its batch. Before, rank 0 went on into DDP's
    forward and backward and waited there for rank 1 (here, rank 1 alive: until the test's time ran out; rank 1
    exited: gloo's "Connection closed by peer" traceback); now both stop before the step, rank 0 with rank 1's line."""
    from safetensors import safe_open
    from safetensors.torch import save

    write_tiny_sd21(tmp_path / "base", seed=0)
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=3, resolution=64,
                         uv_resolution=64, patch_size=16, geo_patch_size=16, seed=0)
    with safe_open(str(tmp_path / "ds" / "train.safetensors"), "pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["a2g_index"][:, 1] = 16  # an appearance token past the 4×4 grid, in every sample
    bad = tmp_path / "bad" / "train.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(save(tensors, metadata=header))
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    procs = launch(python, tmp_path, [str(tmp_path / "ds"), str(bad.parent)], linger=1, args=["no-geo-norm"])
    failed_line, other_line = error_lines(procs, failing=1)
    assert failed_line.startswith(f"error: {bad}#") and failed_line.endswith(": a2g_index out of range (views 3, "
                                                                            "queries 16, keys 16)")
    assert other_line == ("error: stopping with process 1 of 2, which could not read its batch of step 1: "
                          + failed_line[7:])
    assert not (tmp_path / "model").exists() and not (tmp_path / "loss.csv").exists()


STOP_SCRIPT = """
import json
import sys
from accelerate import PartialState
state = PartialState(cpu=True, init_method=f"file://{sys.argv[1]}/rendezvous")
from flame_fitting.core.errors import GeofaceError
from geoface_model.ranks import PeerError, stop_together
try:
    with stop_together("could not go on"):
        if state.process_index == 1:
            raise GeofaceError(sys.argv[2])
except (GeofaceError, PeerError) as e:
    print("error:", json.dumps(str(e)), flush=True)  # ASCII: the message's characters as JSON escapes
    sys.stdin.read()
    sys.exit(1)
"""


@pytest.mark.parametrize("message", ["€" * 500, ""])
def test_the_error_passed_to_the_other_processes(tmp_path, python, message):
    """Cut to 1024 bytes on a character boundary (341 three-byte "€", not 341 and a U+FFFD for the byte of the 342nd
    that fitted); an error without a message is passed as its type's name (the exchange failed before on the
    failing process, a ValueError of torch.frombuffer, and the other one waited in it)."""
    (tmp_path / "rank.py").write_text(STOP_SCRIPT)
    procs = launch(python, tmp_path, [message] * 2, linger=1)
    failed_line, other_line = error_lines(procs, failing=1)
    assert json.loads(failed_line[7:]) == message
    passed = json.loads(other_line[7:]).removeprefix("stopping with process 1 of 2, which could not go on: ")
    assert passed == ("€" * 341 if message else "GeofaceError")
