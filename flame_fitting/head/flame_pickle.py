"""FLAME's original model files without chumpy: safe unpickling, the model arrays, and the npz converter.

FLAME's pickles hold chumpy arrays and chumpy breaks on numpy >= 1.24, so `load_pickle` unpickles them
with stand-in classes (never importing chumpy; any other foreign class is refused) and
`convert_flame_pickle` writes a plain npz (`python -m flame_fitting.head.flame_io convert`).
`load_model_arrays` reads FLAME_NEUTRAL.npz or a plain pickle, checked by `flame_spec.check_model_arrays`.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from flame_fitting.head.flame_spec import LAYOUT_HELP, REQUIRED_KEYS, HeadModelError, check_model_arrays, convert_command


class _ChumpyStandIn:
    """Holds a chumpy object's pickled state; `to_numpy()` rebuilds its value without chumpy."""
    chumpy_class = "chumpy.?"

    def __init__(self, *args, **kwargs):
        self.state = {"args": args, **kwargs}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}

    def to_numpy(self) -> np.ndarray:
        s, name = self.state, self.chumpy_class.rsplit(".", 1)[-1]
        if name == "Select" and {"a", "idxs"} <= s.keys():
            out = _resolve(s["a"]).ravel()[np.asarray(s["idxs"])]
            return out.reshape(s["preferred_shape"]) if "preferred_shape" in s else out
        if name == "Reshape" and {"a", "newshape"} <= s.keys():
            return _resolve(s["a"]).reshape(s["newshape"])
        if name == "transpose" and "a" in s:
            return np.transpose(_resolve(s["a"]), s.get("axes"))
        if name == "AtleastNd" and {"x", "ndims"} <= s.keys():
            return [np.atleast_1d, np.atleast_2d, np.atleast_3d][s["ndims"] - 1](_resolve(s["x"]))
        if "x" in s and "a" not in s:  # Ch and subclasses that only hold a value
            return _resolve(s["x"])
        raise HeadModelError(f"chumpy object of class {self.chumpy_class} (state keys {sorted(s)}) cannot be "
                             "converted without chumpy; save its value as a numpy array with an old numpy + chumpy")


class _SparseStandIn:
    """Holds a pickled scipy sparse matrix's state; independent of the scipy version that wrote it."""
    fmt = "csc"

    def __setstate__(self, state):
        self.state = state

    def to_numpy(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape", s.get("shape")))
        cls = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
        return cls((np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])), shape=shape).toarray()


def _resolve(v) -> np.ndarray:
    if isinstance(v, (_ChumpyStandIn, _SparseStandIn)):
        return v.to_numpy()
    if sp.issparse(v):
        return v.toarray()
    return np.asarray(v)


_SAFE_BUILTINS = {"object", "set", "frozenset", "dict", "list", "tuple", "slice", "complex", "int", "float",
                  "bool", "str", "bytes", "bytearray", "range"}


class _FlameUnpickler(pickle.Unpickler):
    """Unpickler for FLAME files: chumpy and scipy sparse classes become stand-ins, other foreign code is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path, self.chumpy_classes, self._made = path, set(), {}

    def _standin(self, base, qualname: str, **attrs):
        if qualname not in self._made:
            self._made[qualname] = type(qualname.rsplit(".", 1)[-1], (base,), attrs)
        return self._made[qualname]

    def find_class(self, module: str, name: str):
        top = module.split(".")[0]
        if top == "chumpy":
            self.chumpy_classes.add(f"{module}.{name}")
            return self._standin(_ChumpyStandIn, f"{module}.{name}", chumpy_class=f"{module}.{name}")
        if top == "scipy" and name in ("csc_matrix", "csr_matrix", "csc_array", "csr_array"):
            return self._standin(_SparseStandIn, f"{module}.{name}", fmt=name[:3])
        if top in ("__builtin__", "builtins") and name not in _SAFE_BUILTINS:
            raise HeadModelError(f"{self.path}: refusing to unpickle {module}.{name}")
        if top not in ("numpy", "scipy", "copy_reg", "copyreg", "__builtin__", "builtins", "collections", "_codecs"):
            raise HeadModelError(f"{self.path}: refusing to unpickle {module}.{name} (not numpy/scipy/chumpy data)")
        if module.startswith("numpy._core"):  # written by numpy >= 2
            module = "numpy.core" + module[len("numpy._core"):]
        return super().find_class(module, name)


def load_pickle(path: Path | str, allow_chumpy: bool = False, hint: str | None = None):
    """Unpickle a FLAME data file without importing chumpy. Chumpy objects stay as stand-ins when
    `allow_chumpy`, otherwise they raise `HeadModelError` with `hint` (default: the conversion command)."""
    path = Path(path)
    hint = hint or f"Convert it once with: {convert_command(path)}"
    try:
        with open(path, "rb") as fh:
            up = _FlameUnpickler(fh, path)
            data = up.load()
    except HeadModelError:
        raise
    except FileNotFoundError:
        raise HeadModelError(f"{path}: missing. {LAYOUT_HELP}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        extra = f". {hint}" if "chumpy" in str(e) else ""
        raise HeadModelError(f"{path}: cannot unpickle ({type(e).__name__}: {e}){extra}") from None
    if up.chumpy_classes and not allow_chumpy:
        raise HeadModelError(f"{path}: contains chumpy objects ({', '.join(sorted(up.chumpy_classes))}), which need "
                             f"chumpy (broken on numpy >= 1.24). {hint}")
    return data


def _as_array(value) -> np.ndarray | None:
    """Numeric array from a pickled value (ndarray, chumpy stand-in, sparse); None for non-numeric values."""
    if not isinstance(value, (np.ndarray, _ChumpyStandIn, _SparseStandIn)) and not sp.issparse(value):
        return None
    a = _resolve(value)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    return None


def convert_flame_pickle(src: Path | str, dst_npz: Path | str) -> dict:
    """Convert a FLAME pickle (chumpy or plain) to a plain npz: float arrays float32, integer arrays
    int64, sparse J_regressor dense, plus `source_file` (the pickle's name). Entries that are not
    arrays, or optional ones that cannot be rebuilt without chumpy, are skipped and listed with the
    reason; a required key that cannot be rebuilt is an error. Writes atomically (tmp + rename).
    Returns {"dst", "keys", "skipped": {key: reason}, "n_vertices", "n_faces"}."""
    src, dst = Path(src), Path(dst_npz)
    if dst.suffix != ".npz":
        raise HeadModelError(f"{dst}: destination must be a .npz file, e.g. {dst / 'FLAME_NEUTRAL.npz'}")
    data = load_pickle(src, allow_chumpy=True)
    if not isinstance(data, dict):
        raise HeadModelError(f"{src}: expected a pickled dict of arrays, found {type(data).__name__}")
    arrays, skipped = {}, {}
    for key, value in data.items():
        try:
            a = _as_array(value)
        except HeadModelError as e:
            if key in REQUIRED_KEYS:
                raise HeadModelError(f"{src}: key '{key}': {e}") from None
            skipped[str(key)] = str(e)
            continue
        if a is None:
            skipped[str(key)] = f"not a numeric array ({type(value).__name__})"
        else:
            arrays[str(key)] = a
    V, F = check_model_arrays(arrays, src)
    arrays["source_file"] = np.array(src.name)  # lets kind inference see "flame2023" after renaming
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"dst": str(dst), "keys": sorted(arrays), "skipped": skipped, "n_vertices": V, "n_faces": F}


def load_model_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """The numeric arrays of FLAME_NEUTRAL.npz / a plain FLAME pickle, checked by `check_model_arrays`."""
    path = Path(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except ValueError as e:
            raise HeadModelError(f"{path}: holds object arrays or is corrupt ({e}); write plain numeric arrays") from None
        except OSError as e:
            raise HeadModelError(f"{path}: cannot read ({e})") from None
    else:
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise HeadModelError(f"{path}: expected a pickled dict of arrays, found {type(data).__name__}")
        arrays = {str(k): a for k, v in data.items() if (a := _as_array(v)) is not None}
    check_model_arrays(arrays, path)
    return arrays
