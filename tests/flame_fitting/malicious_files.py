"""Test utility: pickles and object .npy files that run code when a normal unpickler reads them.

Every payload, if it ever runs, creates the file `marker` (so a test asserts that `marker` never appears).
`PAYLOADS` names each by the `module.name` it calls; `write_payload(path, name, marker)` writes it as a
pickle (a dict whose value is the payload, as a FLAME file would be) or, for a `.npy` path, as numpy's
object-array format (the header of `np.save(..., allow_pickle=True)` followed by the pickle).

    from malicious_files import PAYLOADS, write_payload
    write_payload(folder / "flame_static_embedding.pkl", "os.system", tmp_path / "MARKER")
"""
from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path

import numpy as np

EVIL_MODULE = "geoface_evil_payload_module"  # importing it creates the marker (see `write_evil_module`)


def _global_call(module: str, name: str, args: tuple, protocol: int = 2) -> bytes:
    """Pickle bytes `{"v_template": module.name(*args)}` written with the GLOBAL opcode (the exact name)."""
    body = pickle.dumps(args, protocol=2)[2:-1]  # the args tuple without PROTO / STOP
    call = b"c" + module.encode() + b"\n" + name.encode() + b"\n" + body + b"R"
    # dict with one key: EMPTY_DICT, key, value, SETITEM
    return b"\x80" + bytes([protocol]) + b"}" + b"X" + len(b"v_template").to_bytes(4, "little") + b"v_template" + call + b"s."


def _inst_call(module: str, name: str, arg: str) -> bytes:
    """Protocol 0 pickle: the INST opcode (`module.name(arg)` without REDUCE)."""
    return b"(S'" + arg.encode() + b"'\ni" + module.encode() + b"\n" + name.encode() + b"\n."


class _ReduceTo:
    """A real object whose `__reduce__` returns (callable, args); pickled by Python itself (protocol 4)."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _payload_bytes(name: str, marker: Path) -> bytes:
    m, code, touch = str(marker), _code(marker), ["touch", str(marker)]
    table = {
        "os.system": lambda: _global_call("os", "system", (f"touch '{m}'",)),
        "posix.system": lambda: _global_call("posix", "system", (f"touch '{m}'",)),
        "os.system (INST opcode, protocol 0)": lambda: _inst_call("os", "system", f"touch {m}"),
        "os.system (real __reduce__, protocol 4)": lambda: pickle.dumps(
            {"v_template": _ReduceTo(__import__("os").system, (f"touch '{m}'",))}, protocol=4),
        "subprocess.Popen": lambda: _global_call("subprocess", "Popen", (touch,)),
        "subprocess.call": lambda: _global_call("subprocess", "call", (touch,)),
        "subprocess.run": lambda: _global_call("subprocess", "run", (touch,)),
        "subprocess.check_output": lambda: _global_call("subprocess", "check_output", (touch,)),
        "builtins.eval": lambda: _global_call("builtins", "eval", (code,)),
        "builtins.exec": lambda: _global_call("builtins", "exec", (code,)),
        "__builtin__.eval (Python 2 name)": lambda: _global_call("__builtin__", "eval", (code,)),
        "builtins.open": lambda: _global_call("builtins", "open", (m, "w")),
        "numpy.testing._private.utils.runstring": lambda: _global_call("numpy.testing._private.utils", "runstring",
                                                                       (code, {})),
        "importlib.import_module": lambda: _global_call("importlib", "import_module", (EVIL_MODULE,)),
        "numpy.save": lambda: _global_call("numpy", "save", (m, np.zeros(1))),
        "numpy + lib.npyio.save (dotted STACK_GLOBAL name, protocol 4)": lambda: _stack_global_dotted(marker),
        "scipy.io.savemat": lambda: _global_call("scipy.io", "savemat", (m, {"a": 1})),
    }
    return table[name]()


def _stack_global_dotted(marker: Path) -> bytes:
    """STACK_GLOBAL('numpy', 'lib.npyio.save'): a dotted name walking from an allowed module to a writer."""
    s = lambda t: b"\x8c" + bytes([len(t)]) + t.encode()  # noqa: E731  SHORT_BINUNICODE
    args = pickle.dumps((str(marker), np.zeros(1)), protocol=4)[2:-1]
    if args.startswith(b"\x95"):  # FRAME: drop it
        args = args[9:]
    return b"\x80\x04" + s("numpy") + s("lib.npyio.save") + b"\x93" + args + b"R."


PAYLOADS = ("os.system", "posix.system", "os.system (INST opcode, protocol 0)", "os.system (real __reduce__, protocol 4)",
            "subprocess.Popen", "subprocess.call", "subprocess.run", "subprocess.check_output", "builtins.eval",
            "builtins.exec", "__builtin__.eval (Python 2 name)", "builtins.open", "numpy.testing._private.utils.runstring",
            "importlib.import_module", "numpy.save", "numpy + lib.npyio.save (dotted STACK_GLOBAL name, protocol 4)",
            "scipy.io.savemat")
# the module.name each payload's refusal message names
REFUSED_NAME = {"os.system (INST opcode, protocol 0)": "os.system", "os.system (real __reduce__, protocol 4)": "posix.system",
                "__builtin__.eval (Python 2 name)": "__builtin__.eval",
                "numpy + lib.npyio.save (dotted STACK_GLOBAL name, protocol 4)": "numpy.lib.npyio.save"}


def write_evil_module(folder: Path, marker: Path) -> None:
    """`EVIL_MODULE`.py in `folder`: importing it creates `marker`."""
    (Path(folder) / f"{EVIL_MODULE}.py").write_text(_code(marker) + "\n")
    sys.modules.pop(EVIL_MODULE, None)


def write_payload(path: Path, name: str, marker: Path) -> None:
    """Write payload `name` at `path`: a pickle, or for `.npy` an object-array .npy file around it."""
    raw = _payload_bytes(name, marker)
    path = Path(path)
    if path.suffix == ".npy":
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
        raw = buf.getvalue() + raw  # magic + header, as np.save writes them
    path.write_bytes(raw)
