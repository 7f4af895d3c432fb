"""Where captures come from: one reader per dataset layout (NeRSemble v1 / v2 / benchmark / VHAP frames,
RenderMe-360, COLMAP, transforms.json, a plain folder) and the synthetic generator, all writing the one canonical
capture format of flame_fitting/formats/capture.py. Entry point: `registry.import_capture` (docs/sources.md)."""
