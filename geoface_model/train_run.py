"""The `train` stage's work (also `geoface train`): train in a resumable run folder, then publish the EMA model.

Training state (checkpoints every `train.checkpoint_every` steps) lives in STATE/<run id>/: a killed run resumes
from its latest valid checkpoint when called again with the same config and dataset. The run id is a hash of the
config (every key but `train.keep_states`) and the dataset's shards (metadata and content), so other params or
data start a new run beside the earlier ones, which stay resumable: each start stamps its run as used and the
`train.keep_states` most recently used runs are kept, older ones deleted (only folders a run wrote). Publishes MODEL/ (EMA weights, `GeoFaceTransformer.from_pretrained`, with geoface_config.json
beside them, which generation needs, and the model card: geoface_model/lineage.py) and the loss curve CSV (diffusion and alignment loss per step).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from accelerate import PartialState

from flame_fitting.core.fileio import replace_dir, sha256_file, temp_path, write_json

from .checkpoint import prune_runs, touch_run
from .config import GeoFaceConfig
from .data import read_shard_meta
from .lineage import write_model_card
from .train import train


def run_id(cfg: GeoFaceConfig, data: Path | str) -> str:
    """Hash of the config and the dataset's content: resume only a run of the same config on the same data.
    `train.keep_states` (how many runs to keep) is bookkeeping, not part of the run."""
    shards = sorted(Path(data).glob("**/*.safetensors"))
    metas = [read_shard_meta(p).to_json() for p in shards]
    contents = [sha256_file(p) for p in shards]
    config = cfg.to_dict()
    config["train"].pop("keep_states")
    blob = json.dumps({"config": config, "shards": metas, "sha256": contents}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_model(cfg: GeoFaceConfig, data: Path | str, state: Path | str, model: Path | str, loss_csv: Path | str,
                metrics_path: Path | str | None = None) -> dict:
    """Train on the shards under `data` in `state`/<run id>, publish `model` and `loss_csv`; returns the metrics
    (and writes their scalar entries to `metrics_path`)."""
    state, model, loss_csv = Path(state), Path(model), Path(loss_csv)
    rid = run_id(cfg, data)
    run_dir = state / rid
    if PartialState().is_main_process:
        touch_run(run_dir, rid)
        for old in prune_runs(state, cfg.train.keep_states, run_dir):
            print(f"train: deleted the state of run {old.name} (train.keep_states = {cfg.train.keep_states})")
    PartialState().wait_for_everyone()
    metrics = train(cfg, Path(data), run_dir)
    tmp = temp_path(model)
    shutil.copytree(run_dir / "model", tmp)
    shutil.copyfile(run_dir / "geoface_config.json", tmp / "geoface_config.json")  # generation needs the config
    metrics["captures_version"] = write_model_card(tmp, data, cfg.to_dict(), rid, metrics)["captures_version"]
    replace_dir(tmp, model)
    loss_csv.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "loss.csv", loss_csv)
    if metrics_path is not None:
        write_json(metrics_path, {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})
    return metrics
