"""Geometry without a head model: OpenCV cameras (`camera`), the numba rasteriser and its numpy reference
(`raster`, `raster_ref`), mesh rendering (`render`), mesh helpers (`meshes`), closest points and rays on
triangle meshes (`surface_points`)."""
