"""The head model as a differentiable torch module: FLAME (real 2020/2023 or the stand-in) via smplx.

`HeadModel.from_folder(path, n_shape, n_expr)` validates the folder (flame_io), builds
`smplx.FLAME` on it for linear blend skinning, and computes landmarks itself from the folder's
embeddings with `landmarks_embed.interpolate_landmarks`. Everything the module holds is a buffer
(no nn.Parameters), so `.to(device)` moves it and optimisers only see the caller's tensors.

Parameters (FLAME frame: y up, face along +z, metres; rotations are axis-angle):
  shape (B, n_shape), expr (B, n_expr), global_orient (B, 3), neck_pose (B, 3), jaw_pose (B, 3),
  eye_pose (B, 6) = [left eye | right eye], transl (B, 3).
Joints (FLAME order): 0 root, 1 neck, 2 jaw, 3 left eye, 4 right eye.

MediaPipe embedding: `mp_face_idx` / `mp_bary` are the folder's `mediapipe_landmark_embedding.npz`
(what the synthetic generator textures through). When the folder also has
`mediapipe_landmark_embedding_calibrated.npz` (written by `flame_fitting.landmarks.calibration`: the
surface points MediaPipe actually reports on renders of this model), it is validated and held as
`mp_face_idx_calibrated` / `mp_bary_calibrated`; `with_mediapipe_embedding(calibrated=True)` returns a
view of the model that uses it (the fitter does so with `FitConfig.calibrated_embedding`).
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import smplx
import torch
from torch import Tensor, nn

from flame_fitting.head.flame_assets import Embedding, load_mediapipe_embedding
from flame_fitting.head.flame_io import FlameFolder, load_flame_folder, write_smplx_copy
from flame_fitting.head.flame_spec import HeadModelError
from flame_fitting.head.landmarks_embed import interpolate_landmarks

CALIBRATED_EMBEDDING = "mediapipe_landmark_embedding_calibrated.npz"   # beside the original, same keys
CALIBRATION_JSON = "mediapipe_landmark_embedding_calibrated.json"      # its provenance


def load_calibrated_embedding(info: FlameFolder) -> Embedding | None:
    """The folder's calibrated MediaPipe embedding (None when absent), validated like the original and
    required to cover the same MediaPipe ids in the same order."""
    path = info.path / CALIBRATED_EMBEDDING
    if not path.exists():
        return None
    emb = load_mediapipe_embedding(path, info.n_faces)
    if not (emb.landmark_indices.shape == info.mediapipe.landmark_indices.shape
            and (emb.landmark_indices == info.mediapipe.landmark_indices).all()):
        raise HeadModelError(f"{path}: key 'landmark_indices' differs from the one of mediapipe_landmark_embedding.npz "
                             f"(a calibration of another embedding); re-run the calibration or delete the file")
    return emb


def check_device(device) -> torch.device:
    """`device` as a torch.device; HeadModelError for a name torch does not know or a CUDA device this machine does
    not have (torch's own error comes later, from deep inside `.to`)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise HeadModelError(f"device {device!r}: not a torch device (use 'cpu', 'cuda' or 'cuda:N')") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        n = torch.cuda.device_count()
        raise HeadModelError(f"device {device!r}: PyTorch sees {n} CUDA GPU(s) on this machine; use 'cpu'"
                             + (f" or cuda:0 … cuda:{n - 1}" if n else ""))
    return dev


@dataclass
class HeadOutput:
    vertices: Tensor             # (B, V, 3)
    joints: Tensor               # (B, 5, 3)
    landmarks_mp: Tensor         # (B, L, 3) MediaPipe embedding, in `mp_landmark_indices` order
    landmarks_68: Tensor | None  # (B, 68, 3) when the folder has ibug68_landmark_embedding.npz


@contextlib.contextmanager
def _smplx_model_dir(info: FlameFolder):
    """A temporary folder smplx's FLAME can read, written from the validated arrays (`write_smplx_copy`):
    smplx unpickles with plain `pickle.load`, so it never reads the user's files themselves."""
    with tempfile.TemporaryDirectory(prefix="geoface_flame_") as tmp:
        write_smplx_copy(info, Path(tmp))
        yield Path(tmp)


class HeadModel(nn.Module):
    """FLAME-layout head model. Build with `HeadModel.from_folder`; all tensors are buffers."""

    def __init__(self, flame: smplx.FLAME, info: FlameFolder, n_shape: int, n_expr: int, dtype=torch.float32):
        super().__init__()
        self.flame = flame
        self.kind, self.n_shape, self.n_expr = info.kind, n_shape, n_expr
        self.n_vertices, self.n_faces, self.folder = info.n_vertices, info.n_faces, info.path
        t = info.template
        self.register_buffer("faces", flame.faces_tensor.clone())                              # (F, 3) long
        self.register_buffer("uv_coords", torch.as_tensor(t.uv, dtype=dtype))                  # (T, 2)
        self.register_buffer("uv_faces", torch.as_tensor(t.uv_faces, dtype=torch.long))        # (F, 3)
        mp = info.mediapipe
        self.register_buffer("mp_face_idx", torch.as_tensor(mp.face_idx, dtype=torch.long))    # (L,)
        self.register_buffer("mp_bary", torch.as_tensor(mp.bary, dtype=dtype))                 # (L, 3)
        self.register_buffer("mp_landmark_indices", torch.as_tensor(mp.landmark_indices, dtype=torch.long))  # (L,)
        self.register_buffer("mp_face_idx_original", self.mp_face_idx)
        self.register_buffer("mp_bary_original", self.mp_bary)
        cal = load_calibrated_embedding(info)
        self.register_buffer("mp_face_idx_calibrated", None if cal is None else torch.as_tensor(cal.face_idx,
                                                                                                 dtype=torch.long))
        self.register_buffer("mp_bary_calibrated", None if cal is None else torch.as_tensor(cal.bary, dtype=dtype))
        self.mp_embedding = "original"  # which embedding mp_face_idx / mp_bary hold: "original" | "calibrated"
        ib = info.ibug68
        self.register_buffer("lmk68_face_idx", None if ib is None else torch.as_tensor(ib.face_idx, dtype=torch.long))
        self.register_buffer("lmk68_bary", None if ib is None else torch.as_tensor(ib.bary, dtype=dtype))

    @classmethod
    def from_folder(cls, path: Path | str, n_shape: int = 50, n_expr: int = 30, device="cpu",
                    dtype: torch.dtype = torch.float32) -> HeadModel:
        """Validate the head model folder and load it. Refuses `n_shape` / `n_expr` beyond what the
        model provides (head_model.json `n_shape` / `n_expr`; real FLAME without it: 300 / 100)."""
        check_device(device)
        return cls.from_info(load_flame_folder(path), n_shape, n_expr, device, dtype)

    @classmethod
    def from_info(cls, info: FlameFolder, n_shape: int = 50, n_expr: int = 30, device="cpu",
                  dtype: torch.dtype = torch.float32) -> HeadModel:
        """`from_folder` of a folder validated already (`load_flame_folder`)."""
        for name, want, have in (("n_shape", n_shape, info.n_shape), ("n_expr", n_expr, info.n_expr)):
            if isinstance(want, bool) or not isinstance(want, int) or not 0 <= want <= have:
                raise HeadModelError(f"{info.path}: {name}={want!r} requested, but this {info.kind} head model provides "
                                     f"{have} ({'head_model.json' if info.meta else 'real FLAME default'}); "
                                     f"use an integer in [0, {have}]")
        with _smplx_model_dir(info) as model_dir:
            try:
                flame = smplx.FLAME(model_path=str(model_dir), gender="neutral", ext="npz",
                                    num_betas=n_shape, num_expression_coeffs=n_expr, use_face_contour=False,
                                    batch_size=1, dtype=dtype, create_betas=False, create_global_orient=False,
                                    create_body_pose=False, create_transl=False, create_expression=False,
                                    create_neck_pose=False, create_jaw_pose=False, create_leye_pose=False,
                                    create_reye_pose=False)
            except Exception as e:  # noqa: BLE001 - validated already; report smplx's complaint with the file
                raise HeadModelError(f"{info.model_file}: smplx could not load it ({type(e).__name__}: {e}); try "
                                     f"geoface head-model convert {info.model_file} "
                                     f"{info.path / 'FLAME_NEUTRAL.npz'}") from None
        return cls(flame, info, n_shape, n_expr, dtype).to(device)

    @property
    def has_calibrated_embedding(self) -> bool:
        return self.mp_face_idx_calibrated is not None

    def with_mediapipe_embedding(self, calibrated: bool) -> HeadModel:
        """This model with the original (False) or calibrated (True) MediaPipe embedding in `mp_face_idx` /
        `mp_bary` (and so in `landmarks_mp`): a shallow view sharing every other buffer and the smplx module
        (move the model with `.to` before taking views); `self` when it already uses that embedding. Raises
        HeadModelError when the calibrated one is asked and the folder has none (see `has_calibrated_embedding`)."""
        want = "calibrated" if calibrated else "original"
        if want == self.mp_embedding:
            return self
        if calibrated and not self.has_calibrated_embedding:
            raise HeadModelError(f"{self.folder}: no {CALIBRATED_EMBEDDING} (run flame_fitting.landmarks.calibration "
                                 f"or the head_model stage with calibrate_landmarks)")
        new = copy.copy(self)
        new._buffers = dict(self._buffers)
        new._buffers["mp_face_idx"] = self._buffers[f"mp_face_idx_{want}"]
        new._buffers["mp_bary"] = self._buffers[f"mp_bary_{want}"]
        new.mp_embedding = want
        return new

    @property
    def v_template(self) -> Tensor:
        return self.flame.v_template  # (V, 3)

    def _params(self, **given: Tensor | None) -> dict[str, Tensor]:
        widths = {"shape": self.n_shape, "expr": self.n_expr, "global_orient": 3, "neck_pose": 3, "jaw_pose": 3,
                  "eye_pose": 6, "transl": 3}
        ref = self.flame.v_template
        for name, t in given.items():
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise HeadModelError(f"HeadModel: {name} must be a torch.Tensor (B, {widths[name]}), got "
                                     f"{type(t).__name__} (convert with torch.as_tensor)")
            if t.device != ref.device:
                raise HeadModelError(f"HeadModel: {name} is on {t.device}, the model on {ref.device}; move one "
                                     f"(tensor.to(device) or model.to(device))")
        batch = {t.shape[0] for t in given.values() if t is not None and t.ndim == 2}
        if len(batch) > 1:
            raise HeadModelError(f"HeadModel: parameters disagree on the batch size: "
                                 f"{ {k: tuple(t.shape) for k, t in given.items() if t is not None} }")
        B = batch.pop() if batch else 1
        out = {}
        for name, t in given.items():
            if t is None:
                t = ref.new_zeros(B, widths[name])
            elif t.shape != (B, widths[name]):
                raise HeadModelError(f"HeadModel: {name} must be ({B}, {widths[name]}), got {tuple(t.shape)}")
            out[name] = t.to(ref.dtype)
        return out

    def forward(self, shape: Tensor | None = None, expr: Tensor | None = None, global_orient: Tensor | None = None,
                neck_pose: Tensor | None = None, jaw_pose: Tensor | None = None, eye_pose: Tensor | None = None,
                transl: Tensor | None = None) -> HeadOutput:
        """Posed head: torch tensors on the model's device (any real dtype; computed in the model's, float32), metres
        and axis-angle radians, FLAME frame: shape (B, n_shape), expr (B, n_expr), global_orient / neck_pose /
        jaw_pose / transl (B, 3), eye_pose (B, 6) = [left | right]. Missing parameters are zeros; the batch size
        comes from the given ones (else 1). -> HeadOutput: vertices (B, V, 3), joints (B, 5, 3), landmarks_mp
        (B, L, 3), landmarks_68 (B, 68, 3) or None. HeadModelError for a non-tensor, another device or a shape that
        is not (B, width)."""
        p = self._params(shape=shape, expr=expr, global_orient=global_orient, neck_pose=neck_pose,
                         jaw_pose=jaw_pose, eye_pose=eye_pose, transl=transl)
        out = self.flame(betas=p["shape"], expression=p["expr"], global_orient=p["global_orient"],
                         neck_pose=p["neck_pose"], jaw_pose=p["jaw_pose"], leye_pose=p["eye_pose"][:, :3],
                         reye_pose=p["eye_pose"][:, 3:], transl=p["transl"])
        verts = out.vertices
        lmk68 = None
        if self.lmk68_face_idx is not None:
            lmk68 = interpolate_landmarks(verts, self.faces, self.lmk68_face_idx, self.lmk68_bary)
        return HeadOutput(vertices=verts, joints=out.joints[:, :5],
                          landmarks_mp=interpolate_landmarks(verts, self.faces, self.mp_face_idx, self.mp_bary),
                          landmarks_68=lmk68)

    def canonical(self, shape: Tensor, expr: Tensor, jaw_pose: Tensor, neck_pose: Tensor | None = None,
                  eye_pose: Tensor | None = None) -> Tensor:
        """Identity + expression + jaw (+ optional neck/eyes) with no global rotation or translation -> vertices
        (B, V, 3) metres (the input of `bake_posmap`, one row at a time). Shapes and checks as `forward`."""
        return self.forward(shape=shape, expr=expr, jaw_pose=jaw_pose, neck_pose=neck_pose, eye_pose=eye_pose).vertices

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, n_shape={self.n_shape}, n_expr={self.n_expr}, V={self.n_vertices}, "
                f"F={self.n_faces}, mediapipe_embedding={self.mp_embedding}")


def load_head_model(path: Path | str, n_shape: int | None = None, n_expr: int | None = None, device="cpu") -> HeadModel:
    """The head model folder at `path` (FLAME in smplx's layout or the stand-in; docs/contracts.md) validated and
    loaded as a `HeadModel` on `device` ("cpu", "cuda", "cuda:N" or a torch.device; float32) with the first `n_shape`
    identity and `n_expr` expression components (None: every component the folder provides). HeadModelError naming
    the file for a folder that is missing a file or holds a bad one, for more components than it has, or for a
    device this machine does not have."""
    check_device(device)  # before the folder is read
    info = load_flame_folder(path)
    return HeadModel.from_info(info, n_shape=info.n_shape if n_shape is None else n_shape,
                               n_expr=info.n_expr if n_expr is None else n_expr, device=device)
