"""Training checkpoints, loss curves and the runs kept side by side: atomic writes, integrity check,
fallback on resume, no pickled state of ours, pruning of old runs by count.

Layout under `out_dir` (one run):
    checkpoints/step_000200/   accelerate `save_state` (model.safetensors, optimizer.bin, scheduler.bin,
                               random_states_<rank>.pkl; accelerate reads these with torch's weights_only
                               unpickler) + ema.safetensors (EMA shadow weights) + train_state.json (step, loss
                               rows, EMA counters) + complete.json {"step", "files": {name: sha256}} written last
    run.json                   {"run_id", "last_used", "pid", "host"}: when the run was last started, and by which
                               process (see `prune_runs`, run_lock.py)
    .geoface-train.lock        held by the training of the run while it runs (run_lock.py)
    loss.csv                   step, loss, diffusion_loss, align_loss, lr (rewritten atomically)
    loss.csv.partial           the same rows appended live at every logging step

A checkpoint is written into `checkpoints/.step_XXXXXX.geoface-tmp-shared/` (fileio's name every process
agrees on), hashed, marked complete, then renamed, so a crash leaves either the previous state or a
temporary directory that is ignored and removed.
On resume the newest checkpoint whose marker and checksums verify AND that loads is used; each one
skipped is reported with its reason. Nothing in a checkpoint can run code when loaded: our own state is
safetensors + JSON (`save_extra_state` / `load_extra_state`, never accelerate's pickled custom objects),
and accelerate's files are read with `weights_only=True`. A checkpoint holding pickled custom state
(`custom_checkpoint_*.pkl`, the format before) is never loaded.

Several runs live side by side under one state root (the `train` stage: models/train_state/<run id>/);
`touch_run` stamps a run as used and `prune_runs` deletes the least recently used beyond `keep`, never one that
another training holds (run_lock.py).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.fileio import TMP_TAG, replace_dir, sha256_file, write_json, write_text
from flame_fitting.core.json_files import read_json, read_json_object

from .run_lock import try_lock

COLUMNS = ("step", "loss", "diffusion_loss", "align_loss", "lr", "grad_norm_diffusion", "grad_norm_align")
MARKER = "complete.json"
EMA_FILE, STATE_FILE, RUN_FILE = "ema.safetensors", "train_state.json", "run.json"
EMA_KEYS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma", "power")
_STEP_RE = re.compile(r"^step_(\d{6,})$")
# bounds of the run folder's JSON read back (a run folder may come from elsewhere: one line, no traceback, no GBs)
MAX_RUN_JSON_BYTES = 1 << 20  # complete.json (~0.6 KB: a sha256 per file), run.json (~0.1 KB)
# train_state.json keeps every loss row: ~220 bytes each (compact JSON; 260 with indent=1, before), one per
# train.log_every steps (default 1); a 300 000-step run's 66 MB (78 MB before) were refused at 64 MiB, so its resume
# skipped every later checkpoint. 256 MiB: ~1.2 M rows
MAX_STATE_BYTES = 256 << 20


class WriteError(GeofaceError, OSError):
    """A checkpoint or model folder that could not be written (a full disk, a file-size limit, an I/O error)."""


# how torch.save reports a write the system refused (its C++ stream writer raises RuntimeError, not OSError)
_TORCH_WRITE_FAILED = ("iostream error", "unexpected pos", "file write failed", "PytorchStreamWriter failed")


def _write_failure(e: BaseException) -> str | None:
    """Why writing failed, when `e` is the system refusing a write (OSError, safetensors' I/O error, torch's stream
    writer); None for anything else (a bug, an interrupt, our own error), which is left as it is."""
    if isinstance(e, GeofaceError):
        return None
    if isinstance(e, OSError):
        return f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
    if isinstance(e, SafetensorError) or (isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED)):
        return f"{(str(e).splitlines() or [''])[0][:200]}; a full disk?"
    return None


@contextmanager
def writing(tmp: Path, what: Path, remove: bool = True) -> Iterator[None]:
    """`with writing(tmp, final):` write the folder `final` via its temporary `tmp`. On any failure (an interrupt
    too) `tmp` is removed when `remove` (the process that owns it), so a full disk keeps no half-written copy; a
    write the system refused becomes one line naming `final` (`WriteError`)."""
    try:
        yield
    except BaseException as e:
        if remove:
            shutil.rmtree(tmp, ignore_errors=True)
        why = _write_failure(e)
        if why is None:
            raise
        raise WriteError(f"{what}: cannot be written ({why}); the training state is that of the last checkpoint "
                         "written: run again to resume from it") from e


class TrainState:
    """Step, logged loss rows and the gradient norms measured since the last row (the next row reports their mean),
    saved as JSON beside the checkpoint (`save_extra_state`). A checkpoint without `measured` (written before it was
    kept) resumes with none."""

    def __init__(self):
        self.step = 0
        self.rows: list[dict] = []
        self.measured: list[dict] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "rows": [dict(r) for r in self.rows], "measured": [dict(m) for m in self.measured]}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.rows = int(d["step"]), [dict(r) for r in d["rows"]]
        self.measured = [dict(m) for m in d.get("measured", [])]


def save_extra_state(ckpt: Path, ema, state: TrainState) -> None:
    """Write the EMA (`diffusers` EMAModel) and `state` into checkpoint folder `ckpt` as safetensors + JSON."""
    ema_sd = ema.state_dict()
    save_file({f"shadow.{i:05d}": p.detach().contiguous().cpu() for i, p in enumerate(ema_sd["shadow_params"])},
              str(Path(ckpt) / EMA_FILE))
    ema_scalars = {k: ema_sd[k] for k in EMA_KEYS}
    (Path(ckpt) / STATE_FILE).write_text(encode_state({**state.state_dict(), "ema": ema_scalars}))


def encode_state(info: dict) -> str:
    """train_state.json's text of `info`: compact, no indent, so json's C encoder writes it (`indent=1` took the pure
    Python one: 3.1 against 1.3 CPU s for 300 000 loss rows, at every checkpoint; benchmarks/train_state_write.py).
    Floats are written as repr, so `json.loads` gives back the same values (NaN included)."""
    return json.dumps(info, separators=(",", ":"))


def load_extra_state(ckpt: Path, ema, state: TrainState) -> None:
    """Inverse of `save_extra_state`; the EMA shadow weights stay on their device. Raises ValueError
    naming the file when something is missing or does not match the model."""
    ckpt = Path(ckpt)
    info = read_json_object(ckpt / STATE_FILE, ValueError, MAX_STATE_BYTES, "training state file")
    try:
        tensors = load_file(str(ckpt / EMA_FILE))
    except (OSError, ValueError) as e:
        raise ValueError(f"{ckpt / EMA_FILE}: cannot read ({e})") from None
    shadow = [tensors[k] for k in sorted(tensors)]
    if len(shadow) != len(ema.shadow_params) or any(a.shape != b.shape for a, b in zip(shadow, ema.shadow_params)):
        raise ValueError(f"{ckpt / EMA_FILE}: {len(shadow)} tensors do not match the model's "
                         f"{len(ema.shadow_params)} parameters")
    ema.load_state_dict({**{k: info["ema"][k] for k in EMA_KEYS},
                         "shadow_params": [t.to(p.device, p.dtype) for t, p in zip(shadow, ema.shadow_params)]})
    state.load_state_dict(info)


def pickled_custom_state(ckpt: Path) -> list[str]:
    """Names of pickled custom-object files (accelerate `register_for_checkpointing`) in `ckpt`: never loaded."""
    return sorted(p.name for p in Path(ckpt).glob("custom_checkpoint_*.pkl"))


def touch_run(run_dir: Path, run_id: str) -> None:
    """Create `run_dir` and stamp it as used now by this process (`RUN_FILE`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / RUN_FILE, {"run_id": run_id, "last_used": time.time(), "pid": os.getpid(),
                                    "host": socket.gethostname()}, indent=None)


def _last_used(run_dir: Path) -> float:
    try:
        return float(read_json(run_dir / RUN_FILE, ValueError, MAX_RUN_JSON_BYTES)["last_used"])
    except (ValueError, KeyError, TypeError):
        return run_dir.stat().st_mtime


def prune_runs(state_root: Path, keep: int, current: Path) -> list[Path]:
    """Delete the least recently used run folders under `state_root` so that at most `keep` remain,
    never `current` nor one another training holds (run_lock.py; it is deleted holding its lock). Only folders a
    training run wrote (with `RUN_FILE`, or `geoface_config.json` from before) count; anything else is left alone.
    Returns the deleted folders."""
    root, current = Path(state_root), Path(current)
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve() != current.resolve()
            and ((p / RUN_FILE).is_file() or (p / "geoface_config.json").is_file())] if root.is_dir() else []
    runs.sort(key=lambda p: (_last_used(p), p.name), reverse=True)
    gone = []
    for p in runs[max(keep - 1, 0):]:
        fd = try_lock(p)
        if fd is None:  # training now: kept
            continue
        try:
            shutil.rmtree(p)
        finally:
            os.close(fd)
        gone.append(p)
    return gone


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Finished-looking checkpoint directories, newest first (temp directories excluded)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found, reverse=True)


def finalize_checkpoint(tmp: Path, final: Path, step: int) -> None:
    """Hash every file of `tmp`, write the completion marker, rename to `final` (replacing it)."""
    files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    write_json(tmp / MARKER, {"step": step, "files": files}, indent=1)
    replace_dir(tmp, final)


def verify_checkpoint(path: Path) -> str | None:
    """None if `path` is complete and intact, else the reason it is not."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker (interrupted write)"
    try:
        files = read_json_object(marker, ValueError, MAX_RUN_JSON_BYTES, "checkpoint marker").get("files")
    except ValueError as e:  # too large, not JSON, nested too deeply
        return f"unreadable {MARKER} ({str(e).removeprefix(f'{marker}: ')})"
    if not isinstance(files, dict):
        return f"unreadable {MARKER} (no 'files' object)"
    for name, digest in files.items():
        p = path / name
        if not p.is_file():
            return f"missing file {name}"
        if sha256_file(p) != digest:
            return f"checksum mismatch in {name}"
    return None


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints and any leftover temp directories."""
    for _, p in list_checkpoints(out_dir)[keep:]:
        shutil.rmtree(p, ignore_errors=True)
    root = Path(out_dir) / "checkpoints"
    for p in root.glob(f".*{TMP_TAG}*"):  # a checkpoint whose writing was interrupted
        shutil.rmtree(p, ignore_errors=True)


def write_csv_atomic(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows({k: r.get(k, float("nan")) for k in COLUMNS} for r in rows)
    write_text(path, buf.getvalue())


class LossLog:
    """Loss rows kept in memory, appended live to `<path>.partial`, written atomically to `path`."""

    def __init__(self, path: Path, rows: list[dict] | None = None, append: bool = True):
        self.path, self.rows, self.append_live = Path(path), list(rows or []), append
        self.partial = self.path.with_name(self.path.name + ".partial")
        if append:
            write_csv_atomic(self.partial, self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.append_live:
            # appended, not rewritten through core/fileio.py: a live log (to watch a run; after a kill it still holds
            # the rows since the last checkpoint), rewriting it whole would cost O(rows) a step; `flush` is atomic
            with open(self.partial, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: row.get(k, float("nan")) for k in COLUMNS})

    def flush(self) -> None:
        write_csv_atomic(self.path, self.rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
