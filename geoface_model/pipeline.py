"""`GeoFacePipeline`: inference with the trained GeoFace transformer — a reference view and target cameras in,
generated target views + the canonical UV position map + the head mesh from it out.

    pipe = GeoFacePipeline.from_pretrained("models/geoface_pipeline")          # or GeoFacePipeline.build(...)
    out = pipe(reference_image, reference_camera, target_cameras, num_inference_steps=25, seed=0)
    out.images (N, S, S, 3) uint8 · out.cameras (N Cameras at S×S) · out.posmap (R, R, 3) · out.vertices (V, 3)

Denoising loop (written out in `__call__`): the reference view(s) are encoded once and stay clean (mask 1,
timestep 0); the target latents and the geometry latent start from Gaussian noise (one generator, drawn on the
CPU so a seed gives the same result on any device) and are denoised together — one shared timestep, as in
training — by a DDIM or Euler scheduler built from the training noise schedule. Plücker rays of every view are
relative to the first reference camera (`embeddings.plucker_rays`), so the world frame of the cameras does not
matter to the model; the mesh comes out in the head model's canonical frame (FLAME: y up, face along +z).

Guidance (`guidance_scale`, classifier-free form): ε = ε_uncond + g·(ε_cond − ε_uncond), the unconditional
branch being the same denoising step with the reference frame(s) dropped (their tokens removed; the rays of the
targets stay expressed in the reference camera's frame). A model trained without reference dropout (the tiny
model, `train.cond_dropout: 0`) has never seen that branch: g = 1 (default) runs the conditional branch only;
g > 1 extrapolates away from whatever it predicts without a reference — not a calibrated CFG. Trained with
`train.cond_dropout` > 0 (the paper presets: 0.1) g > 1 is CFG. g != 1 costs a second forward pass per step.

Saved with `save_pretrained` as a diffusers pipeline folder plus the head model's UV layout (head/), written to a
temporary sibling and renamed; `from_pretrained` reads it back (local folders only), its files checked first. What
the folder holds and those checks: `pipeline_folder.py`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from flame_fitting.core.threads import torch_threads
from flame_fitting.geometry.camera import Camera
from flame_fitting.core.fileio import replace_dir, temp_path
from flame_fitting.uv import UVLayout, posmap_to_vertices

from .backbone import load_trained, vae_path_of
from .diffusion import precondition, scheduler_prediction_type
from .embeddings import plucker_rays
from .latents import LatentCodec
from .model import GeoFaceTransformer
from .noise_schedule import PRECONDITIONED, schedule_of, train_schedule
from .pipeline_folder import (SCHEDULERS, PipelineError, check_pipeline_folder, folder_scheduler, load_layout,
                              load_scheduler, make_scheduler, read_head, write_head)

# the public names of this module (load_layout, check_pipeline_folder, load_scheduler: their home is pipeline_folder)
__all__ = ["GeoFacePipeline", "GeoFacePipelineOutput", "PipelineError", "SCHEDULERS", "check_pipeline_folder",
           "head_info_of", "load_layout", "load_scheduler", "make_scheduler"]


@dataclass
class GeoFacePipelineOutput(BaseOutput):
    images: np.ndarray              # (N, S, S, 3) uint8 RGB generated target views
    cameras: list                   # N target `Camera`s at S×S (the views' cameras)
    posmap: np.ndarray | None       # (R, R, 3) float32 generated canonical UV position map in [-1, 1]
    vertices: np.ndarray | None     # (V, 3) float32 metres, canonical head frame (None without layout / geometry)
    faces: np.ndarray | None        # (F, 3) int32 triangles of `vertices`
    reference: np.ndarray           # (n_ref, S, S, 3) uint8 the reference view(s) as the model saw them
    reference_cameras: list         # n_ref `Camera`s at S×S


def head_info_of(model, gutter: int = 4) -> dict:
    """JSON description of a `HeadModel` stored with the pipeline (gutter = the `uv` stage's bake gutter)."""
    return {"kind": model.kind, "n_shape": int(model.n_shape), "n_expr": int(model.n_expr),
            "n_vertices": int(model.n_vertices), "n_faces": int(model.n_faces), "gutter": int(gutter)}


class GeoFacePipeline(DiffusionPipeline):
    """Reference view(s) + target cameras -> target views, UV position map, mesh. See the module docstring."""

    _optional_components = ["vae"]
    model_cpu_offload_seq = "transformer->vae"

    def __init__(self, transformer: GeoFaceTransformer, scheduler, vae=None, resolution: int = 64,
                 uv_resolution: int = 64):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        self.register_to_config(resolution=int(resolution), uv_resolution=int(uv_resolution))
        self.codec = LatentCodec(vae, transformer.geometry_norm())
        c, f = transformer.config, self.codec.downsample
        for what, size, p in (("resolution", resolution, c.patch_size * f), ("uv_resolution", uv_resolution, c.geo_patch_size * f)):
            if size % p:
                raise PipelineError(f"GeoFacePipeline: {what} {size} is not divisible by the model's patch {p} pixels")
        if c.latent_channels != self.codec.channels:
            raise PipelineError(f"GeoFacePipeline: the transformer expects {c.latent_channels} latent channels, the "
                                f"{'VAE' if vae is not None else 'pixel space'} gives {self.codec.channels}")
        self.uv_layout: UVLayout | None = None
        self.head_info: dict = {}

    # ------------------------------------------------------------------ construction / files
    @classmethod
    def build(cls, transformer: GeoFaceTransformer, *, layout: UVLayout | None = None, head_info: dict | None = None,
              resolution: int = 64, uv_resolution: int = 64, scheduler: str = "ddim", num_train_timesteps: int = 1000,
              beta_schedule: str = "squaredcos_cap_v2", vae=None, schedule: dict | None = None) -> "GeoFacePipeline":
        """A pipeline around a (trained) transformer; noise schedule = the training one: `schedule` =
        `noise_schedule.train_schedule(cfg.train)` (else num_train_timesteps + beta_schedule alone)."""
        schedule = schedule or dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
        sched = make_scheduler(scheduler, **schedule, prediction_type=scheduler_prediction_type(transformer.config.prediction_type),
                               clip_sample=vae is None)
        pipe = cls(transformer=transformer, scheduler=sched, vae=vae, resolution=resolution, uv_resolution=uv_resolution)
        pipe.set_head(layout, head_info or {})
        return pipe

    @classmethod
    def from_training(cls, transformer_dir: Path | str, cfg, *, layout: UVLayout | None = None,
                      head_info: dict | None = None, scheduler: str = "ddim") -> "GeoFacePipeline":
        """A pipeline from the `train` stage's output (models/geoface: transformer only) and the `GeoFaceConfig`
        it was trained with (tokens -> resolutions, train -> noise schedule, model.vae_path -> codec)."""
        path = Path(transformer_dir)
        if not (path / "config.json").is_file():
            raise PipelineError(f"{path}: no config.json (not a GeoFaceTransformer folder)")
        transformer = load_trained(path, cfg)  # the config's backbone; another backbone's folder is refused
        vae_path = vae_path_of(cfg)
        vae = LatentCodec.from_path(vae_path).vae if vae_path else None
        return cls.build(transformer, layout=layout, head_info=head_info, resolution=cfg.tokens.resolution,
                         uv_resolution=cfg.tokens.uv_resolution, scheduler=scheduler, schedule=train_schedule(cfg.train),
                         vae=vae)

    def set_head(self, layout: UVLayout | None, head_info: dict) -> None:
        """The head model's UV layout (for posmap -> mesh) and a JSON-able description of the head model."""
        self.uv_layout, self.head_info = layout, dict(head_info)
        if layout is not None:
            self.head_info["layout_key"] = layout.key

    def use_scheduler(self, kind: str) -> None:
        """Switch between 'ddim' and 'euler' keeping the noise schedule."""
        if kind not in SCHEDULERS:
            raise PipelineError(f"scheduler {kind!r}: choose one of {sorted(SCHEDULERS)}")
        self.scheduler = make_scheduler(kind, **schedule_of(self.scheduler),
                                        prediction_type=self.scheduler.config["prediction_type"], clip_sample=self.vae is None)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers layout + head/ (UV layout, head model info); written to a temp sibling, then renamed."""
        out = Path(save_directory)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(out)
        super().save_pretrained(str(tmp), **kwargs)
        write_head(tmp, self.uv_layout, self.head_info)
        replace_dir(tmp, out, kind="pipeline")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "GeoFacePipeline":
        """Load a folder written by `save_pretrained` (local only, nothing is downloaded, no pickle is read): its
        JSON files are checked first (`check_pipeline_folder`, `folder_scheduler`), the transformer's weights by its
        own `from_pretrained` (`weights.load_model_folder`)."""
        path = Path(pretrained_model_name_or_path)
        if not os.path.lexists(path / "model_index.json"):
            raise PipelineError(f"{path}: not a GeoFace pipeline folder (no model_index.json); a bare transformer "
                                f"folder (config.json + weights) needs GeoFacePipeline.build")
        index = check_pipeline_folder(path)
        if index.get("vae", [None])[0] is not None and "vae" not in kwargs:  # its config checked, safetensors only
            kwargs["vae"] = LatentCodec.from_path(path / "vae").vae
        if "scheduler" not in kwargs:
            kwargs["scheduler"] = folder_scheduler(path, index)
        kwargs.update(local_files_only=True, use_safetensors=True)
        pipe = super().from_pretrained(str(path), **kwargs)
        pipe.set_head(*read_head(path))
        return pipe

    # ------------------------------------------------------------------ inference
    def _views(self, images: list[np.ndarray], cams: list[Camera]) -> tuple[torch.Tensor, list[Camera]]:
        """Reference images (H,W,3) uint8 + their cameras -> (n_ref,3,S,S) in [-1,1] and cameras at S×S."""
        S = self.config.resolution
        out, out_cams = [], []
        for i, (img, cam) in enumerate(zip(images, cams)):
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise PipelineError(f"reference image {i}: expected (H, W, 3) uint8 RGB, got {img.dtype} {img.shape}")
            if (img.shape[1], img.shape[0]) != (cam.width, cam.height):
                raise PipelineError(f"reference image {i} is {img.shape[1]}×{img.shape[0]} but its camera "
                                    f"{cam.name!r} is {cam.width}×{cam.height}")
            if img.shape[:2] != (S, S):
                img = cv2.resize(img, (S, S), interpolation=cv2.INTER_AREA if img.shape[0] > S else cv2.INTER_CUBIC)
            out.append(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1)
            out_cams.append(cam.resized(S, S))
        return torch.stack(out), out_cams

    def _predict(self, ref: torch.Tensor | None, app: torch.Tensor, geo: torch.Tensor | None, t: torch.Tensor,
                 plucker: torch.Tensor) -> torch.Tensor:
        """One model call -> flat prediction (1, P) for [targets | geometry]. ref (1,n_ref,C,h,w) or None (drop)."""
        n_ref = 0 if ref is None else ref.shape[1]
        x = app if ref is None else torch.cat([ref, app], 1)
        Fa, Ft = x.shape[1], app.shape[1]
        nf = Fa + int(geo is not None)
        steps = torch.cat([torch.zeros(n_ref), t.float().reshape(1).cpu().expand(nf - n_ref)]).to(x.device)[None]
        cond = torch.cat([torch.ones(n_ref), torch.zeros(Ft)]).to(x.device)[None]
        out = self.transformer(app=x, timesteps=steps, plucker=plucker[:, -Fa:], app_cond=cond, geo=geo)
        parts = [out.app[:, n_ref:].flatten(1)] + ([out.geo.flatten(1)] if geo is not None else [])
        return torch.cat(parts, 1)

    def _preconditioned_x0(self, x_t: torch.Tensor, f: torch.Tensor, t) -> torch.Tensor:
        """x̂0 = c_skip·x_t + c_out·F (edm, sample_skip) at the scheduler's current noise level (VP x_t: Euler's
        scaled input)."""
        s = self.scheduler
        if hasattr(s, "sigmas"):  # Euler: ᾱ of the current step from its VE sigma
            ab = 1 / (1 + s.sigmas[s.step_index].double() ** 2)
        else:
            ab = s.alphas_cumprod[int(t)].double()
        return precondition(self.transformer.config.prediction_type, ab, x_t, f,
                            float(getattr(self.transformer.config, "sigma_data", 0.5)))

    @torch.no_grad()
    def __call__(self, reference_image: np.ndarray | list[np.ndarray], reference_camera: Camera | list[Camera],
                 target_cameras: list[Camera], num_inference_steps: int = 25, guidance_scale: float = 1.0,
                 seed: int | None = 0, generator: torch.Generator | None = None, mesh: bool = True,
                 return_dict: bool = True) -> GeoFacePipelineOutput | tuple:
        """reference_image (H,W,3) uint8 RGB (or a list of them) with its `Camera` (or a list); target_cameras:
        N `Camera`s (any size; K is rescaled to the model resolution S). seed (or a `generator`, on any device) fixes the
        noise (seed None: a fresh random seed). mesh: also turn the generated UV position map into vertices (needs the UV layout)."""
        refs = reference_image if isinstance(reference_image, (list, tuple)) else [reference_image]
        ref_cams = reference_camera if isinstance(reference_camera, (list, tuple)) else [reference_camera]
        if len(refs) != len(ref_cams) or not refs:
            raise PipelineError(f"{len(refs)} reference image(s) for {len(ref_cams)} camera(s)")
        if not target_cameras or not all(isinstance(c, Camera) for c in [*ref_cams, *target_cameras]):
            raise PipelineError("target_cameras must be a non-empty list of flame_fitting.geometry.camera.Camera (and so must "
                                "the reference camera(s))")
        if int(num_inference_steps) < 1 or guidance_scale < 0:
            raise PipelineError(f"num_inference_steps must be >= 1 and guidance_scale >= 0, got "
                                f"{num_inference_steps}, {guidance_scale}")
        device, dtype = self._execution_device, self.transformer.dtype  # the GPU also under model CPU offload
        S, R, f = self.config.resolution, self.config.uv_resolution, self.codec.downsample
        geo_on = bool(self.transformer.config.geometry_stream)
        ref_px, ref_cams = self._views(refs, ref_cams)
        tgt_cams = [c.resized(S, S) for c in target_cameras]
        ref_lat = self.codec.encode(ref_px.to(device, dtype))[None]                  # (1, n_ref, C, h, w)
        C, h, w = ref_lat.shape[2:]
        cams = ref_cams + tgt_cams
        K = torch.as_tensor(np.stack([c.K for c in cams]))[None]
        w2c = torch.as_tensor(np.stack([c.world_to_cam for c in cams]))[None]
        plucker = plucker_rays(K, w2c, (S, S), (h, w), ref=0,
                               camera_scale=self.transformer.config.camera_scale).to(device, dtype)  # (1, V, 6, h, w)

        # initial noise: targets then geometry, one flat vector per sample (schedulers act elementwise)
        if generator is None:
            generator = torch.Generator("cpu")
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        Ft = len(tgt_cams)
        app_shape, geo_shape = (1, Ft, C, h, w), (1, C, R // f, R // f)
        n_app = int(np.prod(app_shape))
        n_geo = int(np.prod(geo_shape)) if geo_on else 0
        x = torch.randn((1, n_app + n_geo), generator=generator, dtype=torch.float32,
                        device=generator.device).to(device, dtype)  # drawn where the generator is (CPU: any machine)
        self.scheduler.set_timesteps(int(num_inference_steps), device=device)
        x = x * self.scheduler.init_noise_sigma

        def split(v):
            return v[:, :n_app].reshape(app_shape), (v[:, n_app:].reshape(geo_shape) if geo_on else None)

        for t in self.progress_bar(self.scheduler.timesteps):
            xin = self.scheduler.scale_model_input(x, t)
            app, geo = split(xin)
            eps = self._predict(ref_lat, app, geo, t, plucker)
            if guidance_scale != 1.0:
                eps_u = self._predict(None, app, geo, t, plucker)
                eps = eps_u + guidance_scale * (eps - eps_u)
            if self.transformer.config.prediction_type in PRECONDITIONED:  # the scheduler is told "sample": give it x̂0
                eps = self._preconditioned_x0(xin, eps, t)
            x = self.scheduler.step(eps, t, x, generator=generator).prev_sample

        app, geo = split(x)
        views = self.codec.decode(app[0]).float().cpu()                              # (N, 3, S, S) in [-1, 1]
        images = ((views.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        ref_u8 = ((ref_px.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        posmap = verts = faces = None
        if geo_on:
            posmap = self.codec.decode_geometry(geo).float().cpu()[0].permute(1, 2, 0).contiguous().numpy()  # (R, R, 3)
            if mesh and self.uv_layout is not None:
                with torch_threads():
                    verts = posmap_to_vertices(posmap, self.uv_layout, gutter=int(self.head_info.get("gutter", 4)))
                faces = self.uv_layout.faces
        out = GeoFacePipelineOutput(images=images, cameras=tgt_cams, posmap=posmap, vertices=verts, faces=faces,
                                    reference=ref_u8, reference_cameras=ref_cams)
        return out if return_dict else (images, tgt_cams, posmap, verts, faces)
