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


def test_reading_captures_and_landmarks_loads_no_torch():
    """The readers of the API (a capture, its cameras, landmarks, the dataset importers) and the landmark stage's
    unit module need no torch; `geometry.camera` imported it (~2 s) for a function none of them calls."""
    names = ("load_capture", "Camera", "load_landmarks", "import_capture", "load_sequence_fit", "GeofaceError")
    code = (f"import sys, geoface; [getattr(geoface, n) for n in {names!r}]; import flame_fitting.landmarks.capture; "
            "print(sorted(m for m in ('torch', 'mediapipe', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
