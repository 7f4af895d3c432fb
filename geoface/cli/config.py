"""Params dataclasses on the command line, written once for every subcommand: the `--help` text listing each
key with its type, default, range / choices and one-line doc is generated from the field specs
(`flame_fitting.core.params.spec`), and `--set KEY=VALUE` overrides (on top of `--params FILE`, a params.yaml)
are validated by the same `build_config` as params.yaml.

A subcommand names its configs as sections: `(section, "module:Class")`; `section` is the params.yaml section the
keys come from; the first section's keys are given bare (`--set resolution=128`), the others with their section
(`--set tokens.uv_resolution=64`). Classes are imported only when a subcommand needs them, so `geoface --help`
stays fast.
"""
from __future__ import annotations

import dataclasses
import importlib
import textwrap
import types
import typing

import yaml

from flame_fitting.core.params import ParamsError, build_config, read_params

Section = tuple  # (params.yaml section, "module:Class"[, keys of the section that options give, e.g. source])


def load_class(ref: str) -> type:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (list, dict):
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_name(a) for a in args)}]"
    if args:
        names = [_type_name(a) for a in args]
        return " | ".join(n for n in names if n != "None") + (" | null" if "None" in names else "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _range(md: dict) -> str:
    if md.get("choices") is not None:
        return "one of " + ", ".join(map(str, md["choices"]))
    lo, hi = md.get("lo"), md.get("hi")
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    return f">= {lo}" if lo is not None else (f"<= {hi}" if hi is not None else "")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def describe(sections: list[Section], width: int = 100) -> str:
    """The params keys of `sections` as help text: `KEY  TYPE = DEFAULT, RANGE` and the field's doc below it."""
    out = ["params keys (--set KEY=VALUE overrides; --params FILE reads them from a params.yaml):"]
    for i, (section, ref, *_) in enumerate(sections):
        cls = load_class(ref)
        hints = typing.get_type_hints(cls)
        out.append(f"  section `{section}` ({cls.__name__}){'' if i == 0 else f'; keys as {_prefix(section)}.KEY'}:")
        for f in dataclasses.fields(cls):
            key = f.name if i == 0 else f"{_prefix(section)}.{f.name}"
            default = _default(f)
            shown = yaml.safe_dump(default, default_flow_style=True, width=10 ** 6).strip().removesuffix("...").strip() \
                if not dataclasses.is_dataclass(default) else "(defaults)"
            rng = _range(f.metadata)
            out.append(f"    {key}  {_type_name(hints[f.name])} = {shown}" + (f", {rng}" if rng else ""))
            doc = f.metadata.get("doc")
            if doc:
                out += textwrap.wrap(doc, width, initial_indent=" " * 8, subsequent_indent=" " * 8,
                                     break_on_hyphens=False, break_long_words=False)
    return "\n".join(out)


def _prefix(section: str) -> str:
    return section.rsplit(".", 1)[-1]


def _allows(tp, kind) -> bool:
    """Whether the field type `tp` is `kind` or a union holding it (`str | None` allows str and None; `list[str]` is
    neither)."""
    return tp is kind or (typing.get_origin(tp) in (typing.Union, types.UnionType) and kind in typing.get_args(tp))


def _names_field(tp) -> bool:
    """Whether the field type `tp` is list[str] or a union holding it (a list of names: subjects, cameras, ...)."""
    return any(typing.get_origin(t) is list and typing.get_args(t) == (str,)
               for t in (typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)))


def parse_value(key: str, value: str, tp=None):
    """The --set VALUE of `key` parsed as YAML (as params.yaml is: null, true, 3, [1, 2], ...), for a field of type
    `tp` (None: unknown): `None` is null too where the field may be null (the Python spelling --help shows for such a
    default), and a field of type str takes VALUE as written where YAML would read another type or fails
    (`mixed_precision=no` is "no", not false). A list of names (list[str]) keeps its items as written (`[017, 18]`
    is ['017', '18'], not YAML's octal 15 and 18), and one name is a list of one. ParamsError naming the key and the
    value when it is not YAML."""
    if tp is not None and value.strip() == "None" and _allows(tp, type(None)):
        return None
    if tp is not None and _names_field(tp):
        try:
            plain = yaml.safe_load(value)
            items = yaml.load(value, Loader=yaml.BaseLoader)  # every scalar a string, as written
        except yaml.YAMLError:
            items = plain = None
        if plain is None and items is not None and _allows(tp, type(None)):
            return None
        if isinstance(items, str):
            return [items]
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items
    text_field = tp is not None and _allows(tp, str)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        if text_field:
            return value
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"--set {key}={value}: not a valid value ({problem}; VALUE is read as YAML, as in "
                          f"params.yaml)") from None
    if text_field and parsed is not None and not isinstance(parsed, (str, list, dict)):
        return value
    return parsed


def overrides(pairs: list[str] | None, sections: list[Section]) -> dict[str, dict]:
    """`KEY=VALUE` pairs (values parsed by `parse_value`) -> {section: {key: value}}: `PREFIX.KEY` goes to the later
    section whose name ends in PREFIX, any other key to the first (where `build_config` refuses unknown keys)."""
    names = [s[0] for s in sections]
    later = {_prefix(s): s for s in names[1:]}
    out: dict[str, dict] = {s: {} for s in names}
    hints = {s[0]: typing.get_type_hints(load_class(s[1])) for s in sections} if pairs else {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ParamsError(f"--set expects KEY=VALUE, got {pair!r}")
        head, dot, rest = key.partition(".")
        section, name = (later[head], rest) if dot and head in later else (names[0], key)
        out[section][name] = parse_value(key, value, hints[section].get(name))
    return out


def _lookup(params: dict, section: str):
    for part in section.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


def build(sections: list[Section], pairs: list[str] | None, params_file: str | None = None) -> list:
    """The configs of `sections`: each from its section of `params_file` (if given) with the --set overrides on
    top, validated by `build_config`; errors name the --set key (or the file and section)."""
    base = read_params(params_file) if params_file else {}
    if params_file and not any(isinstance(_lookup(base, s[0]), dict) for s in sections):  # not silently the defaults
        raise ParamsError(f"{params_file}: has none of this command's sections ({', '.join(s[0] for s in sections)}); "
                          "give a params.yaml that holds them")
    over = overrides(pairs, sections)
    configs = []
    for i, (section, ref, *given) in enumerate(sections):
        values = {k: v for k, v in (_lookup(base, section) or {}).items() if k not in (given[0] if given else ())}
        if i == 0:  # the first section may hold the later ones (captures.synthetic): they are built on their own
            for later, *_ in sections[1:]:
                if later.startswith(section + "."):
                    values.pop(_prefix(later), None)
        values.update(over[section])
        where = f"{params_file}:{section}" if params_file and not over[section] else \
            ("--set" if i == 0 else f"--set {_prefix(section)}")
        try:
            configs.append(build_config(load_class(ref), values, where))
        except ParamsError as e:
            raise ParamsError(str(e).replace("--set.", "--set ", 1)) from None
    return configs
