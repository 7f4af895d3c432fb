"""Training loop: smoke run + reload, exact resume after an interruption, corrupt-checkpoint fallback,
refusal of a shard whose token grid does not match the config."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from geoface_model.checkpoint import read_csv, verify_checkpoint
from geoface_model.config import GeoFaceConfig
from geoface_model.data import ShardError
from geoface_model.model import GeoFaceTransformer
from geoface_model.train import train


def micro(**train_kw) -> GeoFaceConfig:
    return GeoFaceConfig.from_sections(
        tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
        model=dict(width=32, depth=2, heads=2),
        loss=dict(align_weight=0.5),
        train=dict(steps=4, batch_size=2, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                   ema_decay=0.9) | train_kw)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(micro_shards):
    return micro_shards


def _params(path):
    return [p.detach().clone() for p in GeoFaceTransformer.from_pretrained(path).parameters()]


def test_smoke_checkpoint_and_reload(data, tmp_path):
    m = train(micro(grad_accum=2), data, tmp_path, progress=False)
    assert m["completed"] and m["steps"] == 4 and m["steps_run"] == 4
    assert all(math.isfinite(m[k]) for k in ("loss_first", "loss_last", "s_per_step", "peak_mem_mb"))
    rows = read_csv(tmp_path / "loss.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["align_loss"] > 0 and abs(r["loss"] - r["diffusion_loss"] - 0.5 * r["align_loss"]) < 1e-5 for r in rows)
    ckpt = tmp_path / "checkpoints" / "step_000004"
    assert verify_checkpoint(ckpt) is None and verify_checkpoint(tmp_path / "checkpoints" / "step_000002") is None
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    # model/ holds the EMA weights of the last checkpoint
    ema = load_file(ckpt / "ema.safetensors")  # shadow.00000, shadow.00001, ... in parameter order
    assert not list(ckpt.glob("custom_checkpoint_*"))  # no pickled custom state
    for a, b in zip(_params(tmp_path / "model"), [ema[k] for k in sorted(ema)], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert json.loads((tmp_path / "geoface_config.json").read_text())["loss"]["align_weight"] == 0.5


def test_resume_after_interruption_replays_the_same_run(data, tmp_path, capsys):
    cfg = micro()
    full = train(cfg, data, tmp_path / "full", progress=False)
    part = train(cfg, data, tmp_path / "cut", progress=False, max_steps=3)  # "killed" after step 3
    assert not part["completed"] and part["steps"] == 3 and not (tmp_path / "cut" / "model").exists()
    res = train(cfg, data, tmp_path / "cut", progress=False)
    assert res["resumed_from"].endswith("step_000002") and res["steps_run"] == 2 and res["steps"] == 4
    for a, b in zip(_params(tmp_path / "full" / "model"), _params(tmp_path / "cut" / "model")):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    full_rows, cut_rows = read_csv(tmp_path / "full" / "loss.csv"), read_csv(tmp_path / "cut" / "loss.csv")
    assert [r["step"] for r in cut_rows] == [1, 2, 3, 4]
    for a, b in zip(full_rows, cut_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    # corrupt the newest checkpoint: resume falls back to step 2, says so, and ends at the same weights
    blob = tmp_path / "cut" / "checkpoints" / "step_000004" / "model.safetensors"
    raw = bytearray(blob.read_bytes())
    raw[-100:] = bytes(100)
    blob.write_bytes(bytes(raw))
    capsys.readouterr()
    again = train(cfg, data, tmp_path / "cut", progress=False)
    assert again["resumed_from"].endswith("step_000002")
    assert [s["reason"] for s in again["skipped_checkpoints"]] == ["checksum mismatch in model.safetensors"]
    # said as the run's other notes are: one line on stderr with the `train:` prefix (it was a bare logging record)
    ckpts = tmp_path / "cut" / "checkpoints"
    err = "".join(ln for ln in capsys.readouterr().err.splitlines(True) if "mixed_precision" not in ln)  # no GPU
    assert err == (f"train: checkpoint {ckpts / 'step_000004'} is unusable (checksum mismatch in "
                   "model.safetensors); falling back to the previous one\n"
                   f"train: resumed from {ckpts / 'step_000002'} at step 2 of 4\n"), err
    for a, b in zip(_params(tmp_path / "full" / "model"), _params(tmp_path / "cut" / "model")):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # an interrupted write (no completion marker) is skipped too
    (ckpts / "step_000004" / "complete.json").unlink()
    assert "no complete.json" in train(cfg, data, tmp_path / "cut", progress=False)["skipped_checkpoints"][0]["reason"]
    # when no checkpoint is left to fall back to, the note says the run starts over
    capsys.readouterr()
    for name in ("step_000002", "step_000004"):
        (ckpts / name / "complete.json").unlink(missing_ok=True)
    assert train(cfg, data, tmp_path / "cut", progress=False, max_steps=1)["resumed_from"] is None
    err = "".join(ln for ln in capsys.readouterr().err.splitlines(True) if "mixed_precision" not in ln)
    assert err.count("train: checkpoint ") == 2 and err.count("\n") == 2, err
    assert f"{ckpts / 'step_000002'} is unusable (no complete.json" in err and err.endswith(
        "); no earlier one: starting over\n"), err


def test_resume_between_two_loss_rows_logs_the_same_gradient_norms(data, tmp_path):
    """A checkpoint between two loss rows (checkpoint_every 3, log_every 2): the resumed run's row at step 4 reports
    the mean of the gradient norms measured before steps 3 and 4, as the uninterrupted run's does. Before, the norms
    measured since the last row were not in the checkpoint: the resumed row reported the step-4 norm alone (0.1729
    against 0.1784 in the uninterrupted run), and the cut run logged an extra row at the step where it was stopped."""
    cfg = micro(log_every=2, checkpoint_every=3, grad_norm_every=1)
    train(cfg, data, tmp_path / "full", progress=False)
    train(cfg, data, tmp_path / "cut", progress=False, max_steps=3)  # "killed" after the checkpoint of step 3
    assert train(cfg, data, tmp_path / "cut", progress=False)["resumed_from"].endswith("step_000003")
    full_rows, cut_rows = read_csv(tmp_path / "full" / "loss.csv"), read_csv(tmp_path / "cut" / "loss.csv")
    assert [r["step"] for r in full_rows] == [r["step"] for r in cut_rows] == [2, 4]
    for a, b in zip(full_rows, cut_rows):
        for key in ("loss", "grad_norm_diffusion", "grad_norm_align"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)


def test_mismatched_shard_is_refused_before_training(data, tmp_path):
    bad = GeoFaceConfig.from_sections(tokens=dict(resolution=64, patch_size=8, uv_resolution=32, geo_patch_size=8),
                                      train=dict(n_ref=1, n_tgt=2))
    with pytest.raises(ShardError, match=r"resolution = 32 but the model config has tokens.resolution = 64"):
        train(bad, data, tmp_path / "x", progress=False)
    bad = bad.replace(tokens=dict(resolution=32, geo_patch_size=4))
    with pytest.raises(ShardError, match="geo_patch_size = 8 .* tokens.geo_patch_size = 4"):
        train(bad, data, tmp_path / "x", progress=False)
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_changed_model_config_refuses_to_resume(data, tmp_path):
    train(micro(steps=2), data, tmp_path, progress=False)
    other = micro(steps=2).replace(model=dict(width=64))
    with pytest.raises(ValueError, match="different 'model' config"):
        train(other, data, tmp_path, progress=False)


def test_reference_dropout_trains_the_unconditional_branch(data, tmp_path):
    """train.cond_dropout: micro-batches without their reference frames (guidance's unconditional branch) train
    without error, log no alignment loss on those batches, and the paper presets sample with guidance 2.0."""
    from geoface_model.presets import PRESET_GUIDANCE, PRESETS
    from geoface_model.diffusion import drop_reference

    m = train(micro(cond_dropout=1.0, steps=2, checkpoint_every=2), data, tmp_path / "run", progress=False)
    rows = read_csv(tmp_path / "run" / "loss.csv")
    # no micro-batch computed the alignment loss: not measured (NaN in loss.csv, null in metrics/train.json), not 0
    assert all(math.isnan(r["align_loss"]) and math.isfinite(r["diffusion_loss"]) for r in rows) and m["completed"]
    assert m["align_loss_last"] is None and m["grad_norm_align_first_half"] is None
    assert m["grad_norm_diffusion_first_half"] > 0
    from geoface_model.train_run import train_model  # what `dvc repro train` writes: the keys, as null (were left out)

    train_model(micro(cond_dropout=1.0, steps=1), data, tmp_path / "state", tmp_path / "model", tmp_path / "loss.csv",
                tmp_path / "train.json")
    written = json.loads((tmp_path / "train.json").read_text())
    assert written["align_loss_last"] is None and written["grad_norm_align_first_half"] is None
    kw = {"app": torch.zeros(2, 3, 3, 8, 8), "plucker": torch.zeros(2, 3, 6, 8, 8), "app_cond": torch.ones(2, 3),
          "timesteps": torch.zeros(2, 4), "geo": torch.zeros(2, 3, 8, 8)}
    d = drop_reference(kw, 1)
    assert d["app"].shape[1] == 2 and d["timesteps"].shape == (2, 3) and d["geo"] is kw["geo"]
    assert PRESET_GUIDANCE == {k: (1.0 if k == "tiny" else 2.0) for k in PRESETS}
    assert all(PRESETS[k]().train.cond_dropout == (0.0 if k == "tiny" else 0.1) for k in PRESETS)


@pytest.mark.parametrize("log_every, grad_norm_every", [(2, 2), (3, 2), (1, 2)])
def test_every_gradient_norm_measured_is_logged(data, tmp_path, log_every, grad_norm_every):
    """The per-loss gradient norms (issue 14 item 3) reach loss.csv and metrics/train.json whatever the two
    intervals: each logged row reports the mean of the norms measured since the row before. Before, the norms were
    measured on steps 0, k, 2k, … and only the row of the same step could carry them, so with log_every = 10 and
    grad_norm_every = 10 (the paper presets) no row ever did and train.json had no gradient norms at all."""
    m = train(micro(steps=6, log_every=log_every, grad_norm_every=grad_norm_every, checkpoint_every=6), data,
              tmp_path, progress=False)
    rows = read_csv(tmp_path / "loss.csv")
    with_norms = [r["step"] for r in rows if math.isfinite(r["grad_norm_diffusion"])]
    assert with_norms and all(math.isfinite(r["grad_norm_align"]) for r in rows if r["step"] in with_norms)
    # measured before steps 1, 3, 5 (step counter 0, 2, 4): reported by the first row at or after each
    expected = sorted({next(r["step"] for r in rows if r["step"] >= s + 1) for s in range(0, 6, grad_norm_every)})
    assert with_norms == expected
    assert m["grad_norm_measurements"] == len(expected) and m["grad_norm_align_over_diffusion"] > 0


def test_a_finished_run_publishes_the_same_bytes(data, tmp_path):
    """Called again with nothing to train (here another train.keep_states, which is not part of the run), the train
    stage publishes the model folder, train.json and the loss CSV byte for byte as the finished run did: before, a
    new card dated now and the metrics of a resume that trained nothing changed models/geoface and train.json, and
    the evaluation re-ran in full. Another capture lineage or params is a new card."""
    import time

    from geoface_model.lineage import CARD_JSON
    from geoface_model.train_run import same_lineage, train_model

    cfg = micro(steps=1)
    out = [tmp_path / "state", tmp_path / "model", tmp_path / "loss.csv", tmp_path / "train.json"]
    snap = lambda: {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in sorted(tmp_path.rglob("*"))  # noqa: E731
                    if p.is_file() and p.parts[len(tmp_path.parts)] != "state"}
    first = train_model(cfg, data, *out)
    before = snap()
    time.sleep(1.1)  # a new card would carry another date (1 s resolution)
    again = train_model(cfg.replace(train=dict(keep_states=cfg.train.keep_states + 1)), data, *out)
    assert snap() == before and json.dumps(again, default=str) == json.dumps(first, default=str)
    card = json.loads((tmp_path / "model" / CARD_JSON).read_text())
    assert same_lineage(card, {**card, "date": "x", "git": {}, "metrics": {}})
    assert not same_lineage(card, {**card, "captures_version": "0" * 16})
    assert not same_lineage(card, {**card, "params": {**card["params"], "train": {**card["params"]["train"], "lr": 1}}})


@pytest.mark.parametrize("cfg, latent, expected", [
    (micro(), (3, 1), ["model.width = 32 is below the 192 latent values of a token's patch (tokens.patch_size = 8",
                       "model.width = 32 is below the 192 latent values of a token's patch (tokens.geo_patch_size = 8"]),
    (micro().replace(model=dict(geometry_stream=False)), (3, 1), ["(tokens.patch_size = 8: 3 channels × 8² at 1×"]),
    (micro().replace(model=dict(width=192)), (3, 1), []),  # the tiny preset's width: one value per channel
    (micro().replace(model=dict(width=64)), (4, 2), []),  # a VAE's 4 latent channels, 8 px = 4² latents per token
    (micro().replace(tokens=dict(geo_patch_size=16), model=dict(width=64)), (4, 2),
     ["model.width = 64 is below the 256 latent values of a token's patch (tokens.geo_patch_size = 16: 4 channels"]),
    (micro(), None, []),  # the VAE's latent shape not known (check_params with model.vae_path): not judged
    (micro(log_every=4).replace(model=dict(width=192)), (3, 1),
     ["train.log_every = 4 is not below train.steps = 4: the loss curve gets one row (step 4)"]),
    (micro(log_every=3).replace(model=dict(width=192)), (3, 1), []),  # rows at steps 3 and 4
    (micro(steps=1, log_every=5).replace(model=dict(width=192)), (3, 1), []),  # one step: one row whatever log_every
])
def test_config_warnings(cfg, latent, expected):
    """Settings a run accepts but that defeat its purpose: a token narrower than the values of its patch in
    either stream (with the codec's channels and downsampling), a loss curve of one row."""
    from geoface_model.train_run import config_warnings

    got = config_warnings(cfg, latent)
    assert len(got) == len(expected) and all(e in g and "\n" not in g for e, g in zip(expected, got)), got


def test_training_start_prints_the_warnings(data, tmp_path, capsys):
    """`train_model` (the train stage, `geoface train`) prints each warning once, before training, and trains."""
    from geoface_model.train_run import train_model

    m = train_model(micro(steps=2, log_every=2, checkpoint_every=2), data, tmp_path / "state", tmp_path / "model",
                    tmp_path / "loss.csv")
    err = capsys.readouterr().err
    assert err.count("train: warning: model.width = 32 is below the 192 latent values") == 2  # app and geo streams
    assert err.count("train: warning: train.log_every = 2 is not below train.steps = 2") == 1
    assert m["completed"] and len(read_csv(tmp_path / "loss.csv")) == 1  # what the warning said
