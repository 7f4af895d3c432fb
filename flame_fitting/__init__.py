"""Geometry of geoface: cameras and rasterising, the capture format, head models (FLAME or the stand-in),
MediaPipe landmarks, multi-view FLAME fitting, canonical UV position maps and pixel↔UV correspondences.

Rooms, bottom to top (docs/architecture.md; tests/test_layers.py keeps imports pointing downward):
`core` → `geometry` → `formats` → `head` → `landmarks` → `fit`; `uv` sits beside `fit` above `head`.
"""
