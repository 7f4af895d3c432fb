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


def _synthetic(**values):
    return lambda p: p["captures"]["synthetic"].update(values)


def _both(*edits):
    def edit(p):
        for e in edits:
            e(p)
    return edit


@pytest.mark.parametrize("edit,message", [
    # more components than the head model has: a ValueError in every fit unit / the captures stage, after the
    # head model and the captures had been built
    (_set("fit", n_shape=51), "fit.n_shape = 51 is above head_model.n_shape = 50"),
    (_set("fit", n_expr=31), "fit.n_expr = 31 is above head_model.n_expr = 30"),
    (_synthetic(n_shape=60), "captures.synthetic.n_shape = 60 is above head_model.n_shape = 50"),
    # one camera: the fit skipped every frame (min_views 2) and the stages after it had nothing to work on
    (_synthetic(cameras=1), "captures.synthetic.cameras = 1 is below fit.min_views = 2"),
    # fewer views than a training sample draws: the train stage failed after every data stage had run
    (_synthetic(cameras=3), "captures.synthetic.cameras = 3 is below train.n_ref + train.n_tgt = 4"),
    # fewer views than the evaluation's reference + targets: the evaluate stage failed after training
    (_set("eval", n_targets=16), "captures.synthetic.cameras = 16 is below 1 + eval.n_targets = 17"),
    # no test subject: the evaluate stage failed (no shard of split 'test') after the whole pipeline had run
    (_synthetic(subjects=1), "eval.split = test: captures.synthetic.subjects = 1 with split_fractions [0.6, 0.2, 0.2] "
                             "gives 1 train / 0 val / 0 test subjects"),
    (_synthetic(split_fractions=[1.0, 0.0, 0.0]), "gives 6 train / 0 val / 0 test subjects"),
    (_both(_synthetic(subjects=2), _set("eval", split="val")), "eval.split = val: captures.synthetic.subjects = 2"),
    # fewer training samples than one batch: the train stage failed after every data stage had run
    (_set("train", batch_size=100), "train.batch_size × train.grad_accum = 100 is above the 12 training samples"),
    (_both(_synthetic(subjects=2, frames=2), _set("train", grad_accum=2)),
     "train.batch_size × train.grad_accum = 8 is above the 2 training samples"),
])
def test_check_params_refuses_combinations_no_run_can_use(tmp_path, edit, message):
    from check_params import check_params

    with pytest.raises(ParamsError) as e:
        check_params(edited(tmp_path, edit))
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("edit", [
    _synthetic(subjects=2, frames=4),  # 1 train (4 samples: one batch), 0 val, 1 test subject
    _both(_synthetic(subjects=2, frames=2), _set("train", batch_size=2)),
    _both(_synthetic(split_fractions=[1.0, 0.0, 0.0]), _set("eval", split="train")),
    _both(_synthetic(cameras=4), _set("eval", n_targets=3)),
    _both(_set("fit", n_shape=50, n_expr=0)),
    # an imported capture's cameras and subjects are unknown to params.yaml: only its stages can check them
    lambda p: p["captures"].update(source="folder", root=str(REPO)) or p["train"].update(batch_size=100),
])
def test_check_params_accepts_combinations_at_their_limits(tmp_path, edit):
    from check_params import check_params

    check_params(edited(tmp_path, edit))


@pytest.mark.parametrize("edit, warnings", [
    (lambda p: None, []),  # params.yaml as shipped: width 192 = 3·8², log_every 1 of 300 steps
    # a token narrower than its patch's pixels (both streams), and a loss curve of one row: accepted, said once
    (_set("model", width=64), ["check_params: warning: model.width = 64 is below the 192 latent values of a "
                               "token's patch (tokens.patch_size = 8", "(tokens.geo_patch_size = 8"]),
    (_set("train", log_every=300), ["check_params: warning: train.log_every = 300 is not below train.steps = 300"]),
    (_set("train", log_every=299), []),
    # a VAE folder's latent channels are read when training starts, not here (check_params reads params.yaml only)
    (_set("model", width=64, vae_path="models/vae"), []),
])
def test_check_params_warns_about_settings_that_defeat_the_run(tmp_path, capsys, edit, warnings):
    from check_params import check_params

    check_params(edited(tmp_path, edit))
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == len(warnings) and all(w in line for w, line in zip(warnings, lines)), lines


def test_a_value_nesting_yaml_aliases_is_shown_cut_short(tmp_path):
    """A params.yaml from elsewhere whose `train.steps` is six levels of aliases to a 10-item list (YAML's "billion
    laughs": a few hundred bytes, 10^6 items) made the error line 5.2 MB (repr of the whole value); three more levels,
    10^9 items, ran until killed, building a ~5 GB string. The value is now shown a few items of a few levels deep."""
    from check_params import check_params

    nest = ["x"] * 10
    for _ in range(5):
        nest = [nest] * 10  # the same list ten times: yaml.safe_dump writes it once with an anchor, then aliases
    path = edited(tmp_path, lambda p: p["train"].update(steps=nest))
    assert path.stat().st_size < (REPO / "params.yaml").stat().st_size + 1000
    with pytest.raises(ParamsError, match=r"^.*params.yaml:train.steps: expected an integer, got \[\[\[") as e:
        check_params(path)
    assert len(str(e.value)) < 1000 and "..." in str(e.value), len(str(e.value))
