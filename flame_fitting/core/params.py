"""Typed configs built from one section of params.yaml, validated once at the edge.

Each stage declares a dataclass whose fields carry their documentation and range in
`field(metadata=...)`; `load_section` reads params.yaml, refuses unknown keys, wrong types
and out-of-range values before any work starts, and fills defaults.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import reprlib
import types
import typing
from pathlib import Path

import yaml

from flame_fitting.core.errors import GeofaceError


class ParamsError(GeofaceError, ValueError):
    """A params.yaml value that is missing, unknown, of the wrong type or out of range."""


def spec(default, doc: str, lo=None, hi=None, choices=None):
    """A dataclass field with documentation and an optional range / set of choices."""
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return dataclasses.field(metadata={"doc": doc, "lo": lo, "hi": hi, "choices": choices}, **kw)


def read_params(path: Path | str = "params.yaml") -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: missing") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return data


_REPR = reprlib.Repr()  # a value in a one-line error: a few items of a few levels (YAML aliases nest 371 bytes
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 4, 4, 60, 60  # into 10^9 items)


def shown(value) -> str:
    """`repr(value)` cut short (`_REPR`): its cost and length do not grow with the value."""
    return _REPR.repr(value)


_EXPONENT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")


def _check_type(value, tp, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, where)
            except ParamsError:
                continue
        raise ParamsError(f"{where}: {shown(value)} is not of type {tp}")
    if tp is type(None):
        if value is not None:
            raise ParamsError(f"{where}: expected null, got {shown(value)}")
        return None
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {shown(value)}")
        (arg,) = typing.get_args(tp) or (object,)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads `3e-4`, without a dot, as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {shown(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {shown(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true/false, got {shown(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {shown(value)}")
        return value
    return value


def _check_value(value, tp, md, key: str):
    """`value` of a field of type `tp` with spec `md` (`spec`'s metadata), type-checked (`_check_type`), within its
    choices, finite and within its range, as the field holds it; ParamsError naming `key` otherwise."""
    v = _check_type(value, tp, key)
    if v is not None and md.get("choices") is not None and v not in md["choices"]:
        raise ParamsError(f"{key}: {shown(v)} not one of {md['choices']}")
    for item in (v if isinstance(v, list) else [v]):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if not math.isfinite(item):  # NaN passes every comparison; no setting means infinity
                raise ParamsError(f"{key}: {item} is not a finite number")
            if md.get("lo") is not None and item < md["lo"]:
                raise ParamsError(f"{key}: {item} is below the minimum {md['lo']}")
            if md.get("hi") is not None and item > md["hi"]:
                raise ParamsError(f"{key}: {item} is above the maximum {md['hi']}")
    return v


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)  # ~2 ms (the annotations are strings): once per class


def check_fields(cfg, where: str) -> None:
    """What `build_config` checks of a params section, for a config dataclass built directly in Python
    (`FitConfig(iterations=-1)`): every field's type, choices, finiteness and range (numpy scalars count as the
    Python numbers they hold); ParamsError naming `where.field` otherwise."""
    hints = _type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            value = value.item()  # np.int64(5) from an array is the integer 5
        checked = _check_value(value, hints[f.name], f.metadata, f"{where}.{f.name}")
        if isinstance(value, str) and not isinstance(checked, str):  # "3e-4" is a number in YAML only
            raise ParamsError(f"{where}.{f.name}: expected a number, got {shown(value)}")


def field_docs(cls) -> str:
    """One line per field of config dataclass `cls`: `name = default: documentation [range]` (for its docstring)."""
    lines = []
    for f in dataclasses.fields(cls):
        md = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        bounds = [f"{'≥' if k == 'lo' else '≤'} {md[k]}" for k in ("lo", "hi") if md.get(k) is not None]
        extra = f" [{', '.join(bounds)}]" if bounds else ""
        lines.append(f"    {f.name} = {default!r}: {md.get('doc', '')}{extra}")
    return "\n".join(lines)


def build_config(cls, section: dict, where: str):
    """Instantiate dataclass `cls` from a dict, validating keys, types and ranges."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ParamsError(f"{where}: expected a mapping, got {shown(section)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ParamsError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {name: _check_value(section[name], hints[name], f.metadata, f"{where}.{name}")
              for name, f in fields.items() if name in section}
    cfg = cls(**values)
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def load_section(cls, name: str, path: Path | str = "params.yaml"):
    """Typed config `cls` from section `name` of params.yaml (dotted names reach nested sections)."""
    data = read_params(path)
    section = data
    for part in name.split("."):
        section = (section or {}).get(part) if isinstance(section, dict) else None
    return build_config(cls, section or {}, f"{path}:{name}")
