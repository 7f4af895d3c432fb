"""What a work unit (one subject + sequence) of a capture consists of, as hashes: the unit's key in every data stage
starts from `capture_unit_hashes` (flame_fitting/core/unit_keys.py, docs/scaling.md)."""
from __future__ import annotations

from pathlib import Path

from flame_fitting.core.hash_cache import file_sha256
from flame_fitting.core.unit_keys import Unit, digest, tree_hashes
from flame_fitting.formats.capture import Capture, load_capture
from flame_fitting.formats.capture_checks import check_image_files


def capture_units(cap: Capture) -> list[Unit]:
    """(subject, sequence) of every sequence of the capture, sorted, without keys."""
    return [Unit(str(s), str(q)) for s, q in sorted(cap.sequences())]


def unit_manifest(cap: Capture, subject: str, sequence: str):
    """The manifest rows of one sequence (a DataFrame, manifest order, the manifest's index), taken by their positions
    (`Capture.sequence_rows`, grouped once per capture): a boolean mask over the whole manifest per sequence made
    the keys of every unit cost units × rows (docs/scaling.md)."""
    m, rows = cap.manifest, cap.sequence_rows.get((subject, sequence))
    if rows is None:
        return m.iloc[:0]
    if rows[-1] - rows[0] + 1 == len(rows):  # one block (a manifest in the writer's order): a slice, not a gather
        return m.iloc[rows[0]:rows[-1] + 1]
    return m.iloc[rows]


def capture_unit_hashes(cap: Capture, subject: str, sequence: str) -> str:
    """One hash of a sequence's share of the capture: its manifest rows (which carry the images' sha256 and sizes)
    without the `split` column (only the dataset stage uses it, and adds it to its own keys: a capture that assigns
    splits anew when subjects are added re-fits nothing), every other file of its folder (cameras.json, masks,
    ground truth), the masks and ground truth its rows name elsewhere without a hash (`files_outside`) and the
    capture's source."""
    rows = unit_manifest(cap, subject, sequence).sort_values(["frame", "camera"]).drop(columns=["split"])
    prefix = f"{subject}/{sequence}/"
    images = {p[len(prefix):] for p in rows.path if p.startswith(prefix)}  # hashed already: the manifest's sha256
    others = tree_hashes(cap.root / subject / sequence, skip=images)
    outside = files_outside(cap, rows, prefix)
    return digest({"rows": rows.to_dict("records"), "files": others, "source": cap.info.get("source"),
                   **({"outside": outside} if outside else {})})  # absent: the keys of before, to the byte


def files_outside(cap: Capture, rows, prefix: str) -> dict[str, str | None]:
    """{path: sha256, None when missing} of the masks and ground-truth files that `rows` name outside the sequence's
    folder (a hand-made manifest may put them anywhere in the capture) and whose hash the manifest does not hold
    (masks without `mask_sha256`, every `gt_path`): the units read them, and a change to one re-ran none of them."""
    recorded = set()
    if "mask_path" in rows.columns and "mask_sha256" in rows.columns:
        recorded = {p for p, h in zip(rows.mask_path, rows.mask_sha256) if isinstance(h, str) and h}
    paths = sorted({p for col in ("mask_path", "gt_path") if col in rows.columns for p in rows[col]
                    if isinstance(p, str) and not p.startswith(prefix) and p not in recorded})
    return {p: file_sha256(cap.root / p) if (cap.root / p).is_file() else None for p in paths}


def sub_capture(cap: Capture, subject: str, sequence: str) -> Capture:
    """The capture restricted to one sequence (same root, manifest rows of that sequence only)."""
    return Capture(cap.root, unit_manifest(cap, subject, sequence).reset_index(drop=True), cap.info)


def unit_payload(cap: Capture, unit: Unit) -> Capture:
    """What a data stage hands each unit it runs (`core.units.run_units`' `payload`): its sequence of the capture the
    stage validated and keyed (`sub_capture`), so the unit's worker reads no manifest (`unit_capture`), with the
    capture.json entries that are single values (format, source, version_id, ...) but not its records, lists and
    tables of the whole capture (an import's per-camera `intrinsics`, `skipped`, `splits`, ...): no unit reads them,
    and every payload carried them (10 MB of capture.json at 2000 NeRSemble sequences: 5.4 MB a unit, not 0.16 MB;
    10 GB of task arguments at once on Ray)."""
    sub = sub_capture(cap, unit.subject, unit.sequence)
    return Capture(sub.root, sub.manifest, {k: v for k, v in cap.info.items() if not isinstance(v, (dict, list))})


def unit_capture(root: Path | str, unit: Unit) -> Capture:
    """One sequence of the capture at `root` as a unit reads it: the rows its stage handed it (`unit_payload`), those
    its key was computed from, else (a unit given without them) the capture loaded here and restricted the same
    way; its image files checked first (`check_image_files`: present, header size = camera's;
    CaptureError naming the file, which fails this unit only). Each worker process loaded and validated the whole
    manifest for its first unit (1.9 s of CPU and 0.66 GB per process at 1.6 M rows, docs/scaling.md "Measured"). The
    stages load the capture without opening an image and leave this check to the units they run: a run that keeps
    every unit reads no image header (it read all of them, in each of the four stages, on every run: 1.6 million
    files per stage at NeRSemble's 10⁵ frames × 16 views)."""
    sub = unit.payload
    if not isinstance(sub, Capture):
        sub = unit_payload(load_capture(root, check_files=False), unit)
    check_image_files(sub)
    return sub
