"""The landmarks stage's metrics from its units' records (flame_fitting/landmarks/capture.py `units_metrics`): taken
by sequence (`Capture.sequence_rows`) instead of a Python loop over every manifest row, equal to that loop (kept here
as the reference) on random manifests in the writer's order, with failed units left out, and to a row-by-row loop that
pairs each unit's views with its own rows where the manifest interleaves sequences (the loop it replaces paired a
unit's detections with other sequences' yaws there). Timing: benchmarks/landmark_metrics.py."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flame_fitting.formats.capture import Capture
from flame_fitting.landmarks.capture import summaries_metrics, table_summary, units_metrics


def random_capture(seed: int, interleave: bool) -> tuple[Capture, dict[str, dict]]:
    """A manifest of 3-6 subjects × 1-2 sequences × random frames × 4 cameras with yaws (the writer's order, or
    its rows shuffled so that sequences interleave), and a record per sequence as `detect_unit` writes it (the
    sequence's rows in manifest order), one of them failed (no record)."""
    rng = np.random.default_rng(seed)
    rows = [(f"s{i}" if i % 2 else f"s{i}-b", f"q{j}", f, f"cam{c}")
            for i in range(rng.integers(3, 7)) for j in range(rng.integers(1, 3))
            for f in range(rng.integers(1, 5)) for c in range(4)]
    m = pd.DataFrame(rows, columns=["subject", "sequence", "frame", "camera"])
    m = m.sort_values(["subject", "sequence", "frame", "camera"]).reset_index(drop=True)
    m["yaw_deg"] = rng.uniform(-90, 90, len(m))
    if interleave:
        m = m.iloc[rng.permutation(len(m))].reset_index(drop=True)
    cap = Capture(Path("unused"), m, {})
    records = {}
    for (s, q), g in m.groupby(["subject", "sequence"], sort=False):
        det = rng.random(len(g)) < 0.7
        many = rng.random(len(g)) < 0.2
        table = pd.DataFrame({"detected": det, "reason": np.where(det, "", np.array(["no_face", "too_small"])[
            rng.integers(0, 2, len(g))]), "multiple_faces": many,
            "face_choice": np.where(many, np.array(["consistent", "largest"])[rng.integers(0, 2, len(g))], "")})
        err = np.where(det, rng.uniform(0, 5, len(g)), np.nan)
        records[f"{s}/{q}"] = {"n_images": len(g), "gt_error_px": [None if np.isnan(e) else float(e) for e in err],
                               **table_summary(table)}
    records.pop(sorted(records)[1])  # a failed unit: no record, its rows are not counted
    return cap, records


def loop_reference(cap: Capture, records: dict[str, dict]) -> dict:
    """What detect_folder did before: the rows of the done units by a loop over every manifest row, the units in
    the order of their first row."""
    done = {tuple(k.split("/", 1)) for k in records}
    m = cap.manifest
    ok = cap.manifest[[(s, q) in done for s, q in zip(m.subject, m.sequence)]].reset_index(drop=True)
    order = dict.fromkeys(f"{s}/{q}" for s, q in zip(ok.subject, ok.sequence))
    err = [np.asarray(records[k]["gt_error_px"], np.float64) for k in order]
    err = np.concatenate(err).astype(np.float32) if err else np.zeros(0, np.float32)
    return summaries_metrics(ok, [records[k] for k in order], err)


def row_by_row_reference(cap: Capture, records: dict[str, dict]) -> dict:
    """Each view's yaw, detection and error paired row by row: the units in the order of their first row, each
    unit's rows in manifest order (as its record holds them)."""
    m = cap.manifest
    keys = [f"{s}/{q}" for s, q in zip(m.subject, m.sequence)]
    order = dict.fromkeys(k for k in keys if k in records)
    rows = [i for k in order for i, key in enumerate(keys) if key == k]
    err = np.array([e for k in order for e in records[k]["gt_error_px"]], np.float64).astype(np.float32)
    return summaries_metrics(m.iloc[rows].reset_index(drop=True), [records[k] for k in order], err)


@pytest.mark.parametrize("seed", range(6))
def test_units_metrics_equal_the_row_loop_in_the_writers_order(seed):
    cap, records = random_capture(seed, interleave=False)
    got = units_metrics(cap, records)
    assert got["n_images"] == sum(r["n_images"] for r in records.values()) < len(cap.manifest)
    assert json.dumps(got) == json.dumps(loop_reference(cap, records)) == json.dumps(
        row_by_row_reference(cap, records))  # every value, and the order of every dict


@pytest.mark.parametrize("seed", range(6))
def test_units_metrics_pair_each_view_with_its_own_yaw_in_an_interleaved_manifest(seed):
    """A hand-made manifest may interleave sequences (load_capture takes it; formats/units.py gathers a unit's rows):
    each unit's detections and errors still meet their own rows' yaws."""
    cap, records = random_capture(seed, interleave=True)
    got = units_metrics(cap, records)
    assert json.dumps(got) == json.dumps(row_by_row_reference(cap, records))
    old = loop_reference(cap, records)  # the loop before: the same counts, but yaws of other sequences' views
    assert {k: old[k] for k in ("n_images", "n_detected", "failures")} == {k: got[k] for k in ("n_images",
                                                                                                  "n_detected", "failures")}

def test_no_unit_done_gives_empty_metrics():
    cap, _ = random_capture(0, interleave=False)
    assert units_metrics(cap, {}) == loop_reference(cap, {})
