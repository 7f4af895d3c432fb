"""Test helper: pickles written the way the real FLAME files were (Python 2.7's cPickle, protocol 2, numpy 1.x,
scipy, chumpy), byte strings and all, so the loaders are tested on the object graph of the real generic_model.pkl
and its embeddings without the licence-gated files (the tenth session's head-model audit).

A minimal Python-2.7-style pickler (protocol 2 opcodes as cPickle 2.7 + numpy 1.x + scipy + chumpy write them):
str -> SHORT_BINSTRING/BINSTRING (py2 byte strings), ndarray -> numpy.core.multiarray._reconstruct + BUILD with the raw
data as a py2 str, dtype -> numpy.dtype(('f8', 0, 1)) + BUILD (3, '<', None, None, None, -1, -1, 0), chumpy Ch ->
NEWOBJ (protocol 2) or copy_reg._reconstructor (protocol 0/1 style), scipy csc -> scipy.sparse.csc.csc_matrix NEWOBJ +
BUILD of its __dict__ (old scipy's '_shape')."""
import struct
import numpy as np

class Obj:  # an instance of module.name with a __dict__ state
    def __init__(self, module, name, state, style="newobj"):
        self.module, self.name, self.state, self.style = module, name, state, style

class Py2Pickler:
    def __init__(self):
        self.out = bytearray(b"\x80\x02")
    def glob(self, m, n):
        self.out += b"c" + m.encode() + b"\n" + n.encode() + b"\n"
    def s(self, b):  # py2 str (bytes)
        if isinstance(b, str): b = b.encode("latin1")
        self.out += (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b
    def dump(self, o):
        w = self.out
        if o is None: w += b"N"
        elif o is True: w += b"\x88"
        elif o is False: w += b"\x89"
        elif isinstance(o, int):
            if 0 <= o < 256: w += b"K" + bytes([o])
            elif -2**31 <= o < 2**31: w += b"J" + struct.pack("<i", o)
            else:
                b = o.to_bytes((o.bit_length() + 8) // 8, "little", signed=True); w += b"\x8a" + bytes([len(b)]) + b
        elif isinstance(o, float): w += b"G" + struct.pack(">d", o)
        elif isinstance(o, (str, bytes)): self.s(o)
        elif isinstance(o, tuple):
            if len(o) == 0: w += b")"
            elif len(o) <= 3:
                for x in o: self.dump(x)
                w += [b"\x85", b"\x86", b"\x87"][len(o) - 1]
            else:
                w += b"("; [self.dump(x) for x in o]; w += b"t"
        elif isinstance(o, list):
            w += b"]("; [self.dump(x) for x in o]; w += b"e"
        elif isinstance(o, set):  # py2: __builtin__.set([items])
            self.glob("__builtin__", "set"); self.dump(list(o)); w += b"\x85R"
        elif isinstance(o, dict):
            w += b"}("
            for k, v in o.items(): self.dump(k); self.dump(v)
            w += b"u"
        elif isinstance(o, np.dtype):
            self.glob("numpy", "dtype"); self.dump((o.str[1:] if o.kind != "O" else "O8", 0, 1)); w += b"R"
            self.dump((3, "|" if o.kind in "Ob" or o.itemsize == 1 else "<", None, None, None, -1, -1, 63 if o.kind == "O" else 0)); w += b"b"
        elif isinstance(o, np.ndarray):
            self.glob("numpy.core.multiarray", "_reconstruct"); self.glob("numpy", "ndarray")
            self.dump(0); w += b"\x85"; self.s("b"); w += b"\x87R"  # (ndarray, (0,), 'b')
            raw = list(o.ravel()) if o.dtype.kind == "O" else np.ascontiguousarray(o).tobytes()
            self.dump((1, tuple(int(d) for d in o.shape), o.dtype, False, raw)); w += b"b"
        elif isinstance(o, Obj):
            if o.style == "newobj":
                self.glob(o.module, o.name); w += b")\x81"
            else:  # protocol 0/1: copy_reg._reconstructor(cls, object, None)
                self.glob("copy_reg", "_reconstructor"); self.glob(o.module, o.name); self.glob("__builtin__", "object"); w += b"N\x87R"
            self.dump(o.state); w += b"b"
        else:
            raise TypeError(type(o))
    def result(self):
        return bytes(self.out) + b"."

def dumps(o):
    p = Py2Pickler(); p.dump(o); return p.result()

def ch(x, style="newobj"):  # chumpy.ch.Ch as chumpy's __getstate__ leaves it
    return Obj("chumpy.ch", "Ch", {"x": x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}}, style)

def csc(dense):
    import scipy.sparse as sp
    m = sp.csc_matrix(dense)
    return Obj("scipy.sparse.csc", "csc_matrix", {"_shape": m.shape, "maxprint": 50, "format": "csc", "data": m.data,
                                                   "indices": m.indices.astype(np.int32), "indptr": m.indptr.astype(np.int32)})

def npy_object(obj):  # np.save of a 0-d object array under Python 2 (format 1.0)
    hdr = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    hdr += " " * (16 - (10 + len(hdr) + 1) % 16) + "\n"
    a = np.empty((), object); a[()] = obj
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + dumps(a)
