"""geoface: consistent multi-view face generation with geometry-constrained diffusion (an open reproduction of
GeoFace, arXiv 2606.27659) and the geometry toolkit beneath it. The `geoface` command is `geoface.cli`."""
__version__ = "0.1.0"  # the fallback of `geoface --version` when the distribution is not installed
