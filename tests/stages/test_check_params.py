"""`check_params` (the first stage) refuses what a user's params.yaml edit gets wrong, in one line naming the key,
before DVC removes any output: what a tester's run of `dvc repro` with edited params found it let through."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from flame_fitting.core.params import ParamsError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "stages"))


def edited(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _set(section: str, **values):
    return lambda p: p.setdefault(section, {}).update(values)


@pytest.mark.parametrize("edit,message", [
    # a dataset root that does not exist: the captures stage failed only after DVC had removed its outputs
    (_set("captures", source="folder", root="/nonexistent/raw"), "captures.root: /nonexistent/raw does not exist"),
    # a typo in the captures section was ignored with the synthetic source
    (_set("captures", sourse="synthetic"), "params.yaml:captures: unknown keys ['sourse']"),
    # a captures section that is not a mapping was a traceback
    (lambda p: p.update(captures=5), "params.yaml:captures: expected a mapping, got 5"),
    # params.yaml says the two seeds must differ (else the calibration renders the evaluated subjects)
    (lambda p: p["head_model"]["calibration"].update(seed=p["captures"]["synthetic"]["seed"]),
     "captures.synthetic.seed = head_model.calibration.seed"),
    (_set("fit", lambda_init=float("nan")), "fit.lambda_init: nan is not a finite number"),
    # views that do not divide into the app token grid: refused by the correspondences stage, after landmarks and fit
    (lambda p: p["captures"]["synthetic"].update(resolution=500),
     "captures.synthetic.resolution 500 is not divisible by the 8 app tokens per side"),
    (lambda p: p["captures"].update(source="folder", root=str(REPO), resize=[640, 484]),
     "captures.resize [640, 484] is not divisible by the 8 app tokens per side"),
])
def test_check_params_refuses_in_one_line(tmp_path, edit, message):
    from check_params import check_params

    with pytest.raises(ParamsError, match=None) as e:
        check_params(edited(tmp_path, edit))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML, DVC) reads `lr: 3e-4` as text; every float setting takes it as the number it means."""
    from check_params import check_params
    from train import load_params

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("  lr: 0.0003", "  lr: 3e-4"))
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "3e-4"
    check_params(path)
    assert load_params(yaml.safe_load(path.read_text())).train.lr == pytest.approx(3e-4)
