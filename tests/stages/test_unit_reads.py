"""The keys of the uv, correspondences and dataset units hash exactly the files of their input unit folders that the
units read (issue 16 item 1: a stage re-runs only the units whose key changed). A fit folder also holds status.json,
history.csv and residuals.parquet, which no later stage reads, and a UV folder holds the position maps (.npz) which
the dataset does not read (it bakes its maps from the .canonical.npy): their keys hashed the whole folders, so an
edit of a fit's status.json (a fit run without overlays drops their list from it) re-ran every uv, correspondences
and dataset unit and changed every one of their key files, though no byte of a shard, map or correspondence did.

Each case edits one input file of a 1-subject pipeline (bytes changed, content still valid), runs the later stages
incrementally, and checks which units ran and that every output and preview equals, byte for byte (key files
included), the same stages run from nothing on the edited inputs. A second test checks that every geoface module a
stage imports is in the code its unit keys hash (the dataset's left out geoface_model/__init__.py and
shard_names.py, which decides which shards write_shard refuses)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from unit_capture import EXTRAS, OUTS, build, run_data_stages

from flame_fitting.core.executor import ExecutorConfig

LOCAL = ExecutorConfig(kind="local", workers=1)
ROOT = Path(__file__).resolve().parents[2]
AFTER = {"fits": ("uv", "correspondences", "dataset"), "uv": ("correspondences", "dataset"),
         "correspondences": ("dataset",)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("reads")
    head, cap = build(root, subjects=1)
    run_data_stages(cap, head, root / "data", LOCAL)
    return dict(head=head, cap=cap, data=root / "data")


def resave_npz(path: Path) -> None:
    """The same arrays in other bytes (compressed if they were not, else not)."""
    before = path.read_bytes()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez_compressed(path, **arrays)
    if path.read_bytes() == before:
        np.savez(path, **arrays)


def shift_npy(path: Path) -> None:
    np.save(path, np.load(path) + np.float32(1e-4))


def edit_json(path: Path) -> None:
    obj = json.loads(path.read_text())
    if "frames" in obj:
        obj["note"] = "edited"  # status.json: an entry no reader looks at
    path.write_text(json.dumps(obj, indent=4))


def edit_history(path: Path) -> None:
    path.write_text(path.read_text().replace("\n", "\r\n"))


def resave_parquet(path: Path) -> None:
    pd.read_parquet(path).to_parquet(path, index=False, compression="gzip")


# (folder, file of the unit, edit, {stage: units run}): every stage after the folder runs, the others keep their unit
CASES = {
    "fit status.json": ("fits", "status.json", edit_json, {}),
    "fit history.csv": ("fits", "history.csv", edit_history, {}),
    "fit residuals.parquet": ("fits", "residuals.parquet", resave_parquet, {}),
    "fit fit.npz": ("fits", "fit.npz", resave_npz, {"uv": 1, "correspondences": 1, "dataset": 1}),
    "fit cameras.json": ("fits", "cameras.json", edit_json, {"correspondences": 1, "dataset": 1}),
    "uv posmap": ("uv", "00000.npz", resave_npz, {"correspondences": 1}),
    "uv canonical mesh": ("uv", "00000.canonical.npy", shift_npy, {"correspondences": 1, "dataset": 1}),
    "correspondences": ("correspondences", "00000.npz", resave_npz, {"dataset": 1}),
}


def snapshot(data: Path, stages) -> dict:
    out = {}
    for stage in stages:
        for name in filter(None, (OUTS[stage], EXTRAS.get(stage))):
            root = data / name
            out[name] = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in sorted(root.rglob("*")) if p.is_file()}
    return out


def copy_inputs(src: Path, dst: Path, folder: str) -> None:
    """The folders of `src` up to and including `folder` (landmarks, fits, overlays, uv, ...) into `dst`."""
    order = ["landmarks", "fits", "overlays", "uv", "uv_previews", "correspondences", "corr_previews"]
    last = order.index({"fits": "overlays", "uv": "uv_previews", "correspondences": "corr_previews"}[folder])
    for name in order[:last + 1]:
        shutil.copytree(src / name, dst / name)


@pytest.mark.parametrize("case", list(CASES))
def test_a_unit_re_runs_when_a_file_it_reads_changes_and_only_then(base, tmp_path, case):
    folder, name, edit, expected = CASES[case]
    data = tmp_path / "data"
    shutil.copytree(base["data"], data)
    unit = next((data / folder).glob("*/synthetic"))
    path = unit / name
    before = path.read_bytes()
    edit(path)
    assert path.read_bytes() != before
    stages = AFTER[folder]
    m = run_data_stages(base["cap"], base["head"], data, LOCAL, stages=stages)
    assert {s: m[s]["units_run"] for s in stages} == {s: expected.get(s, 0) for s in stages}
    assert all(m[s]["units_failed"] == 0 and m[s]["units_run"] + m[s]["units_kept"] == 1 for s in stages)
    fresh = tmp_path / "fresh"  # the same stages from nothing on the edited inputs: the same bytes, key files included
    copy_inputs(data, fresh, folder)
    run_data_stages(base["cap"], base["head"], fresh, LOCAL, stages=stages)
    assert snapshot(data, stages) == snapshot(fresh, stages)


# module -> the code its units' keys hash (`code_digest` arguments)
def _stage_code():
    from flame_fitting.fit import run as fit_run
    from flame_fitting.landmarks import capture as landmarks
    from flame_fitting.uv import batch
    from geoface_model import dataset_build

    return {"flame_fitting.landmarks.capture": [landmarks.ROOT / r for r in landmarks.ROOMS],
            "flame_fitting.fit.run": [fit_run.ROOT / r for r in fit_run.ROOMS],
            "flame_fitting.uv.batch": [batch.ROOT / r for r in batch.ROOMS],
            "geoface_model.dataset_build": list(dataset_build.CODE)}


@pytest.mark.parametrize("module", ["flame_fitting.landmarks.capture", "flame_fitting.fit.run",
                                    "flame_fitting.uv.batch", "geoface_model.dataset_build"])
def test_a_stage_key_hashes_every_module_the_stage_imports(module):
    """A code change re-runs a unit only through its key's code digest: a geoface module the stage imports but the
    digest leaves out changes results (or which units fail) while every unit is kept."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items()) " \
           "if n.split('.')[0] in ('flame_fitting', 'geoface_model', 'geoface', 'stages', 'pipelines'))))"
    files = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                      check=True, env={"PYTHONPATH": str(ROOT), "PATH": ""}).stdout)
    ours = {Path(f).resolve() for f in files}
    assert all(p.is_relative_to(ROOT) for p in ours), ours
    assert any(p.name == Path(module.replace(".", "/")).name + ".py" for p in ours)
    hashed = set()
    for p in _stage_code()[module]:
        hashed |= set(p.rglob("*.py")) if p.is_dir() else {p}
    assert sorted(ours - {p.resolve() for p in hashed}) == []


def write_sequence_splits(cap: Path, src: Path, splits: dict[str, str]) -> None:
    """`cap` := the 1-subject capture `src` with a second sequence 'zz' of the same files, each sequence of the split
    `splits[sequence]` (the version id left to be computed from the files)."""
    if not cap.exists():
        shutil.copytree(src, cap)
        for p in (cap / "synth000").iterdir():
            shutil.copytree(p, p.parent / "zz")
    m = pd.read_parquet(src / "manifest.parquet")
    zz = m.assign(sequence="zz", **{c: m[c].str.replace("/synthetic/", "/zz/", regex=False)
                                    for c in ("path", "mask_path", "gt_path") if c in m})
    m = pd.concat([m, zz], ignore_index=True)
    m["split"] = m.sequence.map(splits)
    m.to_parquet(cap / "manifest.parquet", index=False)
    info = {k: v for k, v in json.loads((src / "capture.json").read_text()).items() if k != "version_id"}
    (cap / "capture.json").write_text(json.dumps({**info, "n_images": len(m)}))


@pytest.fixture(scope="module")
def two_sequences(tmp_path_factory):
    root = tmp_path_factory.mktemp("splits")
    head, src = build(root, subjects=1)
    assert list(pd.read_parquet(src / "manifest.parquet").sequence.unique()) == ["synthetic"]
    write_sequence_splits(root / "capture", src, {"synthetic": "train", "zz": "train"})
    run_data_stages(root / "capture", head, root / "data", LOCAL)
    return dict(head=head, src=src, cap=root / "capture", data=root / "data")


def shard_splits(dataset: Path) -> dict[str, str]:
    from geoface_model.data import read_shard_meta
    return {p.parent.name: read_shard_meta(p).split for p in sorted(dataset.glob("*/*/*.safetensors"))}


@pytest.mark.parametrize("moved", ["synthetic", "zz"])
def test_a_sequence_moved_to_another_split_re_runs_its_dataset_unit_and_only_it(two_sequences, tmp_path, moved):
    """A subject whose sequences are of different splits (a held-out sequence, as NeRSemble's benchmark holds out
    sequences of the people it trains on): the dataset unit of a sequence writes that sequence's split into its
    shards, and its key hashed the subject's first row's split. Moving the subject's second sequence ('zz') to test
    kept its unit and its shards said 'train'; moving the first re-ran both units."""
    cap, data = tmp_path / "capture", tmp_path / "data"
    shutil.copytree(two_sequences["cap"], cap)
    shutil.copytree(two_sequences["data"], data)
    assert shard_splits(data / "dataset") == {"synthetic": "train", "zz": "train"}
    splits = {"synthetic": "train", "zz": "train", moved: "test"}
    write_sequence_splits(cap, two_sequences["src"], splits)
    m = run_data_stages(cap, two_sequences["head"], data, LOCAL)  # the split is in no other stage's keys
    assert {s: (m[s]["units_run"], m[s]["units_kept"]) for s in m} == {
        "landmarks": (0, 2), "fit": (0, 2), "uv": (0, 2), "correspondences": (0, 2), "dataset": (1, 1)}
    assert shard_splits(data / "dataset") == splits
    assert (m["dataset"]["samples_train"], m["dataset"]["samples_test"]) == (1, 1)
    fresh = tmp_path / "fresh"  # the dataset from nothing on the same inputs: the same bytes, key files included
    copy_inputs(data, fresh, "correspondences")
    run_data_stages(cap, two_sequences["head"], fresh, LOCAL, stages=("dataset",))
    assert snapshot(data, ("dataset",)) == snapshot(fresh, ("dataset",))
