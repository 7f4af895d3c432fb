"""Shards as untrusted input (a dataset folder from someone else): the names in a shard's header become the
evaluation's file names and reach its report and the terminal. A hostile name is refused by the reader in one line
naming the shard; the evaluation's per-sample file names are collision-free; a sample held twice is refused before any
work. Real shard files: written by the real writer, then their header edited as a hostile file would be."""
import json
import shutil

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from flame_fitting.core.names import NAME_MAX_BYTES, name_key
from geoface_model.config import GeoFaceConfig
from geoface_model.data import GeoFaceDataset, ShardError, read_shard_meta, write_shard
from geoface_model.evaluate import EvalParams
from geoface_model.evaluate_run import EvaluateError, evaluate_model, output_stems
from geoface_model.shard_names import sample_stems
from geoface_model.synthetic import make_synthetic_shard, render_sample


def shard(path, n_samples=2, seed=0):
    make_synthetic_shard(path, n_samples=n_samples, n_views=4, resolution=32, uv_resolution=32, seed=seed,
                         split="test")
    return path


def edit_header(path, edit):
    """Rewrite the shard's 'geoface' header as `edit(header)` leaves it (the tensors unchanged)."""
    with safe_open(str(path), "pt") as f:
        meta, tensors = json.loads(f.metadata()["geoface"]), {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    path.unlink()
    save_file(tensors, str(path), metadata={"geoface": json.dumps(meta)})


def setter(where, value):
    def edit(meta):
        if where == "subjects":
            meta["subjects"][0] = value
        elif where == "samples":
            meta["samples"] = value
        elif where == "cameras":
            meta["samples"][1]["cameras"] = value
        elif where == "camera":
            meta["samples"][1]["cameras"][2] = value
        else:
            meta["samples"][1][where] = value
    return edit


HOSTILE = {
    "subject ..": ("subject", "..", "sample 1: subject '..' starts with '.'"),
    "subject hidden": ("subject", ".x", "sample 1: subject '.x' starts with '.'"),
    "sequence dot: '._.' after the replace": ("sequence", ".", "sample 1: sequence '.' starts with '.'"),
    "absolute-looking subject": ("subject", "/etc", "sample 1: subject '/etc' holds a path separator"),
    "camera leaving the sample folder": ("camera", "../../escaped", "sample 1: camera '../../escaped' holds a path"),
    "NUL": ("sequence", "a\0b", "sample 1: sequence 'a\\x00b' holds a path separator or NUL"),
    "escape sequence": ("camera", "cam\x1b[2J", "sample 1: camera 'cam\\x1b[2J' holds a control"),
    "bidi override": ("subject", "x\u202ey", "sample 1: subject 'x\\u202ey' holds a control"),
    "formula": ("camera", "=HYPERLINK(1)", "sample 1: camera '=HYPERLINK(1)' starts with '='"),
    "10 000 characters": ("camera", "x" * 10_000, "sample 1: camera 'xxxx"),
    "not text": ("subject", 5, "sample 1: subject 5 not text (int)"),
    "frame as text": ("frame", "7", "sample 1: frame '7' is not a 64-bit integer"),
    "frame a boolean": ("frame", True, "sample 1: frame True is not a 64-bit integer"),
    "frame beyond int64": ("frame", 2 ** 70, "is not a 64-bit integer"),
    "too few cameras": ("cameras", ["c0", "c1"], "sample 1: cameras must be a list of the 4 view names"),
    "a camera twice": ("cameras", ["c0", "c1", "c2", "c1"], "sample 1: camera 'c1' is named twice"),
    "cameras one on macOS": ("cameras", ["c0", "Cam", "c2", "cam"], "sample 1: camera 'Cam' is named twice"),
    "a bad name in subjects": ("subjects", "../x", "subject '../x' in 'subjects' holds a path separator"),
    "fewer samples than n_samples": ("samples", [], "'samples' must be a list of the 2 samples (n_samples)"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_shard_with_a_hostile_name_is_refused_in_one_line_naming_it(tmp_path, case):
    where, value, words = HOSTILE[case]
    path = shard(tmp_path / "ds" / "test-0.safetensors")
    edit_header(path, setter(where, value))
    with pytest.raises(ShardError) as e:
        read_shard_meta(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: the 'geoface' metadata's ") and words in msg, msg
    assert len(msg.splitlines()) == 1 and len(msg) < 400 and "\x1b" not in msg and "\0" not in msg, msg
    with pytest.raises(ShardError, match="the 'geoface' metadata's"):  # what train and evaluate read shards with
        GeoFaceDataset(tmp_path / "ds", "test", n_ref=1, n_tgt=2)


def test_the_writer_refuses_a_hostile_name_and_writes_nothing(tmp_path):
    import numpy as np

    s = render_sample(np.random.default_rng(0), 3, 32, 32, 8, 8) | {"subject": "s0", "sequence": "q", "frame": 0,
                                                                      "cameras": ["a", "../b", "c"]}
    with pytest.raises(ShardError, match=r"sample 0: camera '\.\./b' holds a path separator"):
        write_shard(tmp_path / "x.safetensors", [s], split="test", patch_size=8, geo_patch_size=8)
    assert list(tmp_path.iterdir()) == []


def test_names_a_capture_may_hold_are_read(tmp_path):
    """Names like the sources' (NeRSemble EMO-1-shout+laugh, RenderMe-360 0026 / e0, unicode) still read."""
    path = shard(tmp_path / "test-0.safetensors")
    edit_header(path, lambda m: m["samples"][1].update(subject="0026", sequence="EMO-1-shout+laugh", frame=-3,
                                                      cameras=["cam_222200037", "Jos\u00e9", "<img src=x>", "e0"]))
    meta = read_shard_meta(path)
    assert meta.samples[1]["cameras"][1:3] == ["Jos\u00e9", "<img src=x>"] and meta.samples[1]["frame"] == -3


def test_sample_file_names_are_collision_free_and_stable():
    names = ["a_b/c/00000", "a/b_c/00000", "s/q/00001", "S/q/00001", "x" * 128 + "/" + "y" * 128 + "/00000",
             "x" * 128 + "/" + "y" * 128 + "/00001", "\u00e9" * 64 + "/q/00000"]
    stems = sample_stems(names)
    assert stems == sample_stems(names)  # the same in every run
    assert len({name_key(s) for s in stems}) == len(names)  # distinct, also on a case-insensitive file system
    assert all(len(s.encode("utf-8")) <= NAME_MAX_BYTES and "/" not in s for s in stems)
    assert stems[0].startswith("a_b_c_00000~") and stems[1].startswith("a_b_c_00000~") and len(stems[0]) == 24
    assert stems[2].startswith("s_q_00001~") and stems[3].startswith("S_q_00001~")
    assert stems[4].startswith("x" * 100) and stems[4] != stems[5]
    assert stems[6].startswith("\u00e9" * 57) and "\ufffd" not in stems[6]  # cut between characters, not bytes
    assert sample_stems(["s0/q/00007", "s1/q/00007"]) == ["s0_q_00007", "s1_q_00007"]  # the usual names as before


def test_samples_that_shared_an_output_folder_get_their_own(tmp_path):
    """Subjects 'a_b' / 'a' with sequences 'c' / 'b_c': both were written to OUT/a_b_c_00000 (the second sample's
    mkdir failed the whole evaluation with a traceback, after every sample had been generated)."""
    path = shard(tmp_path / "test-0.safetensors")

    def edit(m):
        m["samples"][0].update(subject="a_b", sequence="c", frame=0)
        m["samples"][1].update(subject="a", sequence="b_c", frame=0)
        m["subjects"] = ["a", "a_b"]
    edit_header(path, edit)
    ds = GeoFaceDataset(tmp_path, "test", n_ref=1, n_tgt=2, random_views=False)
    stems = output_stems(ds, 2)
    assert stems[0] != stems[1] and all(s.startswith("a_b_c_00000~") for s in stems)


def test_a_sample_held_twice_is_refused_before_any_work(tmp_path):
    """The same shard twice in a downloaded dataset (`test-0 (1).safetensors`): its samples would be measured twice
    and write the same output folder; refused naming both places, before the fits, model or head are read."""
    a = shard(tmp_path / "ds" / "test-0.safetensors")
    b = tmp_path / "ds" / "test-0 (1).safetensors"
    shutil.copyfile(a, b)
    model = tmp_path / "model"
    model.mkdir()
    (model / "geoface_config.json").write_text(json.dumps(GeoFaceConfig().to_dict()))
    with pytest.raises(EvaluateError) as e:
        evaluate_model(model, tmp_path / "ds", tmp_path / "no-fits", tmp_path / "no-head", tmp_path / "e",
                       tmp_path / "pl", EvalParams(n_targets=2))
    first = read_shard_meta(a).samples[0]
    assert str(e.value) == (f"{a}#0: sample {first['subject']}/{first['sequence']}/00000 is also {b}#0: a dataset "
                            "holds each frame once (its outputs and its place in the means would be the same)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "model"]  # nothing written
