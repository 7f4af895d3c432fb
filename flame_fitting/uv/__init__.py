"""Canonical UV position maps: bake a head mesh into its UV layout, and turn a map back into a mesh.

A UV position map stores, at every texel of the head model's UV layout, the canonical (FLAME-frame,
no global rotation / translation) position of the surface point with that UV, normalised to [-1, 1]
by ONE fixed box (`BOX_CENTER`, `BOX_HALF`, see docs/uv_and_correspondences.md):

    normalised = (xyz_metres - BOX_CENTER) / BOX_HALF, clipped to [-1, 1] (clipped texels are counted)

Layout: `posmap (R, R, 3) float32`, texel (row r, col c) has centre u = (c+0.5)/R, v = 1-(r+0.5)/R
(OBJ convention, row 0 is v = 1; `raster.rasterize_uv`). `mask (R, R) bool` = texels covered by a
triangle (un-dilated validity). Texels of the `gutter` rings around the charts hold the chart's surface
extrapolated there, so bilinear lookups near seams stay on the chart.

Baking a frame = one gather + weighted sum over a per-layout texel table (`get_bake_table`, cached per
(layout, R, gutter)): covered texels use their (face, barycentric) from `rasterize_uv`; a gutter texel
(≤ `gutter` texels from a chart, found with a Euclidean distance transform) uses the face of its nearest
covered texel with barycentrics extrapolated to its own centre (its nearest texel's weights when that
would exceed `MAX_EXTRAPOLATION`). The nearest covered texel decides the chart, so charts need ≥ 2 texels
of free space between them for seam lookups to be exact. `_bake_reference` is the numpy version the numba
kernel is tested against.

Inverse: `posmap_to_vertices` (seam-aware bilinear samples at the template's per-corner UVs, a vertex's
UV copies averaged; `vertex_sampler`) and `posmap_to_points` (valid texels), both in metres;
`save_posmap` / `load_posmap` (files written atomically).

The package's modules: `bake` (layout, box, texel table, baking), `sample` (bilinear lookup, inverse),
`files` (the posmap npz: `save_posmap` / `load_posmap`), `correspondences` (pixel → UV per view, token targets),
`correspondence_files` (their npz: `save_correspondences` / `load_correspondences`), `checks` (self-checks),
`preview` (pictures). This `__init__` lists the public names.
"""
from __future__ import annotations

from flame_fitting.uv.bake import (BOX_CENTER, BOX_HALF, MAX_EXTRAPOLATION, BakedPosmap, BakeTable, UVError, UVLayout,
                                   bake_posmap, denormalize_points, get_bake_table, normalize_points)
from flame_fitting.uv.files import load_posmap, save_posmap
from flame_fitting.uv.sample import posmap_to_points, posmap_to_vertices, sample_bilinear, vertex_sampler

__all__ = ["BOX_CENTER", "BOX_HALF", "BakedPosmap", "UVError", "UVLayout", "bake_posmap", "normalize_points",
           "denormalize_points", "sample_bilinear", "posmap_to_vertices", "posmap_to_points",
           "save_posmap", "load_posmap", "get_bake_table", "BakeTable", "MAX_EXTRAPOLATION", "vertex_sampler"]
