"""GeoFaceTransformer: shapes, ablation switch, adaLN-Zero start, view equivariance, save/load round trip."""
import pytest
import torch

from geoface_model.model import GeoFaceTransformer
from geoface_model.presets import count_params, estimate_memory, paper, tiny


def _model(geometry_stream=True, **kw):
    torch.manual_seed(0)
    args = dict(latent_channels=3, patch_size=4, geo_patch_size=8, width=32, depth=3, heads=4,
                geometry_stream=geometry_stream) | kw
    return GeoFaceTransformer(**args)


def _inputs(B=2, Fa=3, geo=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = dict(app=torch.randn(B, Fa, 3, 16, 16, generator=g), plucker=torch.randn(B, Fa, 6, 16, 16, generator=g),
             app_cond=torch.tensor([[1.0] + [0.0] * (Fa - 1)] * B),
             timesteps=torch.randint(0, 1000, (B, Fa + int(geo)), generator=g))
    if geo:
        d["geo"] = torch.randn(B, 3, 32, 32, generator=g)
    return d


def _randomize(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_shapes_with_and_without_geometry_stream():
    m = _model()
    out = m(**_inputs(), align=True)
    assert out.app.shape == (2, 3, 3, 16, 16) and out.geo.shape == (2, 3, 32, 32)
    assert list(out.align) == [1]  # middle block of 3
    assert out.align[1].a2g.shape == (2, 3, 16, 16) and out.align[1].g2a.shape == (2, 3, 16, 16)
    assert m(**_inputs()).align == {}  # align off: no explicit logits
    m2 = _model(geometry_stream=False)
    out2 = m2(**_inputs(geo=False), align=True)
    assert out2.geo is None and out2.align == {} and out2.app.shape == (2, 3, 3, 16, 16)
    assert sum(p.numel() for p in m.parameters()) == count_params(32, 3, 4.0, 3, 4, 8, True)
    assert sum(p.numel() for p in m2.parameters()) == count_params(32, 3, 4.0, 3, 4, 8, False)


def test_adaln_zero_start_and_bad_inputs():
    m = _model()
    out = m(**_inputs())
    assert out.app.abs().max() == 0 and out.geo.abs().max() == 0
    bad = _inputs()
    bad["timesteps"] = bad["timesteps"][:, :3]
    with pytest.raises(ValueError, match="timesteps"):
        m(**bad)
    with pytest.raises(ValueError, match="geometry_stream"):
        m(**_inputs(geo=False) | {"timesteps": torch.zeros(2, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="align_layers"):
        _model(align_layers=[3])


def test_permuting_target_views_permutes_outputs():
    m = _model()
    _randomize(m)
    x = _inputs()
    perm = [0, 2, 1]
    y = {k: (v[:, perm] if k in ("app", "plucker", "app_cond") else v) for k, v in x.items()}
    y["timesteps"] = x["timesteps"][:, [0, 2, 1, 3]]
    a, b = m(**x, align=True), m(**y, align=True)
    torch.testing.assert_close(a.app[:, perm], b.app, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.geo, b.geo, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.align[1].a2g[:, perm], b.align[1].a2g, atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_matches():
    m = _model()
    _randomize(m)
    x = _inputs()
    out = m(**x, align=True)
    (out.app.square().mean() + out.geo.square().mean() + out.align[1].a2g.mean()).backward()
    g1 = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.enable_gradient_checkpointing()
    out2 = m(**x, align=True)
    (out2.app.square().mean() + out2.geo.square().mean() + out2.align[1].a2g.mean()).backward()
    for a, b in zip(g1, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_save_pretrained_round_trip(tmp_path):
    m = _model(align_layers=[0, 2], prediction_type="v_prediction")
    _randomize(m)
    m.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    r = GeoFaceTransformer.from_pretrained(tmp_path / "m")
    assert r.config.align_layers == [0, 2] and r.config.prediction_type == "v_prediction"
    x = _inputs()
    a, b = m(**x, align=True), r(**x, align=True)
    assert a.app.abs().max() > 0
    torch.testing.assert_close(a.app, b.app, atol=0, rtol=0)
    torch.testing.assert_close(a.geo, b.geo, atol=0, rtol=0)
    torch.testing.assert_close(a.align[2].g2a, b.align[2].g2a, atol=0, rtol=0)


def test_presets_and_memory_estimate():
    t, p = tiny(), paper()
    assert (t.tokens.app_tokens, t.tokens.geo_tokens) == (8, 8)
    assert (p.tokens.app_tokens, p.tokens.geo_tokens) == (32, 32)
    est = estimate_memory(p)
    assert est["tokens"] == 8 * 1024
    assert est["full_attention_mb"] == 8192**2 * 16 * 4 / 2**20  # 4096 MiB
    assert est["align_block_mb"] == 2 * 7 * 1024 * 1024 * 4 / 2**20  # 56 MiB
    assert 6.5e8 < est["params"] < 7e8


@pytest.mark.parametrize("key, value", [("geo_norm_resolution", 200000), ("width", 10**9), ("depth", -1),
                                        ("patch_size", 0), ("heads", "4")])
def test_a_model_folder_declaring_absurd_sizes_is_refused_before_allocating(tmp_path, key, value):
    """A model folder someone sent: config.json's `geo_norm_resolution: 200000` made loading allocate 480 GB for the
    geometry normaliser before any weight was read (found by an audit). Sizes outside what any GeoFace model has are
    refused naming the key."""
    import json

    from geoface_model.model import ModelConfigError

    m = GeoFaceTransformer(width=32, depth=2, heads=2, geo_norm_resolution=8)
    m.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelConfigError, match=f"config: {key} {value!r} is not an integer in"):
        GeoFaceTransformer.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("width, rank", [(32, 32), (48, 48)])
def test_a_token_predicts_at_most_width_values_of_its_patch(width, rank):
    """Why `train_run.config_warnings` flags model.width < channels·p²: each token's prediction is a linear map of
    its width-D state, so the predicted 4×4×3 = 48-value patches (centred) span at most D dimensions, all 48 only
    from D = 48 on."""
    m = _model(width=width)
    _randomize(m)
    with torch.no_grad():
        app = m(**_inputs()).app.double()  # (2, 3, 3, 16, 16), patch 4
    patches = app.reshape(2, 3, 3, 4, 4, 4, 4).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, 48)  # (96, C·p·p)
    s = torch.linalg.svdvals(patches - patches.mean(0))
    assert int((s > 1e-4 * s[0]).sum()) == rank
