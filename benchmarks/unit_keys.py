"""Benchmark of deciding which work units are current at dataset scale (issue 16 item 1: adding one subject should
cost one subject): the capture's share of every unit's key, computed on every run of every data stage, every unit
kept or not.

A capture in the canonical format whose images need not exist (none is opened for a key: the manifest carries each
image's sha256; `load_capture(check_files=False)`, as the stages load it): --sequences sequences (--per-subject of
them per subject) × --frames frames × --cameras views, its manifest.parquet, capture.json and one cameras.json per
sequence;
--images writes a small stand-in file per image (listed by the keys' walk of each sequence folder, not hashed: the
manifest holds their sha256), --masks one per mask (hashed by the keys, through the file-hash cache, warm). Then, for
each size, the median of --runs:
  load_s           load_capture(check_files=False), once per stage
  keys_s           formats.units.capture_unit_hashes of every unit: what each of the landmarks, fit,
                   correspondences and dataset stages computes for its keys, on a run that keeps every unit
  ms_per_unit, us_per_row   keys_s per unit and per manifest row (flat when the cost is linear in the capture)
  sub_s            formats.units.sub_capture of every unit (the manifest rows a unit's worker restricts the capture
                   to; once per unit run)
  handover_ms, payload_kb   per unit run: its payload made (formats.units.unit_payload) and pickled for its worker
                   (what the pool's pipe sends; unpickling it there costs about as much), and the pickle's size: what
                   a unit's rows cost now (each worker process loaded the whole capture before: load_s, and its memory)
NeRSemble is ~10^5 frames × 16 views (1.6 million rows, thousands of sequences): `--sequences 2000` is that size.

Run: `nice python benchmarks/unit_keys.py --sequences 200 500 2000` (~3 min at these sizes; `--sequences 50 --frames
5` in seconds). The last line is the JSON (one entry per size).
Measured: see docs/scaling.md ("Measured").
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_capture(root: Path, sequences: int, per_subject: int, frames: int, cameras: int, masks: bool,
                 images: bool = False) -> int:
    """A capture at `root` of that size (module docstring), stand-in image and mask files only when asked; returns its
    number of manifest rows."""
    import pandas as pd

    from flame_fitting.core.fileio import atomic_write, write_bytes, write_json
    from flame_fitting.formats.capture import FORMAT, VERSION, save_cameras
    from flame_fitting.geometry.camera import Camera

    K = np.array([[1000.0, 0, 550], [0, 1000.0, 802], [0, 0, 1]])
    w2c = np.eye(4)
    w2c[2, 3] = 1.0
    cams = {f"cam{c:02d}": Camera(K, w2c, 1100, 1604, name=f"cam{c:02d}") for c in range(cameras)}
    seqs = [(f"s{i // per_subject:04d}", f"seq{i % per_subject:03d}") for i in range(sequences)]
    for subject, sequence in seqs:
        (root / subject / sequence).mkdir(parents=True)
        save_cameras(root / subject / sequence / "cameras.json", cams)
    n = sequences * frames * cameras
    si, fi, ci = np.divmod(np.arange(n), frames * cameras)[0], *np.divmod(np.arange(n) % (frames * cameras), cameras)
    subj = np.array([s for s, _ in seqs])[si]
    seq = np.array([q for _, q in seqs])[si]
    cam = np.array(list(cams))[ci]
    folder = np.char.add(np.char.add(np.char.add(subj, "/"), np.char.add(seq, "/")), np.char.zfill(fi.astype(str), 5))
    hexes = np.random.default_rng(0).bytes(32 * n).hex()
    m = pd.DataFrame({"subject": subj, "sequence": seq, "frame": fi, "camera": cam,
                      "path": np.char.add(np.char.add(folder, "/"), np.char.add(cam, ".png")),
                      "width": 1100, "height": 1604, "sha256": [hexes[64 * i:64 * i + 64] for i in range(n)],
                      "split": np.where(si % 10 == 0, "test", "train"), "source": "nersemble"})
    for p in m["path"] if images else ():
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        write_bytes(root / p, b"\x89PNG image stand-in")
    if masks:
        m["mask_path"] = np.char.add(np.char.add(folder, "/masks/"), np.char.add(cam, ".png"))
        m["mask_sha256"] = m["sha256"]
        for p in m["mask_path"]:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            write_bytes(root / p, b"\x89PNG mask stand-in")
    atomic_write(root / "manifest.parquet", lambda f: m.to_parquet(f, index=False))
    write_json(root / "capture.json", {"format": FORMAT, "version": VERSION, "source": "nersemble", "n_images": n})
    return n


def median_s(fn, runs: int) -> float:
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=int, nargs="+", default=[200, 500, 2000], help="capture sizes, in sequences")
    ap.add_argument("--per-subject", type=int, default=10, help="sequences per subject")
    ap.add_argument("--frames", type=int, default=50, help="frames per sequence")
    ap.add_argument("--cameras", type=int, default=16, help="views per frame")
    ap.add_argument("--images", action="store_true", help="a stand-in file per image (listed by the keys, not hashed)")
    ap.add_argument("--masks", action="store_true", help="one mask file per image (hashed by the keys)")
    ap.add_argument("--runs", type=int, default=1, help="timed passes per size (median)")
    a = ap.parse_args()
    from flame_fitting.formats.capture import load_capture
    from flame_fitting.core.unit_keys import Unit
    from flame_fitting.formats.units import capture_unit_hashes, capture_units, sub_capture, unit_payload

    out = []
    with tempfile.TemporaryDirectory(prefix="geoface-unit-keys-") as tmp:
        os.environ.setdefault("GEOFACE_HASH_CACHE", str(Path(tmp) / "sha256.sqlite"))
        for n_seq in a.sequences:
            root = Path(tmp) / f"cap{n_seq}"
            rows = make_capture(root, n_seq, a.per_subject, a.frames, a.cameras, a.masks, a.images)
            time.sleep(2.1)  # the hash cache remembers files older than 2 s only (core/hash_cache.py)
            load_s = median_s(lambda: load_capture(root, check_files=False), a.runs)
            cap = load_capture(root, check_files=False)
            units = capture_units(cap)
            for u in units:  # the cache warm, as on every run after the first
                capture_unit_hashes(cap, u.subject, u.sequence)
            keys_s = median_s(lambda: [capture_unit_hashes(cap, u.subject, u.sequence) for u in units], a.runs)
            sub_s = median_s(lambda: [sub_capture(cap, u.subject, u.sequence) for u in units], a.runs)
            sent = [pickle.dumps(Unit(u.subject, u.sequence, payload=unit_payload(cap, u))) for u in units]
            handover_s = median_s(lambda: [pickle.dumps(Unit(u.subject, u.sequence, payload=unit_payload(cap, u)))
                                           for u in units], a.runs)
            out.append({"sequences": n_seq, "rows": rows, "load_s": round(load_s, 2), "keys_s": round(keys_s, 2),
                        "ms_per_unit": round(keys_s / len(units) * 1e3, 2), "us_per_row": round(keys_s / rows * 1e6, 2),
                        "sub_s": round(sub_s, 2), "handover_ms": round(handover_s / len(units) * 1e3, 3),
                        "payload_kb": round(sum(map(len, sent)) / len(sent) / 1024, 1)})
            print(json.dumps(out[-1]), flush=True)
    print(json.dumps({"frames": a.frames, "cameras": a.cameras, "images": a.images, "masks": a.masks, "sizes": out}))


if __name__ == "__main__":
    main()
