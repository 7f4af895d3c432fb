"""The version id of a canonical capture and the difference between two captures (pure: no file access).

A capture's *content* is its images' content hashes and its cameras: one entry per image
(subject, sequence, frame, camera) -> (sha256 of the image, sha256 of its mask or "", split), and the calibration of
every camera of every sequence. The version id is the first 16 hex digits of the SHA-256 of that content written
canonically (entries sorted by key, JSON with sorted keys), so it does not depend on the order of manifest rows or
camera entries, on the image paths, file extensions or file names, or on the free-form parts of capture.json. Two
captures with the same id hold the same pixels, masks, splits and calibrations. Readers: `capture.read_index`
(a folder, or any file source such as a DVC revision), `capture.capture_version`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flame_fitting.core.names import terminal_safe

KEY = ["subject", "sequence", "frame", "camera"]
ID_DIGITS = 16
# a camera is changed when an entry of K, world_to_cam or dist moves by more than this times the largest magnitude of
# its block (`_blocks`, either side): 8.4 float32 ulps (2^-23 of the value at most, one ulp at every storage; a
# conversion such as an export's float32 inverse adds a few). A VHAP export imported back moves world_to_cam by 1 ulp
# (5.96e-8 at entries of 0.5 to 1); what is listed: 0.005 px of K at fx = 5000 px, 1e-6 of a rotation entry, 1.5 µm
# of a translation 1.5 m long
CAMERA_RTOL = 1e-6


@dataclass
class CaptureIndex:
    """The content of a capture. `images`: {(subject, sequence, frame, camera): (sha256, mask sha256 or "", split)};
    `cameras`: {(subject, sequence): {camera name: its cameras.json entry (K, world_to_cam, width, height[, dist])}};
    `where`: the folder (or revision:path) it was read from, for messages."""

    where: str
    images: dict[tuple[str, str, int, str], tuple[str, str, str]]
    cameras: dict[tuple[str, str], dict[str, dict]]

    @property
    def version(self) -> str:
        return version_id(self)


def make_index(where: str, manifest: pd.DataFrame, cameras: dict[tuple[str, str], dict[str, dict]],
               mask_hashes: dict[int, str] | None = None) -> CaptureIndex:
    """The index of a manifest (MANIFEST_COLUMNS; `mask_sha256` when the writer recorded it) and the cameras of its
    sequences. `mask_hashes`: {row position: sha256} for masks the manifest names without a hash."""
    mask_hashes = mask_hashes or {}
    masks = manifest["mask_sha256"].tolist() if "mask_sha256" in manifest.columns else [None] * len(manifest)
    images = {}
    for i, (s, q, f, c, sha, split, m) in enumerate(zip(manifest.subject, manifest.sequence, manifest.frame,
                                                         manifest.camera, manifest.sha256, manifest.split, masks)):
        mask = m if isinstance(m, str) and m else mask_hashes.get(i, "")
        images[(str(s), str(q), int(f), str(c))] = (str(sha), mask, str(split))
    return CaptureIndex(where, images, {(str(s), str(q)): dict(v) for (s, q), v in cameras.items()})


def masks_without_hash(manifest: pd.DataFrame) -> dict[int, str]:
    """{row position: mask path} of the rows whose mask has no recorded hash (captures written before mask_sha256)."""
    if "mask_path" not in manifest.columns:
        return {}
    hashes = manifest["mask_sha256"].tolist() if "mask_sha256" in manifest.columns else [None] * len(manifest)
    return {i: p for i, (p, h) in enumerate(zip(manifest.mask_path.tolist(), hashes))
            if isinstance(p, str) and not (isinstance(h, str) and h)}


def canonical_content(index: CaptureIndex) -> str:
    """The capture's content as one canonical JSON text (what the version id hashes)."""
    images = [[*k, *v] for k, v in sorted(index.images.items())]
    cameras = [[s, q, name, cam] for (s, q), cams in sorted(index.cameras.items())
               for name, cam in sorted(cams.items())]
    return json.dumps({"images": images, "cameras": cameras}, sort_keys=True, separators=(",", ":"))


def version_id(index: CaptureIndex) -> str:
    """16 hex digits identifying the capture's content (module docstring)."""
    return hashlib.sha256(canonical_content(index).encode()).hexdigest()[:ID_DIGITS]


def _split(keys_old: set, keys_new: set) -> tuple[list, list, list]:
    return sorted(keys_new - keys_old), sorted(keys_old - keys_new), sorted(keys_old & keys_new)


def diff_indexes(old: CaptureIndex, new: CaptureIndex) -> dict:
    """Subjects, sequences, frames and cameras added, removed and changed from `old` to `new`. Each level lists only
    what its parent level does not already say: the sequences of an added subject are not listed again, nor the
    frames and cameras of an added sequence, nor the images of an added or removed camera. A frame is changed when
    an image, a mask or an image's split differs (or one side lacks the image); a camera is changed when its
    calibration differs beyond float32 rounding (`camera_changes`, which names the keys); a subject is changed when
    all its images moved from one split to another (then its images' splits are not listed again). `other`: one
    line when the versions differ and nothing above is listed, yet the content differs beyond that rounding (no
    known input; a guard, so that `same` never hides a change). `same`: nothing is listed (the versions are equal,
    or differ only by camera entries `same_camera` holds equal). Names: `subject`, `subject/sequence`,
    `subject/sequence/frame` (5 digits), `subject/sequence/camera`."""
    subj = lambda ix: {k[0] for k in ix.images} | {k[0] for k in ix.cameras}  # noqa: E731
    seqs = lambda ix: {k[:2] for k in ix.images} | set(ix.cameras)  # noqa: E731
    out = {"old": _summary(old), "new": _summary(new)}
    s_add, s_rm, s_both = _split(subj(old), subj(new))
    so, sn = _subject_splits(old), _subject_splits(new)
    moved = {s for s in s_both if len(so.get(s, ())) == len(sn.get(s, ())) == 1 and so[s] != sn[s]}
    out["subjects"] = {"added": s_add, "removed": s_rm,
                       "changed": [f"{s} (split {min(so[s])} -> {min(sn[s])})" for s in sorted(moved)]}
    q_add, q_rm, q_both = _split(seqs(old), seqs(new))
    out["sequences"] = {"added": ["/".join(k) for k in q_add if k[0] in s_both],
                        "removed": ["/".join(k) for k in q_rm if k[0] in s_both], "changed": []}
    frames = {"added": [], "removed": [], "changed": []}
    cameras = {"added": [], "removed": [], "changed": []}
    by_seq_old, by_seq_new = _by_sequence(old), _by_sequence(new)
    for s, q in q_both:
        n_before = sum(map(len, (*frames.values(), *cameras.values())))
        co, cn = old.cameras.get((s, q), {}), new.cameras.get((s, q), {})
        c_add, c_rm, c_both = _split(set(co), set(cn))
        cameras["added"] += [f"{s}/{q}/{c}" for c in c_add]
        cameras["removed"] += [f"{s}/{q}/{c}" for c in c_rm]
        cameras["changed"] += [f"{s}/{q}/{c} ({', '.join(keys)})" for c in c_both
                               for keys in [camera_changes(co[c], cn[c])] if keys]
        fo, fn = by_seq_old.get((s, q), {}), by_seq_new.get((s, q), {})
        f_add, f_rm, f_both = _split(set(fo), set(fn))
        frames["added"] += [f"{s}/{q}/{f:05d}" for f in f_add]
        frames["removed"] += [f"{s}/{q}/{f:05d}" for f in f_rm]
        for f in f_both:
            what = _frame_change(fo[f], fn[f], set(c_add) | set(c_rm), splits=s not in moved)
            if what:
                frames["changed"].append(f"{s}/{q}/{f:05d} ({what})")
        if sum(map(len, (*frames.values(), *cameras.values()))) > n_before:
            out["sequences"]["changed"].append(f"{s}/{q}")
    out["frames"], out["cameras"] = frames, cameras
    out["identical"] = old.version == new.version
    listed = any(out[level][kind] for level in ("subjects", "sequences", "frames", "cameras")
                 for kind in ("added", "removed", "changed"))
    out["other"] = [] if listed or out["identical"] or _tolerated(old, new) else [
        "the content differs in a way no level above names (the version ids hash it): "
        "compare capture_version.canonical_content of both"]
    out["same"] = not listed and not out["other"]
    return out


MATRICES = ("K", "world_to_cam", "dist")  # cameras.json keys compared within CAMERA_RTOL; any other key exactly


def same_camera(a: dict, b: dict) -> bool:
    """Whether two cameras.json entries are one calibration (`camera_changes` lists nothing)."""
    return not camera_changes(a, b)


def camera_changes(a: dict, b: dict) -> list[str]:
    """The keys in which two cameras.json entries differ as calibrations (sorted; ["entry"] when one is not a JSON
    object): every entry of K, world_to_cam and dist (missing: none; a shorter one padded with zeros, as OpenCV reads
    it) within CAMERA_RTOL of the largest magnitude of its block of that matrix on either side (`_blocks`) is the
    same, structure entries (K[1, 0], K[2, :], the last row of world_to_cam) included; a matrix that is not numeric
    and of one shape on both sides, and any other key (width, height), compare exactly as JSON values (32 and 32.0
    differ)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if _json(a) == _json(b) else ["entry"]
    return sorted(k for k in set(a) | set(b) if not _same_value(k, a.get(k, _MISSING), b.get(k, _MISSING)))


_MISSING = object()


def _json(v) -> str | None:
    return None if v is _MISSING else json.dumps(v, sort_keys=True)


def _same_value(key: str, x, y) -> bool:
    if key not in MATRICES:
        return _json(x) == _json(y)
    try:
        a, b = (np.asarray([] if v is _MISSING else v, dtype=np.float64) for v in (x, y))
    except (TypeError, ValueError):
        return _json(x) == _json(y)
    if key == "dist" and a.ndim == b.ndim == 1:
        a, b = (np.pad(v, (0, max(a.size, b.size) - v.size)) for v in (a, b))
    if a.shape != b.shape:
        return False
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return bool(np.array_equal(a, b, equal_nan=True))
    return all(np.abs(a[i] - b[i]).max(initial=0.0) <= CAMERA_RTOL * max(np.abs(a[i]).max(initial=0.0),
                                                                        np.abs(b[i]).max(initial=0.0))
               for i in _blocks(key, a.shape))


def _blocks(key: str, shape: tuple) -> list:
    """The parts of a matrix each compared within CAMERA_RTOL of its own largest magnitude: world_to_cam's rotation,
    translation and last row (one scale for all let a 3 m or a millimetre calibration's translation hide a
    rotation: 5e-4 rad, 2.5 px at f = 5000, was "same" at 1000 units), K's first two rows and its last."""
    if key == "world_to_cam" and len(shape) == 2 and shape[0] >= 3 and shape[1] == 4:
        return [np.s_[:3, :3], np.s_[:3, 3], np.s_[3:, :]]
    if key == "K" and shape == (3, 3):
        return [np.s_[:2, :], np.s_[2:, :]]
    return [np.s_[...]]


def _tolerated(old: CaptureIndex, new: CaptureIndex) -> bool:
    """Whether `new` holds `old`'s content once every camera entry `same_camera` holds equal to old's is old's."""
    cams = {k: {c: old.cameras[k][c] if c in old.cameras.get(k, {}) and same_camera(old.cameras[k][c], e) else e
                for c, e in v.items()} for k, v in new.cameras.items()}
    return canonical_content(CaptureIndex(new.where, new.images, cams)) == canonical_content(old)


def _frame_change(old: dict, new: dict, skip: set, splits: bool) -> str:
    """What differs between one frame's images ({camera: (sha256, mask sha256, split)}) on both sides, the cameras
    in `skip` left out (listed as added or removed cameras), splits only when `splits`; "" when nothing."""
    images, masks, moved = [], [], {}
    for c in sorted((set(old) | set(new)) - skip):
        a, b = old.get(c), new.get(c)
        if a is None or b is None or a[0] != b[0]:
            images.append(c)
        if a is not None and b is not None and a[1] != b[1]:
            masks.append(c)
        if a is not None and b is not None and a[2] != b[2] and splits:
            moved.setdefault((a[2], b[2]), []).append(c)
    parts = [f"{len(images)} image(s): {', '.join(images)}"] if images else []
    parts += [f"{len(masks)} mask(s): {', '.join(masks)}"] if masks else []
    return "; ".join(parts + [f"split {x} -> {y}: {', '.join(cs)}" for (x, y), cs in sorted(moved.items())])


def _subject_splits(index: CaptureIndex) -> dict[str, set[str]]:
    """{subject: the splits of its images}."""
    out: dict = {}
    for k, v in index.images.items():
        out.setdefault(k[0], set()).add(v[2])
    return out


def mixed_splits(index: CaptureIndex) -> list[dict]:
    """[{"sequence": "subject/sequence", "splits": [sorted splits]}] of the sequences whose images are of several
    splits, by sequence: a capture that load_capture (capture_splits.check_sequence_splits), hence every stage,
    refuses, but that the index and the diff read (a hand-edited manifest)."""
    seen: dict[tuple[str, str], set] = {}
    for (s, q, _, _), (_, _, split) in index.images.items():
        seen.setdefault((s, q), set()).add(split)
    return [{"sequence": f"{s}/{q}", "splits": sorted(v)} for (s, q), v in sorted(seen.items()) if len(v) > 1]


def _summary(index: CaptureIndex) -> dict:
    """Where a capture was read, its version, its counts and the sequences that mix splits (`mixed_splits`)."""
    return {"where": index.where, "version": index.version, "subjects": len({k[0] for k in index.images}),
            "sequences": len({k[:2] for k in index.images}), "frames": len({k[:3] for k in index.images}),
            "images": len(index.images), "mixed_splits": mixed_splits(index)}


def _by_sequence(index: CaptureIndex) -> dict[tuple[str, str], dict[int, dict[str, tuple]]]:
    """{(subject, sequence): {frame: {camera: (sha256, mask sha256, split)}}}."""
    out: dict = {}
    for (s, q, f, c), v in index.images.items():
        out.setdefault((s, q), {}).setdefault(f, {})[c] = v
    return out


DIFF_LIMIT = 50  # entries listed per level and kind by `format_diff` (`geoface diff-captures --limit`)


def format_diff(d: dict, limit: int = DIFF_LIMIT) -> str:
    """The diff of `diff_indexes` as text: a header, one count line per level, then one line per entry
    (`+` added, `-` removed, `~` changed), at most `limit` per level and kind (0: all) and then one line saying how
    many more the JSON lists, then the `other` line if any; control characters of the names and folders are escaped
    (terminal_safe)."""
    lines = [f"{side}: {d[side]['where']} (capture version {d[side]['version']}: {d[side]['subjects']} subjects, "
             f"{d[side]['sequences']} sequences, {d[side]['frames']} frames, {d[side]['images']} images)"
             for side in ("old", "new")]
    if d["identical"]:
        return "\n".join(map(terminal_safe, lines + ["identical: same images, masks, splits and cameras"]))
    if d["same"]:
        return "\n".join(map(terminal_safe, lines + [
            f"same: the versions differ only by camera entries within {CAMERA_RTOL:g} of their block's largest "
            "magnitude (float32 rounding, a zero-padded dist, K written as integers: not a change)"]))
    for level in ("subjects", "sequences", "frames", "cameras"):
        e = d[level]
        lines.append(f"{level + ':':11s}{len(e['added']):6d} added {len(e['removed']):6d} removed "
                     f"{len(e['changed']):6d} changed")
    for level in ("subjects", "sequences", "frames", "cameras"):
        name = level[:-1]
        for sign, kind in (("+", "added"), ("-", "removed"), ("~", "changed")):
            items = d[level][kind]
            shown = items[:limit] if limit else items
            lines += [f"  {sign} {name} {x}" for x in shown]
            if len(items) > len(shown):
                lines.append(f"  {sign} … and {len(items) - len(shown)} more {level} {kind} (--json lists all)")
    lines += [f"  ~ other: {x}" for x in d.get("other", [])]
    return "\n".join(map(terminal_safe, lines))  # names and paths of captures from elsewhere: one line each
