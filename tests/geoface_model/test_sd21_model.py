"""Backbone sd21_mv without any download: a tiny random Stable Diffusion 2.x folder with SD 2.1's block structure.

Checks: one frame = the original UNet (widened conv_in, multi-view processor), 3D attention = a slow explicit
reference, layer 10's logits are those of `up_blocks.2.attentions.0.transformer_blocks.0.attn1`, gradient
checkpointing keeps the alignment gradient, the full-size SD 2.1 UNet's parameter count (meta device), and the
refusal of bad base folders / hub ids / other backbones' checkpoints, naming the file and the field.
"""
import json
import shutil

import pytest
import torch
from diffusers import UNet2DConditionModel

from geoface_model.attention import TokenLayout
from geoface_model.backbone import check_run_backbone, load_trained
from geoface_model.config import GeoFaceConfig
from geoface_model.model import GeoFaceTransformer
from geoface_model.presets import paper_sd21
from geoface_model.sd21 import SD21_UNET_CONFIG, BaseModelError, SD21MultiView, check_base_folder
from geoface_model.sd21.attention import MultiViewAttnProcessor, reference_mv_attention
from geoface_model.sd21.surgery import remove_text_cross_attention
from geoface_model.sd21.tiny import write_tiny_sd21
from flame_fitting.core.params import ParamsError

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER10 = "up_blocks.2.attentions.0.transformer_blocks.0.attn1"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_sd21(tmp_path_factory.mktemp("sd21") / "base", seed=0)


def inputs(B=2, Fa=3, h=8, seed=0, geo=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    kw = dict(app=r(B, Fa, 4, h, h), timesteps=torch.randint(0, 1000, (B, Fa + int(geo)), generator=g),
              plucker=r(B, Fa, 6, h, h), app_cond=(torch.rand(B, Fa, generator=g) > 0.5).float())
    if geo:
        kw["geo"] = r(B, 4, h, h)
    return kw


def test_single_frame_equals_the_original_unet(base):
    info = check_base_folder(base)
    model = SD21MultiView.from_base(info, geometry_stream=False).eval()
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", local_files_only=True).eval()
    assert remove_text_cross_attention(unet) == 16  # the comparison isolates the multi-view changes
    kw = inputs(B=2, Fa=1, geo=False)
    with torch.no_grad():
        ours = model(**kw).app[:, 0]
        ref = unet(kw["app"][:, 0], kw["timesteps"][:, 0], encoder_hidden_states=None).sample
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # the 7 new input channels have zero kernels: rays and mask do not change a single frame's output
    kw2 = dict(kw, plucker=kw["plucker"] * 3 + 1, app_cond=1 - kw["app_cond"])
    with torch.no_grad():
        torch.testing.assert_close(model(**kw2).app[:, 0], ref, atol=1e-5, rtol=1e-5)
    assert model.unet.conv_in.in_channels == 11 and torch.all(model.unet.conv_in.weight[:, 4:] == 0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_3d_attention_matches_the_explicit_reference(base, qk_norm):
    model = SD21MultiView.from_base(check_base_folder(base), qk_norm=qk_norm)
    attn = model.unet.get_submodule(LAYER10)
    if qk_norm:  # non-trivial norm parameters
        with torch.no_grad():
            for m in (attn.norm_q, attn.norm_k):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    F, L = 4, 16
    x = torch.randn(2 * F, L, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = MultiViewAttnProcessor()(attn, x, mv_frames=F)
        ref, _ = reference_mv_attention(attn, x, F)
        single = MultiViewAttnProcessor()(attn, x, mv_frames=1)
        ref1, _ = reference_mv_attention(attn, x, 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(single, ref1, atol=1e-5, rtol=1e-4)
    assert (out - single).abs().max() > 1e-3  # frames really attend to each other


@pytest.mark.parametrize("head", ["mean", "mlp"])
def test_layer10_logits_come_from_the_named_module(base, head):
    model = SD21MultiView.from_base(check_base_folder(base), align_head=head, qk_norm=True, align_head_chunk=3).eval()
    assert model.attn_names[10] == LAYER10 and len(model.attn_names) == 16 and model.config.patch_size == 2
    seen = {}

    def grab(mod, args, kwargs):
        seen["x"] = kwargs.get("hidden_states", args[0] if args else None)

    hook = model.unet.get_submodule(LAYER10).register_forward_pre_hook(grab, with_kwargs=True)
    kw = inputs(B=2, Fa=3)
    with torch.no_grad():
        out = model(**kw, align=True)
    hook.remove()
    assert list(out.align) == [10]
    _, logits = reference_mv_attention(model.unet.get_submodule(LAYER10), seen["x"], 4)  # (B, H, N, N)
    lay = TokenLayout(3, 16, 16)
    na = lay.n_app * lay.app_len
    a2g = logits[:, :, :na, na:].reshape(2, -1, 3, 16, 16).permute(0, 2, 3, 4, 1)  # (B, Fa, La, Lg, H)
    g2a = logits[:, :, na:, :na].reshape(2, -1, 16, 3, 16).permute(0, 3, 2, 4, 1)  # (B, Fa, Lg, La, H)
    model.logit_head.chunk_queries = 10**6  # the reference head runs unchunked
    with torch.no_grad():
        want = [model.logit_head(t) for t in (a2g, g2a)]
    torch.testing.assert_close(out.align[10].a2g, want[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.align[10].g2a, want[1], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        assert model(**kw).align == {}  # not asked: no logits


def test_gradient_checkpointing_keeps_the_alignment_gradient(base):
    torch.manual_seed(0)
    model = SD21MultiView.from_base(check_base_folder(base), align_head="mlp", align_head_chunk=5)  # chunks of 5, 5, 5, 1
    kw = inputs(B=1, Fa=2)

    def grads():
        model.zero_grad()
        out = model(**kw, align=True)
        (out.app.square().mean() + out.align[10].a2g.logsumexp(-1).mean() + out.align[10].g2a.mean()).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.enable_gradient_checkpointing()
    ckpt = grads()
    assert len(plain) == len(ckpt) and all(p.grad.abs().sum() > 0 for p in model.logit_head.parameters())
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_full_size_sd21_unet_parameter_count():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET_CONFIG)
        ours = SD21MultiView(unet_config=SD21_UNET_CONFIG, align_head="mlp", qk_norm=True)
    n = sum(p.numel() for p in unet.parameters())
    print(f"SD 2.1 UNet: {n} parameters; sd21_mv model: {sum(p.numel() for p in ours.parameters())}")
    assert n == 865_910_724  # ≈ 865.9 M
    assert ours.attn_names[10] == LAYER10 and ours.unet.get_submodule(LAYER10).heads == 10
    assert [ours.unet.get_submodule(a).heads for a in ours.attn_names] == [5, 5, 10, 10, 20, 20, 20, 20, 20, 20,
                                                                          10, 10, 10, 5, 5, 5]


# ---------------------------------------------------------------- bad input


def test_missing_or_hub_base_path_is_refused(tmp_path):
    with pytest.raises(BaseModelError, match="model.base_path is not set"):
        check_base_folder(None)
    with pytest.raises(BaseModelError, match=r"'stabilityai/stable-diffusion-2-1': not an existing local folder.*hub id"):
        check_base_folder("stabilityai/stable-diffusion-2-1")
    with pytest.raises(BaseModelError, match="not an existing local folder"):
        check_base_folder(tmp_path / "nowhere")
    with pytest.raises(ParamsError, match="model.base_path is not set"):
        GeoFaceConfig.from_sections(tokens=dict(resolution=64, patch_size=16, uv_resolution=64, geo_patch_size=16),
                                    model=dict(backbone="sd21_mv"))


@pytest.mark.parametrize("file, field, value", [
    ("unet/config.json", "in_channels", 9),  # the inpainting UNet
    ("unet/config.json", "cross_attention_dim", 768),  # SD 1.x
    ("unet/config.json", "down_block_types", ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3),
    ("unet/config.json", "up_block_types", ["CrossAttnUpBlock2D"] * 4),
    ("unet/config.json", "_class_name", "UNet2DModel"),
    ("vae/config.json", "latent_channels", 16),
])
def test_a_folder_that_is_not_sd2_is_refused_naming_file_and_field(base, tmp_path, file, field, value):
    bad = tmp_path / "bad"
    shutil.copytree(base, bad)
    cfg = json.loads((bad / file).read_text())
    cfg[field] = value
    (bad / file).write_text(json.dumps(cfg))
    with pytest.raises(BaseModelError) as e:
        check_base_folder(bad)
    msg = str(e.value)
    assert str(bad / file) in msg and field in msg and "\n" not in msg


def test_missing_files_are_named(base, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(base, bad)
    (bad / "vae" / "config.json").unlink()
    with pytest.raises(BaseModelError, match=r"vae/config.json: missing"):
        check_base_folder(bad)
    (bad / "vae" / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError traceback before
    with pytest.raises(BaseModelError, match=r"vae/config.json: not valid JSON \(nested too deeply\)$"):
        check_base_folder(bad)


def test_tokens_must_match_the_supervised_layer():
    with pytest.raises(ParamsError, match="tokens.patch_size / geo_patch_size = 8 / 8.*set both to 16"):
        GeoFaceConfig.from_sections(tokens=dict(resolution=64, patch_size=8, uv_resolution=64, geo_patch_size=8),
                                    model=dict(backbone="sd21_mv", base_path="x"))
    with pytest.raises(ParamsError, match="model.align_head = mlp .* sd21_mv only"):
        GeoFaceConfig.from_sections(model=dict(align_head="mlp"))
    assert paper_sd21().model.resolved_align_layers() == [10]


def test_a_checkpoint_of_another_backbone_is_refused(base, tmp_path):
    dit = GeoFaceTransformer(width=32, depth=2, heads=2, patch_size=8, geo_patch_size=8)
    dit.save_pretrained(str(tmp_path / "dit"))
    sd_cfg = GeoFaceConfig.from_sections(tokens=dict(resolution=64, patch_size=16, uv_resolution=64, geo_patch_size=16),
                                         model=dict(backbone="sd21_mv", base_path=str(base)))
    with pytest.raises(BaseModelError, match=r"dit/config.json: _class_name is 'GeoFaceTransformer', model.backbone "
                                             r"'sd21_mv' needs 'SD21MultiView'"):
        load_trained(tmp_path / "dit", sd_cfg)
    with pytest.raises(BaseModelError, match="_class_name is 'GeoFaceTransformer'"):
        SD21MultiView.from_pretrained(str(tmp_path / "dit"))
    sd = SD21MultiView.from_base(check_base_folder(base))
    sd.save_pretrained(str(tmp_path / "sd"))
    with pytest.raises(BaseModelError, match=r"sd/config.json: _class_name is 'SD21MultiView', model.backbone 'dit'"):
        load_trained(tmp_path / "sd", GeoFaceConfig())
    run = tmp_path / "run" / "geoface_config.json"
    run.parent.mkdir()
    run.write_text(json.dumps(GeoFaceConfig().to_dict()))
    with pytest.raises(BaseModelError, match=r"geoface_config.json: model.backbone is 'dit', the config asks 'sd21_mv'"):
        check_run_backbone(run, sd_cfg)


def test_the_preconditioning_scale_reaches_the_saved_model(base, tmp_path):
    """sigma_data of an edm / sample_skip run is part of the sd21_mv model's config (the pipeline reads it from the
    model to mix x_t into x̂0), as for the DiT; a model saved before it existed loads with the former default."""
    from geoface_model.backbone import sd21_kwargs

    cfg = GeoFaceConfig.from_sections(tokens=dict(resolution=64, patch_size=16, uv_resolution=64, geo_patch_size=16),
                                      model=dict(backbone="sd21_mv", base_path=str(base), prediction_type="sample_skip",
                                                 sigma_data=0.03),
                                      train=dict(zero_terminal_snr=True))
    model = SD21MultiView.from_base(check_base_folder(base), **sd21_kwargs(cfg))
    assert model.config.prediction_type == "sample_skip" and model.config.sigma_data == 0.03
    model.save_pretrained(tmp_path / "m")
    assert SD21MultiView.from_pretrained(str(tmp_path / "m")).config.sigma_data == 0.03
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    del conf["sigma_data"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(conf))
    assert SD21MultiView.from_pretrained(str(tmp_path / "m")).config.sigma_data == 0.5
