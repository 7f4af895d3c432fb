"""The FLAME pickle reader against memory bombs and FLAME 2023's file names (the tenth session's head-model audit).

A few bytes of pickle could allocate gigabytes through the allow-listed builtins (`bytearray(n)`, `list(xrange(n))`)
or numpy's `_reconstruct` with a huge shape: a 55-byte file took 1.3 GB in 3 s. No real FLAME file needs those forms
(`_reconstruct` is called with shape (0,)). FLAME 2023's downloads are also named `flame2023_Open.pkl` and
`flame2023_no_jaw.pkl`; a folder holding one of them was "no FLAME model file"."""
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flame_folder_factory import write_flame_folder  # noqa: E402

from flame_fitting.head.flame_io import load_flame_folder  # noqa: E402
from flame_fitting.head.flame_pickle import load_pickle  # noqa: E402
from flame_fitting.head.flame_spec import HeadModelError  # noqa: E402


@pytest.mark.parametrize("payload", [
    b"\x80\x02}U\x01xc__builtin__\nbytearray\nJ\x00\x00\x00\x10\x85Rs.",             # bytearray(256 MiB)
    b"\x80\x02}U\x01xc__builtin__\nlist\nc__builtin__\nxrange\nJ\x00\x00\x00\x02\x85R\x85Rs.",  # list(xrange(32M))
    b"\x80\x02}U\x01xcnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05\x00\x00\x00\x00\x01\x85U\x01b\x87Rs.",
])
def test_memory_bombs_are_refused(tmp_path, payload):
    p = tmp_path / "flame_static_embedding.pkl"
    p.write_bytes(payload)
    with pytest.raises(HeadModelError) as e:
        load_pickle(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_empty_bytes_still_load(tmp_path):  # protocol-2 pickles of b"" call builtins.bytes()
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps({"e": b"", "a": np.arange(3.0)}, protocol=2))
    got = load_pickle(p)
    assert got["e"] == b"" and np.array_equal(got["a"], np.arange(3.0))


@pytest.mark.parametrize("name", ["flame2023_Open.pkl", "flame2023_no_jaw.pkl"])
def test_flame2023_variants_are_found(tmp_path, name):
    spec = write_flame_folder(tmp_path / "h", ext="pkl", model_name=name)
    assert load_flame_folder(spec.path).model_file.name == name
