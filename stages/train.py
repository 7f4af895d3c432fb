"""DVC stage `train`: train the dual-stream GeoFace transformer on the dataset shards
(geoface_model/train_run.py, `train_model`; every key of `tokens`, `model`, `loss`, `train` is documented in
geoface_model/config.py, the design in docs/model.md).

Training state lives in a persistent DVC output (a killed run resumes); writes the model folder, the loss CSV and
the metrics JSON. Ablations: `dvc exp run -S model.geometry_stream=false`, `dvc exp run -S loss.align_weight=0`.
Multi-GPU: `accelerate launch stages/train.py ...` (docs/model.md).
"""
from __future__ import annotations

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import paths, run

from flame_fitting.core.params import read_params
from geoface_model.config import GeoFaceConfig
from geoface_model.train_run import train_model


def load_params(params: dict) -> GeoFaceConfig:
    return GeoFaceConfig.from_sections(tokens=params.get("tokens"), model=params.get("model"), loss=params.get("loss"),
                                       train=params.get("train"), where="params.yaml")


def main() -> None:
    a = paths(__doc__, "dataset", "--state", "--model", "--loss-csv", "--metrics")
    m = train_model(load_params(read_params()), a.dataset, a.state, a.model, a.loss_csv, metrics_path=a.metrics)
    print(f"train: {m['steps']} steps, loss {m['loss_first']:.4f} -> {m['loss_last']:.4f}")


if __name__ == "__main__":
    run(main)
