"""FLAME's original model files without chumpy and without running code: the one restricted unpickler,
object .npy reading, the model arrays, and the npz converter.

Every pickle and every object `.npy` the toolkit reads goes through `_FlameUnpickler`, whose allow-list is
exactly what real FLAME files contain: numpy array / scalar / dtype reconstruction, scipy csc/csr matrices
(held as inert stand-ins), chumpy objects (inert stand-ins, never importing chumpy, which breaks on
numpy >= 1.24) and plain builtin containers. Anything else (`os.system`, `builtins.eval`, numpy's
`runstring`, ...) is refused with a one-line `HeadModelError` naming the file and the `module.name`,
before it is called. `load_pickle` reads a pickle, `load_object_npy` an `np.save(..., allow_pickle=True)`
file, `convert_flame_pickle` writes a plain npz (`python -m flame_fitting.head.flame_io convert`), and
`load_model_arrays` reads FLAME_NEUTRAL.npz or a plain pickle, checked by `flame_spec.check_model_arrays`.
"""
from __future__ import annotations

import collections
import copyreg
import importlib
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from flame_fitting.core.arrays import load_npz
from flame_fitting.core.fileio import atomic_write, file_ancestor
from flame_fitting.core.output_dirs import OVERWRITE
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


def _numpy_callable(submodule: str, name: str):
    """numpy's own reconstruction helper, from numpy._core (numpy >= 2, and 1.26's forward stubs) or numpy.core."""
    for mod in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


def _latin1_encode(obj, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as Python 3 pickles of bytes use it (latin-1 only; any other codec is refused)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin1", errors)


MAX_ELEMENTS = 2 ** 27  # FLAME's largest array (shapedirs 5023 x 3 x 400) has 6.0e6; refuse memory bombs


def _no_size(cls):
    """`bytes` / `bytearray` without the `cls(n)` form, which allocates n zero bytes from a few bytes of pickle."""
    def make(*args):
        if args and isinstance(args[0], int):
            raise pickle.UnpicklingError(f"{cls.__name__}(<int>) is not allowed")
        return cls(*args)
    return make


def _capped(fn):
    """numpy's `_reconstruct(subtype, shape, dtype)` with the element count capped (a shape costs a few bytes)."""
    def make(*args, **kwargs):
        shape = args[1] if len(args) > 1 else ()
        if int(np.prod(np.asarray(shape, dtype=np.float64).reshape(-1))) > MAX_ELEMENTS:
            raise pickle.UnpicklingError(f"an array of shape {shape} is larger than a FLAME file holds")
        return fn(*args, **kwargs)
    return make


_SAFE_BUILTINS = {"object": object, "set": set, "frozenset": frozenset, "dict": dict, "list": list, "tuple": tuple,
                  "slice": slice, "complex": complex, "int": int, "float": float, "bool": bool, "str": str,
                  "bytes": _no_size(bytes), "bytearray": _no_size(bytearray),
                  "unicode": str, "long": int}  # the last two: Python 2 names; no range/xrange (lazy, unbounded)
_ALLOWED = {  # (module, name) as written in the file -> the object it becomes; nothing else is ever imported
    **{(m, n): v for m in ("builtins", "__builtin__") for n, v in _SAFE_BUILTINS.items()},
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _capped(_numpy_callable("multiarray", "_reconstruct"))
       for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _numpy_callable("multiarray", "scalar") for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numpy_callable("numeric", "_frombuffer") for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    ("copy_reg", "_reconstructor"): copyreg._reconstructor, ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
_SPARSE = ("csc_matrix", "csr_matrix", "csc_array", "csr_array")
ALLOWED_HELP = ("numpy arrays, scalars and dtypes, scipy csc/csr matrices, chumpy arrays and plain containers "
                "are the only classes a FLAME file may hold")


class _FlameUnpickler(pickle.Unpickler):
    """The toolkit's one unpickler: only `_ALLOWED` names, chumpy and scipy csc/csr (as inert stand-ins).

    Any other global (a class or a function a `__reduce__` would call) raises `HeadModelError` naming
    the file and `module.name`, before anything is called."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path, self.chumpy_classes, self._made = path, set(), {}

    def _standin(self, base, qualname: str, **attrs):
        if qualname not in self._made:
            self._made[qualname] = type(qualname.rsplit(".", 1)[-1], (base,), attrs)
        return self._made[qualname]

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if (module == "chumpy" or module.startswith("chumpy.")) and name.isidentifier():
            self.chumpy_classes.add(f"{module}.{name}")
            return self._standin(_ChumpyStandIn, f"{module}.{name}", chumpy_class=f"{module}.{name}")
        if (module == "scipy.sparse" or module.startswith("scipy.sparse.")) and name in _SPARSE:
            return self._standin(_SparseStandIn, f"{module}.{name}", fmt=name[:3])
        raise HeadModelError(f"{self.path}: refusing to unpickle {module}.{name} ({ALLOWED_HELP})")

    def persistent_load(self, pid):
        raise HeadModelError(f"{self.path}: refusing a persistent id in a pickle ({ALLOWED_HELP})")


def _unpickle(fh, path: Path, allow_chumpy: bool, hint: str | None):
    """Unpickle from the open file `fh` with `_FlameUnpickler`; bad files raise `HeadModelError` naming `path`."""
    hint = hint or f"Convert it once with: {convert_command(path)}"
    try:
        up = _FlameUnpickler(fh, path)
        data = up.load()
    except HeadModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        extra = f". {hint}" if "chumpy" in str(e) else ""
        raise HeadModelError(f"{path}: cannot unpickle ({type(e).__name__}: {e}){extra}") from None
    if up.chumpy_classes and not allow_chumpy:
        raise HeadModelError(f"{path}: contains chumpy objects ({', '.join(sorted(up.chumpy_classes))}), which need "
                             f"chumpy (broken on numpy >= 1.24). {hint}")
    return data


def load_pickle(path: Path | str, allow_chumpy: bool = False, hint: str | None = None):
    """Unpickle a FLAME data file with the allow-list, without importing chumpy. Chumpy objects stay as
    stand-ins when `allow_chumpy`, otherwise they raise `HeadModelError` with `hint` (default: the
    conversion command)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _unpickle(fh, path, allow_chumpy, hint)
    except FileNotFoundError:
        raise HeadModelError(f"{path}: missing. {LAYOUT_HELP}") from None
    except OSError as e:
        raise HeadModelError(f"{path}: cannot read ({e})") from None


def load_object_npy(path: Path | str, allow_chumpy: bool = False, hint: str | None = None) -> np.ndarray:
    """Read a `.npy` file; an object array's pickled payload goes through the same allow-list as
    `load_pickle` (never `np.load(..., allow_pickle=True)`). Returns the array (shape as in the header)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:  # (3, 0): utf-8 header, no public reader
                shape, fortran, dtype = np.lib.format._read_array_header(fh, version)
            if not dtype.hasobject:
                fh.seek(0)
                return np.lib.format.read_array(fh, allow_pickle=False)
            data = _unpickle(fh, path, allow_chumpy, hint)
    except FileNotFoundError:
        raise HeadModelError(f"{path}: missing. {LAYOUT_HELP}") from None
    except HeadModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a bad header or truncated file
        raise HeadModelError(f"{path}: cannot read as .npy ({type(e).__name__}: {e})") from None
    if not isinstance(data, np.ndarray) or data.shape != tuple(shape):
        raise HeadModelError(f"{path}: the pickled payload is not the {tuple(shape)} array its header declares")
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


def convert_flame_pickle(src: Path | str, dst_npz: Path | str, overwrite: bool = False) -> dict:
    """Convert a FLAME pickle (chumpy or plain) to a plain npz: float arrays float32, integer arrays
    int64, sparse J_regressor dense, plus `source_file` (the pickle's name). Entries that are not
    arrays, or optional ones that cannot be rebuilt without chumpy, are skipped and listed with the
    reason; a required key that cannot be rebuilt is an error. Writes atomically (tmp + rename); an existing
    `dst_npz` is replaced only with `overwrite`, a folder or a path under a file never.
    Returns {"dst", "keys", "skipped": {key: reason}, "n_vertices", "n_faces"}."""
    src, dst = Path(src), Path(dst_npz)
    if dst.suffix.lower() != ".npz":
        raise HeadModelError(f"{dst}: destination must be a .npz file, e.g. {dst / 'FLAME_NEUTRAL.npz'}")
    if dst.is_dir():
        raise HeadModelError(f"{dst}: is a folder; the destination must be a .npz file, e.g. {dst / 'FLAME_NEUTRAL.npz'}")
    if dst.exists() and not overwrite:
        raise HeadModelError(f"{dst}: exists; pass {OVERWRITE} to replace it")
    if (parent := file_ancestor(dst)) is not None:
        raise HeadModelError(f"{dst}: {parent} is a file, not a folder")
    try:
        with open(src, "rb") as f:
            magic = f.read(4)
    except OSError:
        magic = b""  # load_pickle says what is wrong with the file
    if magic == b"PK\x03\x04":  # a zip archive: an .npz, not a pickle
        raise HeadModelError(f"{src}: an .npz archive already, not a FLAME pickle: nothing to convert (use it as "
                             "FLAME_NEUTRAL.npz in the head model folder)")
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
    atomic_write(dst, lambda fh: np.savez(fh, **arrays))
    return {"dst": str(dst), "keys": sorted(arrays), "skipped": skipped, "n_vertices": V, "n_faces": F}


def load_model_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """The numeric arrays of FLAME_NEUTRAL.npz / a plain FLAME pickle, checked by `check_model_arrays`."""
    path = Path(path)
    if path.suffix == ".npz":
        arrays = load_npz(path, HeadModelError)
    else:
        data = load_pickle(path)
        if not isinstance(data, dict):
            raise HeadModelError(f"{path}: expected a pickled dict of arrays, found {type(data).__name__}")
        arrays = {str(k): a for k, v in data.items() if (a := _as_array(v)) is not None}
    check_model_arrays(arrays, path)
    return arrays
