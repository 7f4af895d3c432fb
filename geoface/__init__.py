"""geoface: consistent multi-view face generation with geometry-constrained diffusion (an open reproduction of
GeoFace, arXiv 2606.27659) and the geometry toolkit beneath it. The `geoface` command is `geoface.cli`."""
