"""Training checkpoints and loss curves: atomic writes, integrity check, fallback on resume.

Layout under `out_dir`:
    checkpoints/step_000200/   accelerate `save_state` (model.safetensors, optimizer.bin, scheduler.bin,
                               custom_checkpoint_0.pkl = EMA, custom_checkpoint_1.pkl = TrainState, RNG)
                               + complete.json {"step", "files": {name: sha256}} written last
    loss.csv                   step, loss, diffusion_loss, align_loss, lr (rewritten atomically)
    loss.csv.partial           the same rows appended live at every logging step

A checkpoint is written into `checkpoints/.tmp_step_XXXXXX/`, hashed, marked complete, then renamed,
so a crash leaves either the previous state or a `.tmp_*` directory that is ignored and removed.
On resume the newest checkpoint whose marker and checksums verify AND that loads is used; each one
skipped is reported with its reason.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

COLUMNS = ("step", "loss", "diffusion_loss", "align_loss", "lr")
MARKER = "complete.json"
_STEP_RE = re.compile(r"^step_(\d{6,})$")


class TrainState:
    """Small custom checkpoint object (accelerate `register_for_checkpointing`): step + logged rows."""

    def __init__(self):
        self.step = 0
        self.rows: list[dict] = []

    def state_dict(self) -> dict:
        return {"step": self.step, "rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, d: dict) -> None:
        self.step, self.rows = int(d["step"]), [dict(r) for r in d["rows"]]


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:06d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Finished-looking checkpoint directories, newest first (temp directories excluded)."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_RE.match(p.name))]
    return sorted(found, reverse=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finalize_checkpoint(tmp: Path, final: Path, step: int) -> None:
    """Hash every file of `tmp`, write the completion marker, rename to `final` (replacing it)."""
    files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def verify_checkpoint(path: Path) -> str | None:
    """None if `path` is complete and intact, else the reason it is not."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker (interrupted write)"
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        return f"unreadable {MARKER} ({e})"
    for name, digest in files.items():
        p = path / name
        if not p.is_file():
            return f"missing file {name}"
        if _sha256(p) != digest:
            return f"checksum mismatch in {name}"
    return None


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints and any leftover temp directories."""
    for _, p in list_checkpoints(out_dir)[keep:]:
        shutil.rmtree(p, ignore_errors=True)
    root = Path(out_dir) / "checkpoints"
    for p in root.glob(".tmp_step_*"):
        shutil.rmtree(p, ignore_errors=True)


def write_csv_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({k: r[k] for k in COLUMNS} for r in rows)
    os.replace(tmp, path)


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
            with open(self.partial, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: row[k] for k in COLUMNS})

    def flush(self) -> None:
        write_csv_atomic(self.path, self.rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
