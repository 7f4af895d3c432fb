"""The library's messages in the words of the command line. The library (and the DVC stages, whose params.yaml is
right there) names params keys: `set executor.kind: local`, `train.log_every = 100 is not below ...`. A user of
`geoface CMD` sets them with options instead, so the CLI writes the option of CMD that sets a key beside it, once per
message: `set executor.kind: local (--executor local)`, `train.log_every = 100 (--set log_every=100)`. Only keys CMD
really sets are named: its executor options (base.EXECUTOR_OPTIONS) and its sections' keys as its --set reads them
(the first section's bare, the others as PREFIX.KEY; config.overrides). It applies to CMD's error line and to what
the library writes to stderr (sys.stderr) while CMD runs (its warnings); stdout (the result) is left as it is.
A refusal to replace an output tells a caller of the Python API to `pass overwrite=True`; a command with --force says
`pass --force` instead.
"""
from __future__ import annotations

import dataclasses
import functools
import re

from flame_fitting.core.output_dirs import OVERWRITE, cli_words

from .base import EXECUTOR_OPTIONS
from .config import load_class

# a key's value in the message: `KEY=V`, `KEY = V`, after `set ` also `KEY: V` and `KEY V` (V then a YAML scalar:
# `set train.zero_terminal_snr false`, not the `to` of `set captures.cameras to ...`)
_VALUE = r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|[^\s;,)\]]*[^\s;,)\].:]"
_SCALAR = r"true|false|null|-?[0-9][0-9.e+-]*|'[^']*'|\[[^\]]*\]"


def options_of(args) -> dict[str, str]:
    """params key -> the option of the parsed command `args` that sets it (`executor.kind` -> `--executor`,
    `train.steps` -> `--set steps`); a section of `args.used_sections(args)` only where the command has one (import:
    the synthetic generator's or an imported dataset's keys, not both)."""
    words = {OVERWRITE: "--force"} if hasattr(args, "force") else {}  # `pass overwrite=True`: the Python parameter
    if hasattr(args, "unit_timeout_s"):  # base.add_executor's options
        words.update({f"executor.{key}": option for option, key in EXECUTOR_OPTIONS.items()})
    used = getattr(args, "used_sections", None)
    for i, (section, ref, *given) in enumerate(getattr(args, "sections", None) or []):
        if used is not None and section not in used(args):
            continue
        for f in dataclasses.fields(load_class(ref)):
            if f.name not in (given[0] if given else ()):  # keys the positionals give (import's SOURCE, ROOT)
                prefix = "" if i == 0 else section.rsplit(".", 1)[-1] + "."  # as config.overrides reads --set
                words[f"{section}.{f.name}"] = f"--set {prefix}{f.name}"
    return words


def annotate(text: str, words: dict[str, str]) -> str:
    """`text` with `(OPTION VALUE)` after the first mention of each key of `words` with each value (`(OPTION)` when
    the message gives no value; `--set KEY=VALUE` for a --set key); a key already in the CLI's words
    (`--set model.width`) or after a file name (`p.yaml:train.steps`) is left as it is."""
    if OVERWRITE in words:  # the library's `pass overwrite=True` (core/output_dirs.py) becomes `pass --force`
        text, words = cli_words(text, words[OVERWRITE]), {k: v for k, v in words.items() if k != OVERWRITE}
    if not words or "." not in text:
        return text
    seen = set()

    def said(m: re.Match) -> str:
        key, value = m["key"], m["value"] or m["said"] or m["word"]
        if (key, value) in seen or (value is None and any(k == key for k, _ in seen)):
            return m[0]
        seen.add((key, value))
        option = words[key]
        if option.startswith("--set "):
            return f"{m[0]} ({option}={value if value is not None else '...'})"
        return f"{m[0]} ({option}{'' if value is None else ' ' + value})"

    return _pattern(tuple(sorted(words, key=len, reverse=True))).sub(said, text)


@functools.lru_cache(maxsize=8)
def _pattern(keys: tuple[str, ...]) -> re.Pattern:
    """A mention of one of `keys` (longest first: `captures.synthetic.seed` before a `captures.s...`), after an
    optional `set `, with its value (`_VALUE`)."""
    alternatives = "|".join(re.escape(k) for k in keys)
    return re.compile(rf"(?:(?<![\w-])(?P<set>set ))?(?<![\w.:/-])(?<!--set )(?P<key>{alternatives})(?![\w.])"
                      rf"(?:(?:=| = )(?P<value>{_VALUE})"
                      rf"|(?(set)(?:: (?P<said>{_VALUE})| (?P<word>{_SCALAR})(?![\w.]))))?")


class Annotating:
    """A text stream (sys.stderr) whose writes go through `annotate`; everything else is the stream's own."""

    def __init__(self, stream, words: dict[str, str]):
        self._stream, self._words = stream, words

    def write(self, text: str) -> int:
        self._stream.write(annotate(text, self._words))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)
