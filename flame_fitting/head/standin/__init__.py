"""geoface's stand-in head model: a seeded, FLAME-layout head built from MediaPipe's face mesh.

The real FLAME model is licence-gated; this package builds a replacement with the same files
and semantics (see `build.py`), loaded by the same code (smplx's FLAME layer). It is NOT FLAME.
"""
from .build import build_standin

__all__ = ["build_standin"]
