"""Render synthetic multi-view captures with full ground truth, in the canonical capture format.

    from pipelines.synthetic import SyntheticConfig, generate
    summary = generate(Path("data/head_model"), Path("data/captures"), SyntheticConfig())

Per subject: one camera rig (cameras.json), one background per camera, one composed texture;
per frame: the posed head (HeadModel), one `render_mesh` call for all views (the fragments it
returns are the exact pixel→surface map of the images), then the writes: images + masks through
`CaptureWriter.add_image` (manifest extras `yaw_deg`, `pitch_deg`, `gt_path`), `gt.npz` and
`gt_raster.npz`. Writes run on a small thread pool while the next frame renders (PNG encoding
and deflate release the GIL). A frame whose rendering fails is recorded in capture.json
`failures` (subject, frame, reason) and the run goes on; the capture appears atomically.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.spatial.transform import Rotation

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.threads import torch_threads
from flame_fitting.geometry.camera import Camera, stack_cameras
from flame_fitting.formats.capture import CaptureWriter, frame_dir
from flame_fitting.head.flame_io import load_flame_folder
from flame_fitting.head.flame_spec import HeadModelError
from flame_fitting.head.head_model import HeadModel
from flame_fitting.geometry.raster import Fragments, RasterError
from flame_fitting.geometry.render import Lighting, render_mesh
from pipelines.synthetic import groundtruth as gt
from pipelines.synthetic.appearance import compose_texture
from pipelines.synthetic.backgrounds import make_backgrounds
from pipelines.synthetic.config import SyntheticConfig
from pipelines.synthetic.rig import HeadFrame, head_frame, make_rig, view_angles
from pipelines.synthetic.sampling import FrameSpec, SubjectSpec, sample_subjects
from pipelines.synthetic.texture import FaceWarp, build_face_warp

RENDER_ERRORS = (RasterError, ValueError, FloatingPointError, RuntimeError, IndexError)


class FrameError(GeofaceError, RuntimeError):
    """A frame that cannot be rendered (recorded in capture.json `failures`)."""


@dataclass
class Scene:
    """What stays fixed over one subject's frames."""

    subject: SubjectSpec
    cams: list[Camera]
    K: np.ndarray  # (N,3,3)
    w2c: np.ndarray  # (N,4,4)
    backgrounds: np.ndarray  # (N,H,W,3) float32
    texture: np.ndarray  # (R,R,3) float32 sRGB
    head: HeadFrame  # neutral head centre / height (the rig's aim)
    rest_joints: np.ndarray  # (5,3) joints of the neutral identity
    buffer: np.ndarray  # (N,H,W,3) float32 render target reused by every frame (fewer page faults)


@dataclass
class FrameResult:
    rgb: np.ndarray  # (N,H,W,3) uint8
    mask: np.ndarray  # (N,H,W) uint8 (255 = head)
    gt: dict  # arrays of gt.npz
    frags: Fragments  # the rendered pixel→surface map (stored as gt_raster.npz)
    yaw: np.ndarray  # (N,) degrees, camera relative to the head's facing direction
    pitch: np.ndarray  # (N,)


def load_head(head_model_dir: Path, cfg: SyntheticConfig) -> tuple[HeadModel, list[str]]:
    """The head model with cfg.n_shape / n_expr components (None = all it provides) and its expression names."""
    info = load_flame_folder(head_model_dir)
    n_shape = info.n_shape if cfg.n_shape is None else cfg.n_shape
    n_expr = info.n_expr if cfg.n_expr is None else cfg.n_expr
    if n_shape > info.n_shape or n_expr > info.n_expr:
        raise HeadModelError(f"{head_model_dir}: captures.synthetic asks for n_shape={n_shape}, n_expr={n_expr}, "
                             f"the head model provides {info.n_shape}, {info.n_expr}")
    return HeadModel.from_folder(head_model_dir, n_shape, n_expr), list(info.meta.get("expr_names", []))


@torch.no_grad()
def pose(model: HeadModel, params: dict) -> dict[str, np.ndarray]:
    """Posed head: vertices (V,3), joints (5,3), mp landmarks (L,3), iBUG-68 (68,3) or None.
    Runs on one torch thread: for a batch of one that is ~15× faster than torch's thread pool
    competing with numba's threads and the writers."""
    t = {k: torch.as_tensor(np.asarray(v, np.float32))[None] for k, v in params.items()}
    with torch_threads(1):
        out = model(**t)
    return {"vertices": out.vertices[0].numpy(), "joints": out.joints[0].numpy(),
            "lmk_mp": out.landmarks_mp[0].numpy(),
            "lmk68": None if out.landmarks_68 is None else out.landmarks_68[0].numpy()}


def make_scene(model: HeadModel, warp: FaceWarp, subject: SubjectSpec, cfg: SyntheticConfig) -> Scene:
    neutral = pose(model, {"shape": subject.shape})
    li = model.mp_landmark_indices.numpy()
    v = neutral["vertices"]
    chin = neutral["lmk_mp"][li == 152][0] if (li == 152).any() else v[v[:, 1].argmin()]  # MediaPipe 152: chin
    head = head_frame(v, chin)
    rig = make_rig(cfg.cameras, head, cfg.resolution, np.random.default_rng(subject.rig_seed), cfg.yaw_range_deg,
                   cfg.pitch_range_deg, cfg.camera_rows, cfg.distance_m, cfg.head_fill, cfg.roll_deg,
                   cfg.principal_jitter)
    cams = list(rig.values())
    K, w2c = stack_cameras(cams)
    return Scene(subject=subject, cams=cams, K=K, w2c=w2c,
                 backgrounds=make_backgrounds(len(cams), cfg.resolution, cfg.backgrounds, subject.background_seed),
                 texture=compose_texture(warp, subject.appearance), head=head, rest_joints=neutral["joints"],
                 buffer=np.empty((len(cams), cfg.resolution, cfg.resolution, 3), np.float32))


def head_rotation(params: dict) -> np.ndarray:
    """World rotation (3,3) of the head: global orientation then neck."""
    return (Rotation.from_rotvec(params["global_orient"]) * Rotation.from_rotvec(params["neck_pose"])).as_matrix()


def posed_head_centre(scene: Scene, params: dict, rot: np.ndarray) -> np.ndarray:
    """The neutral head centre carried along by the root and neck rotations and the translation."""
    j0, j1 = scene.rest_joints[0].astype(np.float64), scene.rest_joints[1].astype(np.float64)
    r_g = Rotation.from_rotvec(params["global_orient"]).as_matrix()
    return rot @ (scene.head.centre - j1) + r_g @ (j1 - j0) + j0 + params["transl"]


def render_frame(model: HeadModel, scene: Scene, spec: FrameSpec, cfg: SyntheticConfig) -> FrameResult:
    """Render all views of one frame and compute its ground truth (raises on a bad frame)."""
    p = pose(model, spec.params)
    verts = p["vertices"]
    if not np.isfinite(verts).all():
        raise FrameError("the posed head has non-finite vertices")
    faces = model.faces.numpy().astype(np.int32)
    light = spec.light
    lights = [Lighting(direction=light.direction, ambient=light.ambient, diffuse=light.diffuse)] * len(scene.cams)
    tex = scene.texture * light.tint[None, None] ** (1 / 2.2)  # light colour (linear gains) on the sRGB albedo
    rgb, frags = render_mesh(verts, faces, scene.K, scene.w2c, cfg.resolution, cfg.resolution, lights, texture=tex,
                             uv=model.uv_coords.numpy(), uv_faces=model.uv_faces.numpy(), background=scene.backgrounds,
                             out=scene.buffer)
    hit = frags.face_id >= 0
    if not hit.any():
        raise FrameError("the head is not visible in any view")
    uv, vis = gt.landmarks_2d(p["lmk_mp"], model.mp_face_idx.numpy(), verts, faces, scene.cams, frags.depth,
                              cfg.visibility_tol_m)
    mp2d, mpvis = gt.mediapipe_order(uv, vis, model.mp_landmark_indices.numpy())
    arrays = {"cameras": np.array([c.name for c in scene.cams]),
              **{k: np.asarray(v, np.float32) for k, v in spec.params.items()},
              "vertices": verts.astype(np.float32), "lmk_mp_2d": mp2d, "lmk_mp_visible": mpvis,
              "kind": np.array(spec.kind), "light_direction": light.direction.astype(np.float32),
              "light_ambient": np.float32(light.ambient), "light_diffuse": np.float32(light.diffuse),
              "light_kelvin": np.float32(light.kelvin)}
    if p["lmk68"] is not None:
        arrays["lmk68_2d"], arrays["lmk68_visible"] = gt.landmarks_2d(
            p["lmk68"], model.lmk68_face_idx.numpy(), verts, faces, scene.cams, frags.depth, cfg.visibility_tol_m)
    rot = head_rotation(spec.params)
    yaw, pitch = view_angles(np.stack([c.center for c in scene.cams]), posed_head_centre(scene, spec.params, rot), rot)
    n, h, w = hit.shape
    rgb8 = cv2.convertScaleAbs(rgb.reshape(n * h, w, 3), alpha=255.0).reshape(n, h, w, 3)  # rounds, saturates
    return FrameResult(rgb=rgb8, mask=hit.view(np.uint8) * np.uint8(255), gt=arrays, frags=frags, yaw=yaw, pitch=pitch)


def submit_writes(pool: ThreadPoolExecutor, writer: CaptureWriter, scene: Scene, spec: FrameSpec, res: FrameResult,
                  sequence: str) -> list[Future]:
    """Queue the image / mask / ground-truth writes of one rendered frame."""
    subj = scene.subject
    rel = frame_dir(subj.name, sequence, spec.frame)
    (writer.work_dir / rel).mkdir(parents=True, exist_ok=True)
    jobs = [pool.submit(gt.write_npz, writer.work_dir / rel / "gt.npz", res.gt, None),
            pool.submit(gt.write_raster, writer.work_dir / rel / "gt_raster.npz", res.frags)]
    for i, cam in enumerate(scene.cams):
        jobs.append(pool.submit(writer.add_image, subj.name, sequence, spec.frame, cam.name, res.rgb[i], subj.split,
                                res.mask[i], yaw_deg=float(res.yaw[i]), pitch_deg=float(res.pitch[i]),
                                gt_path=f"{rel}/gt.npz"))
    return jobs


def write_capture(model: HeadModel, warp: FaceWarp, subjects: list[SubjectSpec], out: Path, cfg: SyntheticConfig,
                  progress: bool = True, info: dict | None = None) -> dict:
    """Render and write every frame of `subjects` to the capture at `out` (atomically). Returns the summary."""
    from tqdm import tqdm

    failures, n_frames, t_render = [], 0, 0.0
    meta = {"generator": "pipelines.synthetic", "config": asdict(cfg), "ground_truth": True,
            "texture_photo": warp.photo_name, **(info or {}),
            "subjects": {s.name: {"split": s.split, "appearance": s.appearance.to_dict()} for s in subjects}}
    bar = tqdm(total=sum(len(s.frames) for s in subjects), desc="synthetic frames", disable=not progress)
    with CaptureWriter(out, source="synthetic", info=meta) as writer, ThreadPoolExecutor(cfg.workers) as pool:
        pending: list[Future] = []
        for subj in subjects:
            scene = make_scene(model, warp, subj, cfg)
            writer.set_cameras(subj.name, cfg.sequence, {c.name: c for c in scene.cams})
            for spec in subj.frames:
                t0 = time.perf_counter()
                try:
                    res = render_frame(model, scene, spec, cfg)
                except RENDER_ERRORS as e:
                    failures.append({"subject": subj.name, "frame": spec.frame, "reason": f"{type(e).__name__}: {e}"})
                    bar.update(1)
                    continue
                t_render += time.perf_counter() - t0
                for f in pending:  # at most one frame's writes in flight: bounded memory
                    f.result()
                pending = submit_writes(pool, writer, scene, spec, res, cfg.sequence)
                n_frames += 1
                bar.update(1)
        for f in pending:
            f.result()
        bar.close()
        if n_frames == 0:
            raise FrameError(f"{out}: every frame failed to render; first failure: {failures[0] if failures else None}")
        writer.info["failures"] = failures
        n_images = len(writer.rows)
    return {"n_subjects": len(subjects), "n_frames": n_frames, "n_images": n_images, "n_failures": len(failures),
            "failures": failures, "render_s": round(t_render, 3)}


def generate(head_model_dir: Path | str, out: Path | str, cfg: SyntheticConfig, progress: bool = True) -> dict:
    """Synthetic captures from the head model at `head_model_dir` into `out` (see the module docstring).

    Returns a summary: n_subjects, n_frames, n_images, n_failures, failures [{subject, frame, reason}],
    render_s and texture_s (the one-off photo warp)."""
    cfg.validate()
    head_model_dir = Path(head_model_dir)
    model, expr_names = load_head(head_model_dir, cfg)
    subjects = sample_subjects(cfg, model.n_shape, model.n_expr, expr_names)
    t0 = time.perf_counter()
    warp = build_face_warp(head_model_dir, cfg.texture_resolution)
    texture_s = time.perf_counter() - t0
    summary = write_capture(model, warp, subjects, Path(out), cfg, progress,
                            info={"head_model": str(head_model_dir), "head_model_kind": model.kind})
    return {**summary, "texture_s": round(texture_s, 3)}
