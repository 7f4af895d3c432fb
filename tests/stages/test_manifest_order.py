"""The order of a capture's manifest rows changes no result. Researchers write manifests by hand or with their own
tools (a pandas sort, several imports concatenated), and docs/capture_format.md defines a capture by its rows, not
their order. A 2-subject synthetic capture (2 frames, 3 low-resolution views) goes through the five data stages (their
library functions, real MediaPipe), the capture version, `diff-captures` and both fit exports; then the same capture
with its manifest rows shuffled, and with them sorted frame-major (the subjects' rows interleaved, cameras reversed):
every output, preview and key file is byte-identical, the metrics equal (run times aside), the capture the same.

Before 2026-12-07 load_capture kept the file's row order and a landmarks unit wrote its detections.parquet and
points.npy in it: other bytes in data/landmarks, hence another key for every fit unit (which hashes those files), and
the landmarks metrics summed the ground-truth errors in the rows' order (pixel_error_mean 1.0161644 against 1.0161645
px on this capture). Now load_capture hands every reader the rows in canonical order (formats/capture_order.py)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from unit_capture import build, run_data_stages

from flame_fitting.core.executor import ExecutorConfig
from flame_fitting.core.unit_keys import KEY_FILE
from flame_fitting.formats.capture import capture_index, capture_version, load_capture
from flame_fitting.formats.capture_version import diff_indexes
from flame_fitting.formats.export_nerfstudio import export_nerfstudio
from flame_fitting.formats.export_vhap import export_vhap

LOCAL = ExecutorConfig(kind="local", workers=1)
TIMES = {"s_per_frame", "bake_ms_median"}  # run times: the only metrics that may differ between two runs
WHERE = {"capture", "fits", "out"}  # an export.json's folders, which differ by construction


def reordered(src, dst, order):
    """`dst` := the capture `src` (files copied byte for byte, capture.json included) with its manifest rows in
    `order(manifest)`."""
    shutil.copytree(src, dst)
    m = pd.read_parquet(src / "manifest.parquet")
    order(m).reset_index(drop=True).to_parquet(dst / "manifest.parquet", index=False)
    return dst


ORDERS = {
    "shuffled": lambda m: m.iloc[np.random.default_rng(5).permutation(len(m))],
    "frame-major": lambda m: m.sort_values(["frame", "camera", "subject"], ascending=[True, False, True]),
}


def files(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "export.json"}


def export_summary(folder):
    return {k: v for k, v in json.loads((folder / "export.json").read_text()).items() if k not in WHERE}


def run_all(cap, head, root):
    """The data stages, both exports, the version and the loaded manifest of `cap`, into `root`."""
    metrics = run_data_stages(cap, head, root / "data", LOCAL)
    export_vhap(cap, root / "data" / "fits", root / "vhap")
    export_nerfstudio(cap, root / "data" / "fits", root / "nerfstudio")
    metrics = {s: {k: v for k, v in m.items() if k not in TIMES} for s, m in metrics.items()}
    keys = {p.parent.relative_to(root / "data").as_posix(): json.loads(p.read_text())["key"]
            for p in sorted((root / "data").rglob(KEY_FILE))}
    return dict(metrics=metrics, keys=keys, files=files(root), version=capture_version(cap),
                content=capture_index(cap).version, manifest=load_capture(cap).manifest,
                rows=pd.read_parquet(cap / "manifest.parquet"),
                exports={e: export_summary(root / e) for e in ("vhap", "nerfstudio")})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("order")
    head, cap = build(root, subjects=2, cameras=3, resolution=160, frames=2)
    out = {"written": run_all(cap, head, root / "written")}
    for name, order in ORDERS.items():
        out[name] = run_all(reordered(cap, root / f"capture_{name}", order), head, root / name)
        out[name]["diff"] = diff_indexes(capture_index(cap), capture_index(root / f"capture_{name}"))
    return out


@pytest.mark.parametrize("name", list(ORDERS))
def test_the_reordered_manifests_interleave_the_sequences(runs, name):
    """The case is real: the file's rows put a row of one subject between two rows of the other."""
    m = runs[name]["rows"]
    first = (m.subject == m.subject.iat[0]).to_numpy(int)
    assert len(m) == 12 and np.count_nonzero(np.diff(first)) >= 2


@pytest.mark.parametrize("name", list(ORDERS))
def test_manifest_order_changes_no_result(runs, name):
    want, got = runs["written"], runs[name]
    assert got["version"] == got["content"] == want["version"] == want["content"]
    assert got["diff"]["identical"] and got["diff"]["same"]  # `geoface diff-captures`
    differ = sorted(k for k in set(want["files"]) | set(got["files"]) if want["files"].get(k) != got["files"].get(k))
    assert not differ, f"{name}: {len(differ)} files differ: {differ}"
    assert got["keys"] == want["keys"] and len(want["keys"]) == 10  # 5 stages × 2 sequences
    assert got["metrics"] == want["metrics"]
    assert got["exports"] == want["exports"]
    pd.testing.assert_frame_equal(got["manifest"], want["manifest"])  # the readers see the writer's order
    assert want["metrics"]["landmarks"]["n_detected"] == 12 and want["metrics"]["dataset"]["samples_test"] == 2
