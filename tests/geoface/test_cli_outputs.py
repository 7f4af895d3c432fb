"""`geoface train` / `evaluate` / `generate` refuse bad input before any work, in one line naming the file, and leave
what was there as it was: a train that cannot start prunes no earlier run and creates no run folder; file outputs
that are folders, or files geoface did not write, are refused before training; evaluate's --out and --plots may not
be one folder or nested; a corrupt geoface_config.json, training metrics JSON or missing LPIPS weights is one line.
Real files throughout: a synthetic shard, a micro training run, a stand-in head model."""
import json
from pathlib import Path

import pytest
import torch

from cliutil import cli
from flame_fitting.head.head_model import load_head_model
from standin_cache import standin_copy
from geoface.cli import main
from geoface_model.config import GeoFaceConfig
from geoface_model.evaluate import EvalParams
from geoface_model.evaluate_run import EvaluateError, evaluate_model
from geoface_model.generate import GenerateError, load_pipeline
from geoface_model.synthetic import make_synthetic_shard
from geoface_model.train_run import TrainError, train_model

TOKENS = dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8)
MICRO = ["tokens.resolution=32", "tokens.patch_size=8", "tokens.uv_resolution=32", "tokens.geo_patch_size=8",
         "model.width=32", "model.depth=2", "model.heads=2", "steps=2", "batch_size=2", "n_ref=1", "n_tgt=2",
         "warmup_steps=1", "checkpoint_every=2", "keep_states=1"]


def snapshot(root: Path) -> dict:
    """Every path under `root` -> its bytes (files) or None (folders): equal snapshots = nothing changed."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A dataset (4 samples × 4 views, 32²) and one finished micro run (keep_states=1): M/, ST/<run id>/,
    M_loss.csv, m.json."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine
    d = tmp_path_factory.mktemp("train")
    make_synthetic_shard(d / "ds" / "train.safetensors", n_samples=4, n_views=4, resolution=32, uv_resolution=32,
                         seed=0)
    assert main(["train", str(d / "ds"), "--out", str(d / "M"), "--state", str(d / "ST"), "--metrics",
                 str(d / "m.json"), "--set", *MICRO]) == 0
    yield d
    torch.set_num_threads(n)


@pytest.mark.parametrize("case", ["tokens mismatch", "no shards", "too few samples"])
def test_a_train_that_cannot_start_leaves_the_state_folder_as_it_was(capsys, root, tmp_path, case):
    """keep_states=1: had the failed start stamped its run, the finished run in ST would have been deleted."""
    data, sets = root / "ds", list(MICRO)
    if case == "tokens mismatch":
        sets = [s for s in sets if not s.startswith("tokens.")]  # default tokens: 64² views, the shard is 32²
    elif case == "no shards":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        sets.append("batch_size=8")  # 4 samples: no batch of 8
    before = snapshot(root / "ST")
    rc, _, err = cli(capsys, "train", data, "--out", tmp_path / "M2", "--state", root / "ST", "--set", *sets)
    line = one_line(err)
    assert rc == 2 and line.startswith("geoface train: ") and str(data) in line
    assert snapshot(root / "ST") == before  # no run pruned, none created or stamped
    # the default state folder beside OUT is not created either
    rc, _, err = cli(capsys, "train", data, "--out", tmp_path / "M3", "--set", *sets)
    assert rc == 2 and sorted(p.name for p in tmp_path.iterdir()) == (["empty"] if case == "no shards" else [])


@pytest.mark.parametrize("option", ["--loss-csv", "--metrics"])
def test_train_refuses_a_folder_as_a_file_output_before_training(capsys, root, tmp_path, option):
    (tmp_path / "dir").mkdir()
    rc, _, err = cli(capsys, "train", root / "ds", "--out", tmp_path / "M", "--state", tmp_path / "ST",
                     option, tmp_path / "dir", "--set", *MICRO)
    assert rc == 2 and one_line(err) == f"geoface train: {option} {tmp_path / 'dir'} is a folder; give the path of a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]  # no model, no state: nothing was trained


def test_train_model_refuses_a_folder_as_loss_csv_before_touching_the_state(root, tmp_path):
    """The library call (the DVC stage's) checks it too."""
    (tmp_path / "dir").mkdir()
    cfg = GeoFaceConfig.from_sections(tokens=TOKENS, model=dict(width=32, depth=2, heads=2),
                                      train=dict(steps=2, batch_size=2, n_ref=1, n_tgt=2))
    with pytest.raises(TrainError, match=r"dir: is a folder; the loss CSV must be the path of a file"):
        train_model(cfg, root / "ds", tmp_path / "ST", tmp_path / "M", tmp_path / "dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]


DEEP = "[" * 100_000 + "]" * 100_000  # beyond the JSON parser's depth: a RecursionError traceback before


@pytest.mark.parametrize("option, text", [("--loss-csv", "step,comment\n1,keep me\n"),
                                          ("--metrics", '{"mine": true}\n'), ("--metrics", DEEP)])
def test_train_never_replaces_a_file_geoface_did_not_write(capsys, root, tmp_path, option, text):
    mine = tmp_path / ("notes.csv" if option == "--loss-csv" else "notes.json")
    mine.write_text(text)
    for force in ([], ["--force"]):
        rc, _, err = cli(capsys, "train", root / "ds", "--out", tmp_path / "M", "--state", tmp_path / "ST",
                         option, mine, "--set", *MICRO, *force)
        assert rc == 2 and "was not written by geoface" in one_line(err) and str(mine) in err
    assert mine.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]


def test_train_replaces_its_own_loss_csv_and_metrics_only_with_force(capsys, root, tmp_path):
    """Files geoface train wrote (the loss CSV's header, the metrics' keys) are replaced with --force."""
    loss, metrics = tmp_path / "loss.csv", tmp_path / "m.json"
    loss.write_bytes((root / "M_loss.csv").read_bytes())
    metrics.write_bytes((root / "m.json").read_bytes())
    args = ["train", root / "ds", "--out", tmp_path / "M", "--state", root / "ST", "--loss-csv", loss,
            "--metrics", metrics, "--set", *MICRO]
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and one_line(err) == (f"geoface train: --loss-csv {loss} exists (written by geoface); "
                                         "pass --force to replace it")
    loss.write_text("step,loss,diffusion_loss\n")  # recognisable as geoface's: replaced with --force
    rc, out, err = cli(capsys, *args, "--force")
    assert rc == 0, err
    assert loss.read_bytes() == (root / "M_loss.csv").read_bytes()  # the finished run of ST, resumed
    m = json.loads(metrics.read_text())
    # nothing left to train: what the finished run published, not the metrics of a resume that trained nothing
    assert m["steps"] == 2 and m["steps_run"] == 2 and m == json.loads(out)
    assert metrics.read_bytes() == (root / "m.json").read_bytes()


@pytest.fixture
def eval_inputs(root, tmp_path):
    """MODEL (the micro run's), DATASET, and existing FITS / HEAD_MODEL folders: every check below comes first."""
    for name in ("fits", "hm"):
        (tmp_path / name).mkdir()
    return [root / "M", root / "ds", tmp_path / "fits", tmp_path / "hm"]


@pytest.mark.parametrize("out,plots", [("e2", "e2"), ("e3", "e3/plots"), ("p/out", "p")])
def test_evaluate_refuses_nested_out_and_plots_before_any_work(capsys, eval_inputs, tmp_path, out, plots):
    rc, _, err = cli(capsys, "evaluate", *eval_inputs, "--out", tmp_path / out, "--plots", tmp_path / plots)
    line = one_line(err)
    assert rc == 2 and f"--out {tmp_path / out} and --plots {tmp_path / plots}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fits", "hm"]  # nothing created


def test_evaluate_refuses_bad_file_options_up_front(capsys, eval_inputs, tmp_path):
    ev = ["evaluate", *eval_inputs, "--out", tmp_path / "e", "--plots", tmp_path / "pl"]
    (tmp_path / "dir").mkdir()
    rc, _, err = cli(capsys, *ev, "--metrics", tmp_path / "dir")
    assert rc == 2 and one_line(err) == f"geoface evaluate: --metrics {tmp_path / 'dir'} is a folder; give the path of a file"
    mine = tmp_path / "mine.json"
    mine.write_text('{"mine": 1}')
    rc, _, err = cli(capsys, *ev, "--metrics", mine, "--force")
    assert rc == 2 and "was not written by geoface" in one_line(err) and json.loads(mine.read_text()) == {"mine": 1}
    for option in ("--loss-csv", "--train-metrics"):
        rc, _, err = cli(capsys, *ev, option, tmp_path / "none")
        assert rc == 2 and one_line(err) == f"geoface evaluate: {option} {tmp_path / 'none'} does not exist"
        rc, _, err = cli(capsys, *ev, option, tmp_path / "dir")
        assert rc == 2 and one_line(err) == f"geoface evaluate: {option} {tmp_path / 'dir'} is not a file"
    bad = tmp_path / "train.json"
    bad.write_text('{"steps": 2, "loss')  # truncated
    rc, _, err = cli(capsys, *ev, "--train-metrics", bad)
    assert rc == 2 and one_line(err).startswith(f"geoface evaluate: {bad}: not valid JSON")
    bad.write_text(DEEP)
    rc, _, err = cli(capsys, *ev, "--train-metrics", bad)
    assert rc == 2 and one_line(err) == f"geoface evaluate: {bad}: not valid JSON (nested too deeply)"
    csv = tmp_path / "loss.csv"
    csv.write_text("hello\n1\n")
    rc, _, err = cli(capsys, *ev, "--loss-csv", csv)
    assert rc == 2 and one_line(err) == f"geoface evaluate: {csv}: not a training loss CSV (no 'step' column)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fits", "hm", "loss.csv", "mine.json", "train.json"]


def test_evaluate_model_checks_report_inputs_before_any_work(eval_inputs, tmp_path):
    """The library call (the DVC stage's): a corrupt training metrics JSON names the file, before anything is written."""
    bad = tmp_path / "train.json"
    bad.write_text("[1, 2]")
    with pytest.raises(EvaluateError, match=rf"{bad}: expected a JSON object"):
        evaluate_model(*eval_inputs, tmp_path / "e", tmp_path / "pl", EvalParams(), train_metrics=bad)
    assert not (tmp_path / "e").exists() and not (tmp_path / "pl").exists()


def test_evaluate_without_lpips_weights_is_one_line_up_front(capsys, eval_inputs, tmp_path):
    rc, _, err = cli(capsys, "evaluate", *eval_inputs, "--out", tmp_path / "e", "--plots", tmp_path / "pl",
                     "--set", f"lpips_weights={tmp_path / 'lpips'}")
    assert rc == 2 and one_line(err) == f"geoface evaluate: {tmp_path / 'lpips'}: LPIPS weights not found"


CORRUPT = {"a list": ("[]", "expected a JSON object"), "truncated": ('{"tokens": {"resolution"', "not valid JSON"),
           "nested too deeply": (DEEP, "not valid JSON (nested too deeply)"),
           "a section of the wrong type": ('{"tokens": {}, "model": [], "loss": {}, "train": {}}', "sections ['model'] are "
                                   "missing or not JSON objects"),
           "a bad value": ('{"tokens": {}, "model": {"width": "wide"}, "loss": {}, "train": {}}',
                           "model.width: expected an integer")}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_model_config_is_one_line_naming_the_file(capsys, root, tmp_path, case):
    text, problem = CORRUPT[case]
    model = tmp_path / "model"
    model.mkdir()
    for f in (root / "M").iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    cfg = model / "geoface_config.json"
    cfg.write_text(text)
    (tmp_path / "fits").mkdir()
    rc, _, err = cli(capsys, "evaluate", model, root / "ds", tmp_path / "fits", tmp_path / "fits", "--out",
                     tmp_path / "e", "--plots", tmp_path / "pl")
    line = one_line(err)
    assert rc == 2 and line.startswith(f"geoface evaluate: {cfg}") and problem in line
    # generation reads the same file through load_pipeline (a bare transformer folder + its config)
    standin_copy(tmp_path / "head", seed=0, n_shape=10, n_expr=10)
    with pytest.raises(GenerateError) as e:
        load_pipeline(model, load_head_model(tmp_path / "head"))
    assert str(e.value).startswith(str(cfg)) and problem in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv", [["landmarks", "CAP", "--out", "OUT"], ["fit", "CAP", "--out", "OUT"],
                                  ["uv", "FITS", "HEAD", "--out", "OUT"],
                                  ["correspondences", "FITS", "UV", "CAP", "HEAD", "--out", "OUT"],
                                  ["dataset", "CAP", "FITS", "UV", "CORR", "HEAD", "--out", "OUT"]])
def test_an_interrupted_data_command_says_its_finished_sequences_stay(argv):
    """Ctrl-C in `geoface fit` keeps the sequences finished before it in OUT (core/units.py, docs/scaling.md), and
    the next run with --force keeps them: the line said "its output folder was not written" (measured: OUT/fits held
    synth000's fit, kept by the re-run, units_kept 1)."""
    from geoface.cli import interrupted_line, parser

    line = interrupted_line(parser(argv).parse_args(argv))
    assert "not written" not in line and "kept in OUT" in line and "--force" in line
    imp = ["import", "colmap", "ROOT", "--out", "OUT"]
    assert "not written" in interrupted_line(parser(imp).parse_args(imp))  # one rename: nothing, or all of it
