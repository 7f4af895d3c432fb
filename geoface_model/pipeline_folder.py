"""What a saved `GeoFacePipeline` folder holds, and the checks its files pass before anything is built from them
(the pipeline itself, with its denoising loop, is `pipeline.py`).

A diffusers pipeline folder (model_index.json, transformer/, scheduler/, optional vae/) written by
`GeoFacePipeline.save_pretrained`, plus `head/uv_layout.npz` (the head model's UV layout: uv, uv_faces, faces,
n_vertices, key) and `head/head_model.json` (kind, sizes, gutter), which `posmap → mesh` needs. Reading it back
(local folders only) checks model_index.json (`check_pipeline_folder`: only GeoFace components, bounded
resolutions) and the scheduler config (`load_scheduler`: a bounded noise schedule, the sampler of this
transformer) before diffusers resolves or builds anything, and the UV layout against its stored content hash.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.errors import GeofaceError
from flame_fitting.uv import UVLayout

from .diffusion import scheduler_prediction_type
from .model import PREDICTION_TYPES, ModelConfigError
from .weights import read_config_json

SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
# what a pipeline folder's model_index.json may name: diffusers resolves these entries to classes and loads them,
# so an entry naming anything else (a UNet config declaring 600 GB, a module of the process) is refused first
COMPONENTS = {"transformer": [["geoface_model.model", "GeoFaceTransformer"], ["geoface_model.sd21.model", "SD21MultiView"]],
              "scheduler": [["diffusers", c.__name__] for c in SCHEDULERS.values()],
              "vae": [[None, None], ["diffusers", "AutoencoderKL"]]}
MAX_RESOLUTION = 4096          # resolution / uv_resolution of model_index.json (65536 asked for 12 GB per view)
MAX_TRAIN_TIMESTEPS = 100_000  # a scheduler config's num_train_timesteps (10^12 looped, then asked for 4 TB)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
HEAD_DIR, LAYOUT_FILE, HEAD_INFO_FILE = "head", "uv_layout.npz", "head_model.json"


class PipelineError(GeofaceError, ValueError):
    """Bad input to the pipeline or an unusable pipeline folder (names the file / argument)."""


def make_scheduler(kind: str = "ddim", num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                   prediction_type: str = "epsilon", clip_sample: bool = True, rescale_betas_zero_snr: bool = False,
                   trained_betas: list[float] | None = None):
    """A DDIM or Euler scheduler on the training noise schedule (`noise_schedule.schedule_kwargs` of the
    `TrainConfig`: timesteps, beta schedule, zero terminal SNR, SNR-shifted betas) and `ModelConfig.prediction_type`;
    'trailing' timestep spacing (the first step is t = T - 1, pure noise). clip_sample (DDIM only): clamp x̂0 to
    [-1, 1] — right in pixel space, wrong for VAE latents."""
    if kind not in SCHEDULERS:
        raise PipelineError(f"scheduler {kind!r}: choose one of {sorted(SCHEDULERS)}")
    common = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type,
                  timestep_spacing="trailing", rescale_betas_zero_snr=rescale_betas_zero_snr, trained_betas=trained_betas)
    if kind == "ddim":
        return DDIMScheduler(**common, clip_sample=clip_sample, set_alpha_to_one=True)
    return EulerDiscreteScheduler(**common)


def write_head(folder: Path, layout: UVLayout | None, head_info: dict) -> None:
    """head/ of a pipeline folder being written (`folder` is the temporary sibling that is renamed after)."""
    (folder / HEAD_DIR).mkdir()
    if layout is not None:
        np.savez(folder / HEAD_DIR / LAYOUT_FILE, uv=layout.uv, uv_faces=layout.uv_faces, faces=layout.faces,
                 n_vertices=np.int64(layout.n_vertices), key=np.array(layout.key))
    (folder / HEAD_DIR / HEAD_INFO_FILE).write_text(json.dumps(head_info, indent=1))


def read_head(folder: Path) -> tuple[UVLayout | None, dict]:
    """head/ of a pipeline folder -> (UV layout or None, head model description; {} when there is none)."""
    info_file, layout_file = folder / HEAD_DIR / HEAD_INFO_FILE, folder / HEAD_DIR / LAYOUT_FILE
    info = read_config_json(info_file, PipelineError, "head model description") if os.path.lexists(info_file) else {}
    return (load_layout(layout_file) if layout_file.is_file() else None), info


def load_layout(path: Path | str) -> UVLayout:
    """`head/uv_layout.npz` of a pipeline folder -> UVLayout (refuses a file whose content hash differs)."""
    path = Path(path)
    z = load_npz(path, PipelineError, keys=("uv", "uv_faces", "faces", "n_vertices", "key"))
    try:
        layout = UVLayout.from_arrays(z["uv"], z["uv_faces"], z["faces"], int(z["n_vertices"]))
        key = str(z["key"])
    except (KeyError, ValueError, TypeError) as e:
        raise PipelineError(f"{path}: not a readable UV layout file ({type(e).__name__}: {e})") from None
    if layout.key != key:
        raise PipelineError(f"{path}: layout content hash {layout.key} does not match the stored key {key} (damaged file)")
    return layout


def check_pipeline_folder(path: Path) -> dict:
    """model_index.json of a pipeline folder: PipelineError naming the file unless it is a GeoFacePipeline's whose
    components are among COMPONENTS and whose resolutions are integers in 1..MAX_RESOLUTION."""
    file = path / "model_index.json"
    index = read_config_json(file, PipelineError, "model_index.json")
    if index.get("_class_name") != "GeoFacePipeline":
        raise PipelineError(f"{file}: _class_name is {index.get('_class_name')!r}, expected 'GeoFacePipeline'")
    for key in ("transformer", "scheduler"):
        if key not in index:
            raise PipelineError(f"{file}: no {key!r} entry")
    for key, value in index.items():
        if key.startswith("_"):
            continue
        if key in ("resolution", "uv_resolution"):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RESOLUTION:
                raise PipelineError(f"{file}: {key} {value!r} is not an integer in 1..{MAX_RESOLUTION}")
        elif key not in COMPONENTS:
            raise PipelineError(f"{file}: unknown entry {key!r} (a GeoFace pipeline has {sorted(COMPONENTS)})")
        elif value not in COMPONENTS[key]:
            raise PipelineError(f"{file}: {key} is {value!r}; a GeoFace pipeline's is one of {COMPONENTS[key]}")
    return index


def folder_scheduler(path: Path, index: dict):
    """The sampler a checked pipeline folder (`index` = its model_index.json) names, for its transformer's
    prediction type (checked first: the sampler is judged by it)."""
    file = path / "transformer" / "config.json"
    tcfg = read_config_json(file, PipelineError)
    if tcfg.get("prediction_type") not in PREDICTION_TYPES:
        raise ModelConfigError(f"GeoFaceTransformer config: prediction_type {tcfg.get('prediction_type')!r} "
                               f"is not one of {list(PREDICTION_TYPES)} ({file})")
    kind = next(k for k, c in SCHEDULERS.items() if c.__name__ == index["scheduler"][1])
    return load_scheduler(path / "scheduler" / "scheduler_config.json", kind,
                          scheduler_prediction_type(tcfg.get("prediction_type")),
                          clip_sample=index.get("vae", [None])[0] is None)


def load_scheduler(file: Path, kind: str, prediction_type: str, clip_sample: bool):
    """The pipeline's sampler from its scheduler_config.json: the noise schedule is checked before anything is
    built (timesteps, beta schedule, trained betas), every other key must be what `make_scheduler` sets (a
    prediction type that is not the transformer's turned generation into noise)."""
    cfg = read_config_json(file, PipelineError, "scheduler config")
    T, betas, bs = cfg.get("num_train_timesteps"), cfg.get("trained_betas"), cfg.get("beta_schedule")
    if isinstance(T, bool) or not isinstance(T, int) or not 2 <= T <= MAX_TRAIN_TIMESTEPS:
        raise PipelineError(f"{file}: num_train_timesteps {T!r} is not an integer in 2..{MAX_TRAIN_TIMESTEPS}")
    if bs not in BETA_SCHEDULES:
        raise PipelineError(f"{file}: beta_schedule {bs!r} is not one of {list(BETA_SCHEDULES)}")
    if betas is not None:
        ok = isinstance(betas, list) and len(betas) == T and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas)
        if not ok:
            raise PipelineError(f"{file}: trained_betas must be num_train_timesteps ({T}) numbers in (0, 1)")
    if not isinstance(cfg.get("rescale_betas_zero_snr", False), bool):
        raise PipelineError(f"{file}: rescale_betas_zero_snr {cfg['rescale_betas_zero_snr']!r} is not true/false")
    sched = make_scheduler(kind, num_train_timesteps=T, beta_schedule=bs, trained_betas=betas,
                           rescale_betas_zero_snr=cfg.get("rescale_betas_zero_snr", False),
                           prediction_type=prediction_type, clip_sample=clip_sample)
    for key, value in cfg.items():
        if not key.startswith("_") and key in sched.config and value != sched.config[key]:
            raise PipelineError(f"{file}: {key} is {value!r}, the GeoFace {kind} sampler of this transformer uses "
                                f"{sched.config[key]!r} (a file edited by hand or of another model)")
    return sched
