"""The settings a library call or a `geoface` command uses without params.yaml are the pipeline's own.

`geoface train data/dataset --out m` builds its config from the classes' defaults (no `--params`); before, those
defaults were an ε model on a schedule without zero terminal SNR while params.yaml trained `sample_skip`, so the
command trained the model docs/model.md measured to learn nothing. This keeps the defaults, `tiny()` and params.yaml
equal, for every stage's section.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from flame_fitting.core.params import read_params
from geoface_model.config import GeoFaceConfig
from geoface_model.presets import tiny

REPO = Path(__file__).resolve().parents[2]
STAGES = ("head_model", "captures", "landmarks", "fit", "uv", "correspondences", "dataset", "train", "evaluate")


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"geoface_stage_{name}", REPO / "stages" / f"{name}.py")
    sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    sys.path.insert(0, str(REPO / "stages"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "stages"))
    return module


def _normalised(cfg):
    """`calibration: null` means CalibrationConfig's defaults: compare what it resolves to."""
    out = []
    for part in cfg if isinstance(cfg, tuple) else (cfg,):
        if hasattr(part, "calibration_config"):
            part = dataclasses.replace(part, calibration=dataclasses.asdict(part.calibration_config()))
        out.append(part)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_defaults_are_params_yaml(stage):
    module = _stage(stage)
    committed, defaults = module.load_params(read_params(REPO / "params.yaml")), module.load_params({})
    assert _normalised(committed) == _normalised(defaults), \
        f"params.yaml's settings of stage {stage} differ from its configs' defaults: change both"


def test_tiny_is_the_default_and_what_the_pipeline_trains():
    cfg = tiny()
    assert cfg == GeoFaceConfig()
    assert (cfg.model.prediction_type, cfg.model.sigma_data, cfg.train.zero_terminal_snr) == ("sample_skip", 0.03, True)


def _sd21_block() -> dict:
    """The YAML block of docs/model.md "Fine-tuning from a local SD 2.1 download"."""
    import yaml

    text = (REPO / "docs" / "model.md").read_text().split("### Fine-tuning from a local SD 2.1 download", 1)[1]
    return yaml.safe_load(text.split("```yaml", 1)[1].split("```", 1)[0])


# the transformer's own sizes: unused by backbone sd21_mv (ModelConfig.backbone's help), so the block leaves them out
UNUSED_BY_SD21 = ("width", "depth", "heads", "mlp_ratio")


def test_the_docs_sd21_block_is_paper_sd21():
    """A user pasting the block into params.yaml (merged into its sections, or as the whole sections) trains
    `paper_sd21()` and samples with its guidance."""
    from geoface_model.presets import PRESET_GUIDANCE, paper_sd21

    block, committed = _sd21_block(), read_params(REPO / "params.yaml")
    for start in (committed, {}):
        want = paper_sd21().to_dict()
        sections = {k: {**(start.get(k) or {}), **block.get(k, {})} for k in ("tokens", "model", "loss", "train")}
        got = GeoFaceConfig.from_sections(**sections, where="docs/model.md").to_dict()
        for d in (got, want):
            for k in UNUSED_BY_SD21:
                d["model"].pop(k)
        assert got == want
    assert block["eval"]["guidance_scale"] == PRESET_GUIDANCE["paper_sd21"]
