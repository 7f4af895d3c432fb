"""Per-sequence work units of the data stages, keyed by the content of their inputs, run incrementally.

Each unit writes `<out>/<subject>/<sequence>/` and in it the key file `.geoface-unit.json` (its key, the sha256 of
its files, its extras and a small `record`: core/unit_keys.py, which computes keys and reads key files). A unit's
outputs, key file included, are a function of its inputs. Run times are not part of a result: a unit function
returns them under its record's `timing` entry, which goes to the stage's metrics for the units run now
(`UnitRun.timings`), never into the key file.

`run_units` re-runs only the units that are not current, i.e. whose key file is missing, names another key, or
lists files that are not exactly the ones on disk with those hashes; it removes the folders (and extras) of units
that vanished; current units are not touched (byte-identical). The check reads the outputs themselves, so it stays
right whatever put them there: a DVC checkout or restore of another version brings that version's key files with
it, a hand-edited or half-restored unit fails the hash check and is re-run. docs/scaling.md explains the choice.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.interrupt import interrupts_held
from flame_fitting.core.names import name_problem, terminal_safe
from flame_fitting.core.fileio import (MARKER, TMP_TAG, OutputError, check_output_dir, make_temp_dir, mark_output,
                                       replace_dir, sha256_file, temp_path, write_json)
from flame_fitting.core.unit_keys import KEY_FILE, Unit, current_key_file, read_key_file, tree_hashes

TIMING = "timing"  # the record's entry with run times: returned to the stage, not written (module docstring)


@dataclass
class UnitWork:
    """Runs one unit inside a worker: `fn(unit, tmp, extras)` writes the unit's files into the temporary folder
    `tmp` (and its extras, atomically, under `extras`) and returns (record, extra file names); the key file is
    added (the record without its `timing` entry) and `tmp` renamed to `<out>/<subject>/<sequence>` (atomic per
    unit; an earlier attempt's unit there is swapped out in one step where the system can: `replace_dir`). Returns
    the whole record. Picklable when `fn` is."""

    fn: Callable
    out: Path
    extras: Path | None = None

    @property
    def __wrapped__(self) -> Callable:  # the unit function (its module is what a pool process imports)
        return self.fn

    def __call__(self, unit: Unit) -> dict:
        dst = Path(self.out) / unit.subject / unit.sequence
        tmp = make_temp_dir(dst)
        try:
            record, names = self.fn(unit, tmp, self.extras)
            extras = {n: sha256_file(Path(self.extras) / n) for n in sorted(names)} if names else {}
            write_json(tmp / KEY_FILE, {"key": unit.key, "subject": unit.subject, "sequence": unit.sequence,
                                        "files": tree_hashes(tmp), "extras": extras,
                                        "record": {k: v for k, v in record.items() if k != TIMING}})
            try:  # an earlier attempt's whole unit (it has geoface's marker): replace_dir swaps it out in one step
                check_output_dir(dst, overwrite=True)
            except OutputError:  # anything else there cannot be current: remove it
                old = temp_path(dst)  # moved aside first: another attempt of the unit may be replacing it now
                try:
                    os.rename(dst, old)
                except FileNotFoundError:
                    pass
                shutil.rmtree(old, ignore_errors=True)
            replace_dir(tmp, dst)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return record


@dataclass
class UnitRun:
    """What `run_units` did: units run now, kept as they were, removed; failures; the record of every current unit."""

    ran: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    records: dict[str, dict] = field(default_factory=dict)  # rel -> record, sorted by rel, failed units absent
    timings: dict[str, dict] = field(default_factory=dict)  # rel -> the `timing` entry of each unit run now

    def summary(self) -> dict:
        return {"units": len(self.records) + len(self.failures), "units_run": len(self.ran),
                "units_kept": len(self.kept), "units_removed": len(self.removed), "units_failed": len(self.failures)}


def _remove_unit(folder: Path, extras: Path | None) -> None:
    rec = read_key_file(folder) or {}
    for name in rec.get("extras") or {}:
        if extras is not None:
            (extras / name).unlink(missing_ok=True)
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    else:
        folder.unlink(missing_ok=True)


def _sweep(out: Path, keep_units: set[str], extras: Path | None) -> list[str]:
    """Remove every entry of `out` that is not the marker nor a folder of `keep_units` (unit folders of units that
    vanished or must run again, a former layout's files, stale temporaries). `out` is geoface's output folder."""
    removed = []
    subjects = {k.split("/", 1)[0] for k in keep_units}
    for top in sorted(out.iterdir()):
        if top.name == MARKER:
            continue
        if top.name not in subjects or not top.is_dir() or top.is_symlink():
            if top.is_dir() and not top.is_symlink():
                for seq in sorted(top.iterdir()):
                    if seq.is_dir() and (seq / KEY_FILE).is_file():
                        removed.append(f"{top.name}/{seq.name}")
                        _remove_unit(seq, extras)
            _remove_unit(top, None)
            continue
        for seq in sorted(top.iterdir()):
            if f"{top.name}/{seq.name}" not in keep_units:
                if seq.is_dir() and (seq / KEY_FILE).is_file():
                    removed.append(f"{top.name}/{seq.name}")
                _remove_unit(seq, extras)
    return removed


def run_units(executor, fn: Callable, units: Iterable[Unit], out: Path | str, desc: str,
              extras: Path | str | None = None, inputs: Iterable[Path | str] = (), progress: bool = True,
              source: Path | str | None = None, payload: Callable[[Unit], object] | None = None) -> UnitRun:
    """Bring `out` (and `extras`) up to date with `units`: run the units that are not current with
    `executor.map(UnitWork(fn, out, extras), ...)` (flame_fitting.core.executor; connect it before calling, so an
    unreachable cluster changes nothing), remove the outputs of units not in `units`, keep the others untouched.
    `out` (and `extras`) must be geoface's own folders (or absent) of this stage's kind (`desc`, `desc previews`:
    the markers say so, so a capture or another stage's folder given as either is refused, never swept), apart
    from each other; `inputs` must not be inside `out`. `source`: the input folder the units come from; when it holds
    none, AllUnitsFailedError names it before anything is written or removed (a wrong folder given for it).
    `payload(unit)`: what each unit that runs is handed with it (`Unit.payload`; a data stage's: its share of the
    capture, formats.units.unit_payload), made here for those units only (a kept unit needs none)."""
    out = Path(out)
    extras = None if extras is None else Path(extras)
    units = sorted(units, key=lambda u: (u.subject, u.sequence))
    if not units and source is not None:
        raise AllUnitsFailedError(f"{source}: holds no sequences for the {desc} stage (an empty or wrong input "
                                  f"folder?); {out} was not touched")
    for u in units:  # out/<subject>/<sequence> is written and deleted: never a path that leaves `out`
        why = name_problem(u.subject) or name_problem(u.sequence)
        if why:
            raise GeofaceError(f"{out}: work unit {u.subject!r}/{u.sequence!r}: a name {why}")
    others = list(inputs) + ([extras] if extras is not None else [])
    check_output_dir(out, others, overwrite=True, kind=desc)
    if extras is not None:
        check_output_dir(extras, list(inputs) + [out], overwrite=True, kind=f"{desc} previews")
        mark_output(extras, f"{desc} previews")
    mark_output(out, desc)
    run = UnitRun()
    todo = []
    # each unit's key file is parsed once a run: rel -> the key file of a unit kept (as its currency check read it)
    # or run now (as `_visible` read it); a unit re-run or removed has none
    parsed: dict[str, dict] = {}
    for u in units:
        rec = current_key_file(out / u.subject / u.sequence, u.key, extras)
        if rec is None:
            todo.append(u)
        else:
            run.kept.append(u.rel)
            parsed[u.rel] = rec
    to_run = {u.rel for u in todo}
    if payload is not None:
        todo = [replace(u, payload=payload(u)) for u in todo]
    run.removed = [r for r in _sweep(out, set(run.kept), extras) if r not in to_run]
    try:
        results = [_visible(out, r, parsed)
                   for r in executor.map(UnitWork(fn, out, extras), todo, desc=desc, progress=progress)]
    finally:  # every unit returned, or the stage was interrupted (Ctrl-C, SIGTERM: the pool's processes are stopped)
        with interrupts_held():  # a second Ctrl-C / SIGTERM (delivered after it) stopped the sweep: temporaries stayed
            _remove_temporaries(out, extras)
    for r in results:
        if r.ok:
            run.ran.append(r.item.rel)
            if isinstance(r.value, dict) and isinstance(r.value.get(TIMING), dict):
                run.timings[r.item.rel] = r.value[TIMING]
        else:
            parsed.pop(r.item.rel, None)
            _remove_unit(out / r.item.subject / r.item.sequence, extras)
            if (out / r.item.subject).is_dir() and not any((out / r.item.subject).iterdir()):
                (out / r.item.subject).rmdir()
            run.failures.append({"subject": r.item.subject, "sequence": r.item.sequence, "error": r.error,
                                 "traceback": r.traceback})
    if extras is not None:  # extras no current unit lists (a killed worker's, a former layout's) go
        listed = {n for u in units for n in (parsed.get(u.rel) or {}).get("extras") or {}}
        for p in sorted(extras.rglob("*")):
            if p.is_file() and p.name != MARKER and p.relative_to(extras).as_posix() not in listed:
                p.unlink()
    for u in units:
        rec = parsed.get(u.rel)
        if rec is not None and rec.get("key") == u.key:
            run.records[u.rel] = rec.get("record") or {}
    return run


def _visible(out: Path, r, parsed: dict[str, dict]):
    """`r` (a UnitResult), or a failed one when its unit reported success but this process does not see the unit's
    output (its key file): a Ray worker on another machine that wrote to its own disk, not to a file system the
    stage's machine shares at the same path. The key file read is kept in `parsed` (run_units)."""
    if not r.ok:
        return r
    folder = out / r.item.subject / r.item.sequence
    rec = read_key_file(folder)
    if rec is not None and rec.get("key") == r.item.key:
        parsed[r.item.rel] = rec
        return r
    return type(r)(r.item, False, None, f"OutputNotVisible: the unit finished on its worker but {folder.resolve()} "
                   "does not hold its output here (executor ray needs every node to see the stage's folders at the "
                   "same path, on a shared file system)", "", r.seconds)


def _remove_temporaries(out: Path, extras: Path | None = None) -> None:
    """Every temporary left in `out/` and `out/<subject>/` (and in `extras`' folders) once all units returned, or
    the stage was interrupted and its pool's busy processes were stopped mid-unit (whichever host or process wrote
    it: a unit whose worker was lost and was retried elsewhere leaves its first attempt's; `clean_stale` only
    removes this host's), so the folder DVC hashes holds the units' outputs only."""
    tops = [out, *(p for p in out.iterdir() if p.is_dir() and not p.is_symlink())]
    if extras is not None and extras.is_dir():  # previews: written file by file (fileio.atomic_write), any depth
        tops += [extras, *(p for p in extras.rglob("*") if p.is_dir() and not p.is_symlink()
                           and TMP_TAG not in p.relative_to(extras).as_posix())]
    for top in tops:
        for p in top.iterdir():
            if TMP_TAG in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


class AllUnitsFailedError(GeofaceError, RuntimeError):
    """Every work unit of a stage failed: its output holds nothing a later stage could use."""


def write_unit_failures(path: Path | str, run: UnitRun) -> None:
    """The failed units of a run as JSON (subject, sequence, error, traceback), [] when none. One failed unit is
    recorded and the others go on, with one warning line on stderr naming `path`, how many failed and the first
    (exit status 0: the other units' outputs are good); when EVERY unit failed (none ran or was kept), or there was
    none, this raises AllUnitsFailedError after writing, so the stage exits non-zero instead of handing an empty
    folder on."""
    write_json(path, run.failures, indent=1)
    if not (run.failures or run.ran or run.kept):
        raise AllUnitsFailedError(f"{Path(path).parent}: no work units — the stage's inputs hold no sequences "
                                  "(an empty or wrong input folder?)")
    if run.failures and not run.ran and not run.kept:
        first = run.failures[0]
        raise AllUnitsFailedError(f"{path}: all {len(run.failures)} work unit(s) failed, none left in the output "
                                  f"(first, {first['subject']}/{first['sequence']}: {first['error']})")
    if run.failures:
        first = run.failures[0]
        print(f"warning: {terminal_safe(path)}: {len(run.failures)} of {len(run.failures) + len(run.records)} work "
              f"unit(s) failed, the others are in the output; the next run tries them again (first, "
              f"{terminal_safe(first['subject'])}/{terminal_safe(first['sequence'])}: {terminal_safe(first['error'])})",
              file=sys.stderr)
