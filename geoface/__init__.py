"""geoface: consistent multi-view face generation with geometry-constrained diffusion (an open reproduction of
GeoFace, arXiv 2606.27659) and the geometry toolkit beneath it.

The public API for notebooks and scripts (each name is the library function the stages and the `geoface`
command use; `help(geoface.fit_sequence)` shows its documentation)::

    import geoface
    cap = geoface.load_capture("data/captures")                    # a capture in the canonical format
    head = geoface.load_head_model("data/head_model")              # FLAME (smplx layout) or the stand-in
    marks = geoface.detect_landmarks(cap)                          # MediaPipe, every image
    fit = geoface.fit_sequence(head, cap.cameras("synth000", "synthetic"), marks.for_sequence("synth000", "synthetic"))
    p = fit.params[fit.frames[0]].tensors()                        # the first fitted frame's FLAME parameters
    canonical = head.canonical(p["shape"], p["expr"], p["jaw_pose"], p["neck_pose"], p["eye_pose"])[0].detach().numpy()
    baked = geoface.bake_posmap(canonical, geoface.UVLayout.from_head_model(head))   # .posmap (256, 256, 3), .mask

Names are imported on first use, so `import geoface` stays fast (the command line starts without torch).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "load_capture": ("flame_fitting.formats.capture", "load_capture"),
    "Capture": ("flame_fitting.formats.capture", "Capture"),
    "import_capture": ("pipelines.registry", "import_capture"),
    "Camera": ("flame_fitting.geometry.camera", "Camera"),
    "load_head_model": ("flame_fitting.head.head_model", "load_head_model"),
    "HeadModel": ("flame_fitting.head.head_model", "HeadModel"),
    "detect_landmarks": ("flame_fitting.landmarks.capture", "detect_capture"),
    "load_landmarks": ("flame_fitting.formats.landmarks", "load_landmarks"),
    "FitConfig": ("flame_fitting.fit.config", "FitConfig"),
    "fit_sequence": ("flame_fitting.fit.fitter", "fit_sequence"),
    "fit_capture": ("flame_fitting.fit.capture", "fit_capture"),
    "load_sequence_fit": ("flame_fitting.formats.fits", "load_sequence_fit"),
    "UVLayout": ("flame_fitting.uv.bake", "UVLayout"),
    "bake_posmap": ("flame_fitting.uv.bake", "bake_posmap"),
    "posmap_to_vertices": ("flame_fitting.uv.sample", "posmap_to_vertices"),
    "compute_correspondences": ("flame_fitting.uv.correspondences", "compute_correspondences"),
    "GeoFacePipeline": ("geoface_model.pipeline", "GeoFacePipeline"),
    "load_pipeline": ("geoface_model.generate", "load_pipeline"),
    "generate_from_photo": ("geoface_model.generate", "generate_from_photo"),
    "export_3dgs": ("geoface_model.export", "export_3dgs"),
    "export_vhap": ("flame_fitting.formats.export_vhap", "export_vhap"),
    "export_nerfstudio": ("flame_fitting.formats.export_nerfstudio", "export_nerfstudio"),
    "GeofaceError": ("flame_fitting.core.errors", "GeofaceError"),
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'geoface' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
