"""Saving and resuming the accelerate state of a training run (`train.train`): the check that a run folder's
checkpoints were written with this model and token config (`check_run_dir`), resume from the newest checkpoint
that verifies and loads, each skipped one with its reason (`resume_newest`), and the checkpoint every process
writes together (`save_checkpoint`; an error of one process stops them all: ranks.py).

The checkpoint layout, checksums, completion marker, pruning and our own state files: checkpoint.py. Resume never
unpickles anything but tensors and plain containers: EMA and step/loss rows are safetensors + JSON, accelerate's
own files are read with `weights_only=True`, and a checkpoint whose random-state or `.bin` file holds anything else
is skipped, naming the refused global.
"""
from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

from accelerate import Accelerator
from diffusers.training_utils import EMAModel

from flame_fitting.core.fileio import temp_path
from flame_fitting.core.json_files import read_json_object
from flame_fitting.core.names import terminal_safe

from .backbone import check_run_backbone
from .checkpoint import (LossLog, TrainState, checkpoint_dir, finalize_checkpoint, list_checkpoints, load_extra_state,
                         pickled_custom_state, prune_checkpoints, save_extra_state, verify_checkpoint, writing)
from .config import GeoFaceConfig
from .ranks import stop_together
from .weights import MAX_CONFIG_BYTES


def check_run_dir(out_dir: Path, cfg: GeoFaceConfig) -> None:
    """Refuse to resume checkpoints written with a different model or token grid."""
    saved = out_dir / "geoface_config.json"
    if saved.is_file() and list_checkpoints(out_dir):
        check_run_backbone(saved, cfg)
        try:
            old = read_json_object(saved, ValueError, MAX_CONFIG_BYTES, "training config")
        except ValueError as e:  # not JSON, nested too deeply, too large, not an object: one line naming it
            raise ValueError(f"{e}; it records the config of the checkpoints beside it: delete {out_dir} to train "
                             "that run again from the start") from None
        for sec in ("model", "tokens"):
            if old.get(sec) != cfg.to_dict()[sec]:
                raise ValueError(f"{out_dir}: checkpoints were written with a different '{sec}' config "
                                 f"({old.get(sec)} vs {cfg.to_dict()[sec]}); use a fresh out_dir")


def _tensor_file_reason(f: Path) -> str | None:
    """None if accelerate's `.bin` / `.pkl` file `f` loads with torch's weights_only unpickler (tensors, plain
    containers, numpy RNG arrays), else why not (the refused global, when that is the reason)."""
    from accelerate.utils import load as accelerate_load  # torch.load(weights_only=True) + numpy RNG classes

    try:
        accelerate_load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure makes the checkpoint unusable
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
        return f"{f.name} is not plain tensors, not loaded ({type(e).__name__}: {why[:300]})"
    return None


def resume_newest(accelerator: Accelerator, out_dir: Path, ema: EMAModel, state: TrainState) -> tuple[str | None, list[dict]]:
    """Load the newest intact checkpoint; returns (its path, the skipped ones with reasons). Each one skipped is a
    `train:` note on stderr (main process only, one write: a signal cannot cut the line), as the run's other notes."""
    skipped, checkpoints = [], list_checkpoints(out_dir)
    for i, (step, path) in enumerate(checkpoints):
        reason = verify_checkpoint(path)
        if reason is None and pickled_custom_state(path):
            reason = (f"holds pickled state ({', '.join(pickled_custom_state(path))}), which is never loaded; "
                      "it was written by an older version")
        if reason is None:  # accelerate swallows an unreadable RNG file and goes on with other random states
            reason = next(filter(None, map(_tensor_file_reason, sorted(path.glob("random_states_*.pkl")))), None)
        if reason is None:
            try:
                accelerator.load_state(str(path), load_kwargs={"weights_only": True})
                load_extra_state(path, ema, state)
                return str(path), skipped
            except Exception as e:  # a damaged file that still hashes (e.g. truncated before hashing)
                reason = f"load failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
                if isinstance(e, pickle.UnpicklingError):  # name the file torch refused
                    reason = next(filter(None, map(_tensor_file_reason, sorted(path.glob("*.bin")))), reason)
        if accelerator.is_main_process:
            then = "falling back to the previous one" if i + 1 < len(checkpoints) else "no earlier one: starting over"
            sys.stderr.write(terminal_safe(f"train: checkpoint {path} is unusable ({reason}); {then}") + "\n")
        skipped.append({"path": str(path), "reason": reason})
    return None, skipped



def save_checkpoint(accelerator: Accelerator, out_dir: Path, step: int, keep: int, losslog: LossLog, ema: EMAModel,
                     state: TrainState) -> None:
    final = checkpoint_dir(out_dir, step)
    tmp = temp_path(final, shared=True)  # every process of the run writes into the same folder
    main, what = accelerator.is_main_process, f"could not write checkpoint {final.name}"
    accelerator.wait_for_everyone()
    with stop_together(what):  # an error of one process stops every process, none waits for it (ranks.py)
        if main and tmp.exists():
            shutil.rmtree(tmp)
    with writing(tmp, final, remove=main):  # a full disk keeps no half-written checkpoint
        with stop_together(what):
            accelerator.save_state(str(tmp))
        with stop_together(what):
            if main:
                save_extra_state(tmp, ema, state)
                finalize_checkpoint(tmp, final, step)
    with stop_together(what):
        if main:
            losslog.flush()
            prune_checkpoints(out_dir, keep)
