"""The public API: every name of `geoface.__all__` resolves to the library object the stages use, with its
documentation, and `import geoface` itself loads no heavy library."""
import subprocess
import sys
from pathlib import Path

import geoface

REPO = Path(__file__).resolve().parents[2]


def test_every_public_name_resolves_with_a_docstring():
    for name in geoface.__all__:
        obj = getattr(geoface, name)
        assert obj is not None
        if callable(obj) and name != "__version__":
            assert (obj.__doc__ or "").strip(), f"geoface.{name} has no docstring"
    from flame_fitting.fit.fitter import fit_sequence
    assert geoface.fit_sequence is fit_sequence


def test_import_is_light():
    code = "import sys, geoface; print(sorted(m for m in ('torch', 'mediapipe', 'diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
