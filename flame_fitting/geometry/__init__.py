"""Geometry without a head model: OpenCV cameras (`camera`), the numba rasteriser (`raster`, its kernels in
`raster_kernels`) and its numpy reference (`raster_ref`), mesh rendering (`render`), mesh helpers (`meshes`),
closest points and rays on triangle meshes (`surface_points`)."""
