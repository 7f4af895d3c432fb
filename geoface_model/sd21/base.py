"""A local Stable Diffusion 2.x folder in diffusers layout: its public configs, validation, loading.

    base_path/model_index.json
    base_path/unet/config.json + weights      UNet2DConditionModel
    base_path/vae/config.json + weights       AutoencoderKL
    base_path/scheduler/scheduler_config.json (prediction_type: epsilon for -2-1-base, v_prediction for -2-1)

`check_base_folder` reads only the JSON files and refuses, before anything is built, a path that is not an
existing local folder (a hub id such as "stabilityai/stable-diffusion-2-1" is refused: nothing is ever
downloaded) and a folder that is not SD 2.x: the error is one line naming the file and the field.
What "SD 2.x" means here is the block structure the multi-view surgery relies on: 4 latent channels in and
out, 3 CrossAttnDownBlock2D + DownBlock2D, UpBlock2D + 3 CrossAttnUpBlock2D, one transformer layer per
attention (16 self-attentions, layer 10 = the first of the second up block), cross_attention_dim 1024 (the
OpenCLIP-H text width; SD 1.x has 768), and a 4-channel AutoencoderKL with 4 blocks (8× downsampling).
Channel widths and head counts are free (the tests use a tiny model with the same structure).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import UNet2DConditionModel

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.json_files import read_json_object

from ..weights import MAX_CONFIG_BYTES

DOWN = ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
UP = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
MID = "UNetMidBlock2DCrossAttn"
TEXT_DIM = 1024

# stabilityai/stable-diffusion-2-1-base unet/config.json (public); -2-1 differs in sample_size 96 and
# upcast_attention true. Used for the parameter count (meta device) and the benchmark (random weights).
SD21_UNET_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=list(DOWN), mid_block_type=MID, up_block_types=list(UP), only_cross_attention=False,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=TEXT_DIM, attention_head_dim=[5, 10, 20, 20],
    dual_cross_attention=False, use_linear_projection=True, class_embed_type=None, num_class_embeds=None,
    upcast_attention=False, resnet_time_scale_shift="default",
)
SD21_VAE_CONFIG = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, act_fn="silu", latent_channels=4,
    norm_num_groups=32, sample_size=768, scaling_factor=0.18215,
)


class BaseModelError(GeofaceError, ValueError):
    """A `model.base_path` that is not a usable local Stable Diffusion 2.x folder, or a checkpoint of another backbone."""


@dataclass(frozen=True)
class BaseInfo:
    path: Path
    unet_config: dict  # unet/config.json without the "_..." bookkeeping keys
    vae_config: dict
    prediction_type: str  # of the base model's scheduler: "epsilon" (-2-1-base) or "v_prediction" (-2-1)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BaseModelError(f"{path}: missing (expected a Stable Diffusion 2.x folder in diffusers layout)")
    return read_json_object(path, BaseModelError, MAX_CONFIG_BYTES, "model's config")


def _expect(cfg: dict, file: Path, field: str, want, got=None) -> None:
    got = cfg.get(field) if got is None else got
    if got != want:
        raise BaseModelError(f"{file}: {field} is {got!r}, a Stable Diffusion 2.x model has {want!r}")


def check_unet_config(cfg: dict, file: Path | str) -> None:
    """Refuse a UNet config that is not SD 2.x's structure (see the module docstring)."""
    file = Path(file)
    _expect(cfg, file, "_class_name", "UNet2DConditionModel")
    for field in ("in_channels", "out_channels"):
        _expect(cfg, file, field, 4)
    _expect(cfg, file, "cross_attention_dim", TEXT_DIM)
    _expect(cfg, file, "down_block_types", DOWN, list(cfg.get("down_block_types") or []))
    _expect(cfg, file, "up_block_types", UP, list(cfg.get("up_block_types") or []))
    _expect(cfg, file, "mid_block_type", MID, cfg.get("mid_block_type", MID))
    _expect(cfg, file, "layers_per_block", 2)
    if len(cfg.get("block_out_channels") or []) != 4:
        raise BaseModelError(f"{file}: block_out_channels is {cfg.get('block_out_channels')!r}, SD 2.x has 4 levels")
    for field in ("transformer_layers_per_block", "encoder_hid_dim", "addition_embed_type", "class_embed_type"):
        if cfg.get(field) not in (None, 1):
            raise BaseModelError(f"{file}: {field} is {cfg.get(field)!r}, Stable Diffusion 2.x has none (or 1)")


def check_vae_config(cfg: dict, file: Path | str) -> None:
    file = Path(file)
    _expect(cfg, file, "_class_name", "AutoencoderKL")
    _expect(cfg, file, "latent_channels", 4)
    _expect(cfg, file, "in_channels", 3)
    if len(cfg.get("block_out_channels") or []) != 4:
        raise BaseModelError(f"{file}: block_out_channels is {cfg.get('block_out_channels')!r}, the SD VAE has 4 "
                             "levels (8× downsampling)")


def check_base_folder(base_path: str | Path | None, where: str = "model.base_path") -> BaseInfo:
    """Validate a local SD 2.x folder from its JSON files only (nothing is built, nothing is downloaded)."""
    if base_path is None or str(base_path).strip() == "":
        raise BaseModelError(f"{where} is not set: backbone sd21_mv needs a local Stable Diffusion 2.1 folder "
                             "(diffusers layout; download it yourself, see docs/model.md)")
    path = Path(base_path)
    if not path.is_dir():
        hub = "/" in str(base_path) and not path.is_absolute() and len(Path(base_path).parts) == 2
        raise BaseModelError(f"{where} = {str(base_path)!r}: not an existing local folder"
                             + (" (it looks like a hub id; nothing is downloaded: download the model and give its "
                                "folder)" if hub else ""))
    unet_file, vae_file = path / "unet" / "config.json", path / "vae" / "config.json"
    unet_cfg, vae_cfg = _read_json(unet_file), _read_json(vae_file)
    check_unet_config(unet_cfg, unet_file)
    check_vae_config(vae_cfg, vae_file)
    sched_file = path / "scheduler" / "scheduler_config.json"
    pred = _read_json(sched_file).get("prediction_type", "epsilon") if sched_file.exists() else "epsilon"
    if pred not in ("epsilon", "v_prediction"):
        raise BaseModelError(f"{sched_file}: prediction_type is {pred!r}, SD 2.x uses 'epsilon' or 'v_prediction'")
    for w in ("unet", "vae"):
        if not any((path / w).glob("*.safetensors")):
            pickles = any((path / w).glob("*.bin"))
            raise BaseModelError(f"{path / w}: no weights (*.safetensors)" + ("; *.bin files are pickles, which can "
                                 "run code and are never loaded (download the safetensors weights)" if pickles else ""))
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    return BaseInfo(path=path, unet_config=strip(unet_cfg), vae_config=strip(vae_cfg), prediction_type=pred)


def load_base_unet(info: BaseInfo, dtype=None) -> UNet2DConditionModel:
    """The base UNet of a checked folder, local files only (the VAE: `LatentCodec.from_path(info.path / "vae")`)."""
    kw = dict(local_files_only=True, use_safetensors=True, **({"torch_dtype": dtype} if dtype is not None else {}))
    return UNet2DConditionModel.from_pretrained(str(info.path), subfolder="unet", **kw)
