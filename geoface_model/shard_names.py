"""The names a shard's header holds (its samples' subject, sequence, frame and cameras), checked as untrusted input,
and the file names the evaluation writes per sample from them.

A dataset folder may come from someone else (shards downloaded, not built here). Its names become file and folder
names of the evaluation's outputs (OUT/<stem>/, PLOTS/samples/<stem>.png, OUT/<stem>/views/<camera>.png and the
3DGS export's images/<camera>.png) and reach the report, the CSV files and the terminal. `read_shard_meta`
(data.py) therefore refuses a shard whose names are not safe single names, the rule a capture's names follow
(flame_fitting/core/names.py `name_problem`: no '/', '..', leading '.', control characters, formula-leading
characters, at most 128 bytes), whose frames are not integers, or whose cameras are not n_views distinct names. Before,
a camera named '../../x' was written outside the sample's folder, a 10 000-character name failed the whole evaluation
with a traceback after every sample had been generated (the file name too long), and so did two samples writing one
folder (subjects 'a_b' / 'a' with sequences 'c' / 'b_c': both 'a_b_c_00000').

`sample_stems` gives each sample a file name of its own: `<subject>_<sequence>_<frame:05d>` as before, unless that
is longer than NAME_MAX_BYTES or equals another sample's (also when a case-insensitive file system would take them
for one, core/names.py `name_key`): then its first bytes and '~' + 12 hex digits of the sha256 of the sample's name,
the same in every run.
"""
from __future__ import annotations

import hashlib
from collections import Counter

from flame_fitting.core.names import NAME_MAX_BYTES, name_key, name_problem

INT64 = 2 ** 63


def sample_name(info: dict) -> str:
    """`subject/sequence/frame` (frame as 5 digits) of a sample's header entry: its name in reports and CSV files."""
    return f"{info['subject']}/{info['sequence']}/{int(info['frame']):05d}"


def shown(value, limit: int = 60) -> str:
    """`repr(value)` (control characters escaped) cut to `limit` characters: a hostile name in a one-line error."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 1] + "…"


def header_names_problem(samples, subjects, n_samples: int, n_views: int) -> str | None:
    """Why a shard header's `samples` / `subjects` are not what a shard the dataset stage writes holds (None when
    they are): n_samples entries, each with safe `subject` and `sequence` names, an integer `frame` and `cameras`
    n_views safe names distinct also on a case-insensitive file system; `subjects` a list of safe names."""
    if not isinstance(samples, list) or len(samples) != n_samples:
        return f"'samples' must be a list of the {n_samples} samples (n_samples), got {shown(samples)}"
    if not isinstance(subjects, list):
        return f"'subjects' must be a list of names, got {shown(subjects)}"
    for s in subjects:
        if why := name_problem(s):
            return f"subject {shown(s)} in 'subjects' {why}"
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            return f"sample {i}: expected an object with subject, sequence, frame and cameras, got {shown(s)}"
        for what in ("subject", "sequence"):
            if why := name_problem(s.get(what)):
                return f"sample {i}: {what} {shown(s.get(what))} {why}"
        frame = s.get("frame")
        if type(frame) is not int or not -INT64 <= frame < INT64:
            return f"sample {i}: frame {shown(frame)} is not a 64-bit integer"
        cams = s.get("cameras")
        if not isinstance(cams, list) or len(cams) != n_views:
            return f"sample {i}: cameras must be a list of the {n_views} view names (n_views), got {shown(cams)}"
        for c in cams:
            if why := name_problem(c):
                return f"sample {i}: camera {shown(c)} {why}"
        keys = [name_key(c) for c in cams]
        if len(set(keys)) != len(keys):
            twice = next(c for c, k in zip(cams, keys) if keys.count(k) > 1)
            return (f"sample {i}: camera {shown(twice)} is named twice (or as another camera differing only in case "
                    "or Unicode normalisation): each view is written to a file of its camera's name")
    return None


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` of at most `max_bytes` bytes in UTF-8."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def sample_stems(names: list[str]) -> list[str]:
    """One file name per sample name (module docstring); the names must be distinct (`subject/sequence/frame`)."""
    base = [n.replace("/", "_") for n in names]
    count = Counter(name_key(b) for b in base)
    tag = 1 + 12  # '~' and 12 hex digits
    stems = [b if count[name_key(b)] == 1 and len(b.encode("utf-8")) <= NAME_MAX_BYTES
             else _cut(b, NAME_MAX_BYTES - tag) + "~" + hashlib.sha256(n.encode("utf-8")).hexdigest()[:12]
             for n, b in zip(names, base)]
    assert len({name_key(s) for s in stems}) == len(stems), "sample names must be distinct"
    return stems
