"""DVC stage `train`: train the dual-stream GeoFace transformer on data/dataset.

Reads params sections `tokens`, `model`, `loss`, `train` (geoface_model/config.py documents every
key; docs/model.md the design). Training state (checkpoints every `train.checkpoint_every` steps)
lives in models/train_state/<run id>/, a persistent, uncached DVC output (`persist: true`: DVC never
deletes it before the stage runs; `cache: false`: checkpoints are not copied into the DVC cache). A killed
run resumes from its latest valid checkpoint when the stage runs again with the same config and dataset.
The run id is a hash of the config (all keys but `train.keep_states`) and the dataset's shards (metadata
and content), so an experiment with other params or data starts a new run beside the earlier ones, which
stay resumable: the `train.keep_states` most recently used runs are kept, older ones deleted. Writes models/geoface/ (EMA weights, `GeoFaceTransformer.from_pretrained`),
plots/train/loss.csv (diffusion and alignment loss per step) and metrics/train.json.
Ablations: `dvc exp run -S model.geometry_stream=false`, `dvc exp run -S loss.align_weight=0`.
Multi-GPU: `accelerate launch stages/train.py` (docs/model.md).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from accelerate import PartialState

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_json

from flame_fitting.core.fileio import replace_dir, sha256_file, temp_path
from flame_fitting.core.params import read_params
from geoface_model.checkpoint import prune_runs, touch_run
from geoface_model.config import GeoFaceConfig
from geoface_model.data import read_shard_meta
from geoface_model.train import train

DATA = Path("data/dataset")
STATE = Path("models/train_state")
MODEL = Path("models/geoface")
LOSS_CSV = Path("plots/train/loss.csv")


def run_id(cfg: GeoFaceConfig) -> str:
    """Hash of the config and the dataset's content: resume only a run of the same config on the same data.
    `train.keep_states` (how many runs to keep) is bookkeeping, not part of the run."""
    shards = sorted(DATA.glob("**/*.safetensors"))
    metas = [read_shard_meta(p).to_json() for p in shards]
    contents = [sha256_file(p) for p in shards]
    config = cfg.to_dict()
    config["train"].pop("keep_states")
    blob = json.dumps({"config": config, "shards": metas, "sha256": contents}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_params(params: dict) -> GeoFaceConfig:
    return GeoFaceConfig.from_sections(tokens=params.get("tokens"), model=params.get("model"), loss=params.get("loss"),
                                       train=params.get("train"), where="params.yaml")


def main() -> None:
    cfg = load_params(read_params())
    rid = run_id(cfg)
    run_dir = STATE / rid
    if PartialState().is_main_process:
        touch_run(run_dir, rid)
        for old in prune_runs(STATE, cfg.train.keep_states, run_dir):
            print(f"train: deleted the state of run {old.name} (train.keep_states = {cfg.train.keep_states})")
    PartialState().wait_for_everyone()
    metrics = train(cfg, DATA, run_dir)
    tmp = temp_path(MODEL)
    shutil.copytree(run_dir / "model", tmp)
    shutil.copyfile(run_dir / "geoface_config.json", tmp / "geoface_config.json")  # generation needs the config
    replace_dir(tmp, MODEL)
    LOSS_CSV.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "loss.csv", LOSS_CSV)
    write_json("metrics/train.json", {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))})
    print(f"train: {metrics['steps']} steps, loss {metrics['loss_first']:.4f} -> {metrics['loss_last']:.4f}")


if __name__ == "__main__":
    run(main)
