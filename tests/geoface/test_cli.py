"""The `geoface` command line: every stage's work as a subcommand, --help generated from the params dataclasses,
--version, errors in the CLI's own words, and a real small run (head model -> synthetic capture -> fit -> uv ->
correspondences) through the same library calls as the stages."""
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flame_fitting.core.fileio import MARKER
from cliutil import cli
from geoface.cli import main
from geoface.cli.config import load_class

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["head-model", "import", "landmarks", "fit", "uv", "correspondences", "dataset", "train", "evaluate",
            "generate", "export", "audit", "diff-captures", "remote"]
# subcommand -> the params dataclasses its --help must document (first: bare keys, others: SECTION.KEY)
SECTIONS = {
    ("head-model", "build"): [("", "geoface.steps.head_model:HeadModelParams")],
    ("import",): [("", "pipelines.common:ImportConfig"), ("synthetic", "pipelines.synthetic:SyntheticConfig")],
    ("landmarks",): [("", "flame_fitting.landmarks.capture:LandmarksParams")],
    ("fit",): [("", "flame_fitting.fit.config:FitConfig")],
    ("uv",): [("", "flame_fitting.uv.batch:UVParams")],
    ("correspondences",): [("", "flame_fitting.uv.batch:CorrespondenceParams"),
                           ("tokens", "geoface_model.config:TokensConfig")],
    ("dataset",): [("", "geoface_model.dataset_build:DatasetParams"), ("tokens", "geoface_model.config:TokensConfig")],
    ("train",): [("", "geoface_model.config:TrainConfig"), ("model", "geoface_model.config:ModelConfig"),
                 ("loss", "geoface_model.config:LossConfig"), ("tokens", "geoface_model.config:TokensConfig")],
    ("evaluate",): [("", "geoface_model.evaluate:EvalParams"), ("uv", "flame_fitting.uv.batch:UVParams")],
}




def flat(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_every_subcommand_and_the_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "geoface.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split("options:")[0]
    for name in COMMANDS:
        assert f"\n    {name} " in listed or f"\n    {name}\n" in listed, (name, listed)


def test_python_dash_m_geoface_is_the_command():
    """`python -m geoface` (an environment whose scripts folder is not on PATH) runs the same command line."""
    runs = [subprocess.run([sys.executable, "-m", m, "--version"], cwd=REPO, capture_output=True, text=True,
                           timeout=120) for m in ("geoface", "geoface.cli")]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.startswith("geoface ")


def test_output_into_a_closed_pipe_is_not_a_traceback(monkeypatch):
    """`geoface ... | head`: the reader has closed the pipe before the output is written -> exit 141, no traceback."""
    r, w = os.pipe()
    os.close(r)
    with open(w, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        assert main(["--version"]) == 141


def test_version(capsys):
    from importlib.metadata import version

    rc, out, _ = cli(capsys, "--version")
    assert rc == 0 and out.strip() == f"geoface {version('geoface')}"


@pytest.mark.parametrize("cmd", list(SECTIONS), ids=" ".join)
def test_subcommand_help_documents_its_params_keys(capsys, cmd):
    rc, out, _ = cli(capsys, *cmd, "--help")
    assert rc == 0 and "--set" in out and "--out" in out
    text = flat(out)
    for prefix, ref in SECTIONS[cmd]:
        for f in dataclasses.fields(load_class(ref)):
            key = f"{prefix}.{f.name}" if prefix else f.name
            assert f" {key} " in text, (cmd, key)
            assert flat(f.metadata["doc"]) in text, (cmd, key)
            lo, hi, choices = f.metadata["lo"], f.metadata["hi"], f.metadata["choices"]
            if lo is not None and hi is not None:
                assert f"in [{lo}, {hi}]" in text, (cmd, key)
            if choices:
                assert "one of " + ", ".join(map(str, choices)) in text, (cmd, key)


def test_uv_help_shows_resolution_with_its_range_and_doc(capsys):
    _, out, _ = cli(capsys, "uv", "--help")
    assert "resolution  int = 256, in [16, 4096]\n        side of the UV position map in texels" in out


def test_errors_in_the_cli_words(capsys, tmp_path):
    rc, _, err = cli(capsys, "import", "folder", tmp_path / "nonexistent", "--out", tmp_path / "cap")
    assert rc == 2 and err.strip() == f"geoface import: ROOT {tmp_path / 'nonexistent'} does not exist"
    assert "captures.root" not in err and not (tmp_path / "cap").exists()
    rc, _, err = cli(capsys, "uv", tmp_path, tmp_path, "--out", tmp_path / "uv", "--set", "resolution=8")
    assert rc == 2 and err.strip() == "geoface uv: --set resolution: 8 is below the minimum 16"
    rc, _, err = cli(capsys, "uv", tmp_path, tmp_path, "--out", tmp_path / "uv", "--set", "resolutin=64")
    assert rc == 2 and err.startswith("geoface uv: --set: unknown keys ['resolutin']")
    rc, _, err = cli(capsys, "correspondences", tmp_path / "fits", tmp_path, tmp_path, tmp_path, "--out", tmp_path / "c")
    assert rc == 2 and err.strip() == f"geoface correspondences: FITS {tmp_path / 'fits'} does not exist"
    rc, _, err = cli(capsys, "head-model", "validate", tmp_path / "none")
    assert rc == 2 and err.strip() == f"geoface head-model validate: FOLDER {tmp_path / 'none'} does not exist"
    assert "Traceback" not in err
    params = tmp_path / "p.yaml"
    params.write_text("uv:\n  resolution: 8\ncaptures:\n  source: folder\n  root: /x\n  downscale: 0\n")
    rc, _, err = cli(capsys, "uv", tmp_path, tmp_path, "--out", tmp_path / "uv", "--params", params)
    assert rc == 2 and err.strip() == f"geoface uv: {params}:uv.resolution: 8 is below the minimum 16"
    rc, _, err = cli(capsys, "import", "folder", tmp_path, "--out", tmp_path / "cap", "--params", params)
    assert rc == 2 and err.strip() == f"geoface import: {params}:captures.downscale: 0 is below the minimum 1"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """head-model build -> import synthetic -> fit, through the CLI (1 subject, 1 frame, 4 views at 192²)."""
    d = tmp_path_factory.mktemp("cli")
    steps = [["head-model", "build", "--out", d / "hm", "--preview", d / "hm.png",
              "--set", "n_shape=10", "n_expr=10", "calibrate_landmarks=false"],
             ["import", "synthetic", "--head-model", d / "hm", "--out", d / "cap", "--sheets", d / "sheets",
              "--set", "synthetic.subjects=1", "synthetic.frames=1", "synthetic.cameras=4", "synthetic.resolution=192",
              "synthetic.texture_resolution=256", "synthetic.yaw_range_deg=[-45,45]"],
             ["fit", d / "cap", "--out", d / "fit", "--head-model", d / "hm", "--workers", "1",
              "--set", "iterations=5", "n_shape=10", "n_expr=10"]]
    for args in steps:
        assert main([str(a) for a in args]) == 0, args
    return d


def test_uv_and_correspondences_through_the_cli(capsys, run_dir):
    d = run_dir
    assert (d / "hm.png").is_file() and (d / "sheets" / "synth000.png").is_file()
    assert json.loads((d / "fit" / "metrics.json").read_text())["fit"]["frames_ok"] == 1
    rc, out, err = cli(capsys, "uv", d / "fit" / "fits", d / "hm", "--out", d / "uv", "--previews", d / "uvprev",
                       "--metrics", d / "uv.json", "--set", "resolution=64")
    assert rc == 0, err
    m = json.loads((d / "uv.json").read_text())
    assert m == json.loads(out) and m["n_frames"] == 1 and m["resolution"] == 64 and m["roundtrip_mm_mean"] < 2.0
    version = json.loads((d / "cap" / "capture.json").read_text())["version_id"]  # lineage (issue 16)
    assert m["captures_version"] == version
    assert json.loads((d / "fit" / "metrics.json").read_text())["fit"]["captures_version"] == version
    posmap = np.load(d / "uv" / "synth000" / "synthetic" / "00000.npz")["posmap"]
    assert posmap.shape == (64, 64, 3) and (d / "uv" / MARKER).is_file()
    assert (d / "uvprev" / "synth000_synthetic_00000.png").is_file()

    args = ["correspondences", d / "fit" / "fits", d / "uv", d / "cap", d / "hm", "--out", d / "corr",
            "--metrics", d / "corr.json", "--set", "check_stride=1", "tokens.resolution=32", "tokens.uv_resolution=32"]
    rc, out, err = cli(capsys, *args)
    assert rc == 0, err
    c = json.loads((d / "corr.json").read_text())
    assert c["frames"] == 1 and c["app_tokens"] == 4 and c["geo_tokens"] == 4 and c["empty_views"] == 0
    assert c["cycle_error_px_median"] < 1.0 and c["gt_uv_accuracy"] > 0.5
    # --force: a second run refuses to write into its own output without it; with it, the current sequence is kept
    rc, _, err = cli(capsys, *args)
    assert rc == 2 and "--force" in err and err.startswith("geoface correspondences: ")
    rc, out, err = cli(capsys, *args, "--force")
    assert rc == 0 and (json.loads(out)["units_kept"], json.loads(out)["units_run"]) == (1, 0), err
    # an output folder geoface did not write is never replaced
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("keep")
    rc, _, err = cli(capsys, "uv", d / "fit" / "fits", d / "hm", "--out", d / "mine", "--force")
    assert rc == 2 and "not written by geoface" in err and (d / "mine" / "notes.txt").read_text() == "keep"


def documented_unit_files(stage: str) -> set[str]:
    """The file names docs/scaling.md's "Layout" table gives for one unit folder of `stage`."""
    text = (REPO / "docs" / "scaling.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in text.splitlines() if line.startswith(f"| {stage} |"))
    return {name for name in re.findall(r"`([^`/<>]+\.[a-z]+)`", row)}


def test_the_scaling_docs_layout_names_every_file_of_a_landmarks_and_fit_unit(run_dir):
    """docs/scaling.md "Layout" lists what one unit folder of each data stage holds. Its fit row left out
    noise_model.csv, which every fit with the noise model (FitConfig.noise_model, on by default) writes."""
    for stage, unit in (("landmarks", run_dir / "fit" / "landmarks" / "synth000" / "synthetic"),
                        ("fit", run_dir / "fit" / "fits" / "synth000" / "synthetic")):
        written = {p.name for p in unit.iterdir() if p.is_file() and not p.name.startswith(".")}
        assert written and documented_unit_files(stage) == written, (stage, documented_unit_files(stage), written)


def test_export_of_a_sample_folder(capsys, tmp_path):
    """`geoface export` of a folder as the evaluate stage writes it (mesh.obj without UVs) = export_3dgs of its
    files, reference first."""
    from flame_fitting.core.fileio import write_obj, write_png
    from flame_fitting.formats.capture import save_cameras
    from flame_fitting.geometry.camera import Camera, intrinsics, look_at
    from flame_fitting.geometry.meshes import icosphere
    from geoface_model.export import export_3dgs, read_ply

    v, f = icosphere(2)
    v = (0.1 * v).astype(np.float32)
    cams = [Camera(K=intrinsics(60, 60, 24, 20), world_to_cam=look_at(0.5 * np.array([np.sin(a), 0.1, np.cos(a)]),
                                                                   np.zeros(3)), width=48, height=40, name=f"c{i}")
            for i, a in enumerate(np.radians([-30, 0, 30]))]
    imgs = [(np.random.default_rng(i).random((40, 48, 3)) * 255).astype(np.uint8) for i in range(3)]
    sample = tmp_path / "sample"
    write_png(sample / "reference.png", imgs[1])
    for i in (0, 2):
        write_png(sample / "views" / f"c{i}.png", imgs[i])
    save_cameras(sample / "cameras.json", {c.name: c for c in cams})
    write_obj(sample / "mesh.obj", v, f)
    rc, out, err = cli(capsys, "export", sample, "--out", tmp_path / "gs")
    assert rc == 0, err
    ref = export_3dgs(tmp_path / "ref", [imgs[1], imgs[0], imgs[2]], [cams[1], cams[0], cams[2]], v, f,
                      names=["c1", "c0", "c2"])
    assert json.loads(out) == ref and ref["n_points"] == len(v)
    for name in ref["files"]:  # the mesh went through OBJ text: its points agree to the OBJ's precision
        if name not in ("points3d.ply", "sparse/0/points3D.txt"):
            assert (tmp_path / "gs" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    got, want = read_ply(tmp_path / "gs" / "points3d.ply"), read_ply(tmp_path / "ref" / "points3d.ply")
    for k in ("x", "y", "z"):
        np.testing.assert_allclose(got[k], want[k], atol=1e-6)
    assert (got["red"] == want["red"]).mean() > 0.95
    rc, _, err = cli(capsys, "export", sample, "--out", tmp_path / "gs")
    assert rc == 2 and "--force" in err


@pytest.mark.parametrize("cmd", ["landmarks", "fit", "uv", "correspondences", "dataset"])
def test_the_data_commands_force_says_that_current_sequences_are_kept(capsys, cmd):
    """A data command's --force does not rebuild OUT: run_units keeps every sequence whose key did not change (the
    correspondences run above: units_kept). Its --help said "replace the output folder(s)", so a user re-running
    after adding one subject feared losing hours of fits and did not pass it."""
    rc, out, _ = cli(capsys, cmd, "--help")
    assert rc == 0 and "replace the output folder" not in flat(out)
    assert ("--force write into OUT again when an earlier geoface run wrote it: its sequences whose inputs, params and "
            "code did not change are kept as they are (units_kept)") in flat(out)


def test_every_option_of_every_command_is_documented():
    """`--help` documents every argument of every subcommand (no bare positional or option)."""
    import argparse

    from geoface.cli import parser as build_parser

    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    walk(sp, f"{path} {name}")
            elif not isinstance(a, argparse._HelpAction) and not a.help and a.dest != "command":
                missing.append(f"{path}: {a.option_strings or a.dest}")

    walk(build_parser([]), "geoface")
    assert not missing, missing


def test_bad_outputs_are_refused_in_one_line_and_nothing_is_lost(capsys, run_dir, tmp_path):
    """What a tester found: `fit --out <a user's folder>` overwrote its files; `uv --previews <a capture>` deleted
    the capture; the system's errors about paths (a file where a folder goes, no permission) were tracebacks;
    NaN passed every range check."""
    d = run_dir
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("my own")
    rc, _, err = cli(capsys, "fit", d / "cap", "--out", mine, "--head-model", d / "hm", "--workers", "1")
    assert rc == 2 and "not written by geoface" in err and (mine / "metrics.json").read_text() == "my own"
    cap_files = {p: p.read_bytes() for p in (d / "cap").rglob("*") if p.is_file()}
    rc, _, err = cli(capsys, "uv", d / "fit" / "fits", d / "hm", "--out", tmp_path / "uv", "--previews", d / "cap",
                     "--force")
    assert rc == 2 and "capture output" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (d / "cap").rglob("*") if p.is_file()} == cap_files
    rc, _, err = cli(capsys, "uv", d / "fit" / "fits", d / "hm", "--out", tmp_path / "u2", "--previews", tmp_path / "u2")
    assert rc == 2 and "is the input" in err
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    rc, _, err = cli(capsys, "uv", d / "fit" / "fits", d / "hm", "--out", afile / "uv")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(afile) in err
    rc, _, err = cli(capsys, "fit", d / "cap", "--out", tmp_path / "f", "--head-model", d / "hm", "--set",
                     "lambda_init=.nan")
    assert rc == 2 and err.strip() == "geoface fit: --set lambda_init: nan is not a finite number"
    assert not (tmp_path / "f").exists()


def test_file_options_that_cannot_be_written_are_refused_before_any_work(capsys, run_dir, tmp_path):
    """`--metrics <a folder>` or `--sheets <a file>` failed only after the command's work (the capture, the maps
    written, then a traceback); now one line first and nothing written."""
    d = run_dir
    folder = tmp_path / "adir"
    folder.mkdir()
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    cases = [(["uv", d / "fit" / "fits", d / "hm", "--out", tmp_path / "uv", "--metrics", folder], tmp_path / "uv",
              f"--metrics {folder} is a folder"),
             (["landmarks", d / "cap", "--out", tmp_path / "lmk", "--metrics", afile / "m.json"], tmp_path / "lmk",
              f"{afile} is a file, not a folder"),
             (["import", "synthetic", "--head-model", d / "hm", "--out", tmp_path / "cap", "--sheets", afile],
              tmp_path / "cap", f"--sheets {afile} is a file")]
    for args, out, message in cases:
        rc, _, err = cli(capsys, *args)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not out.exists(), args


def test_an_executor_that_cannot_run_is_one_line_before_anything_is_written(capsys, run_dir, tmp_path):
    """`--executor ray --ray-address` of a cluster nobody answers (the stage's `executor.ray_address`): one line and
    no output folder, also for `fit`, which marks OUT before its two steps; so is a bad --jobs (fit created OUT)."""
    import socket

    d = run_dir
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = {"fit": ["fit", d / "cap", "--head-model", d / "hm", "--landmarks", d / "fit" / "landmarks", "--out"],
            "uv": ["uv", d / "fit" / "fits", d / "hm", "--out"]}
    for cmd, args in runs.items():
        out = tmp_path / cmd
        rc, _, err = cli(capsys, *args, out, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}")
        assert rc == 2 and err.count("\n") == 1 and err.startswith(
            f"geoface {cmd}: executor.ray_address='127.0.0.1:{port}' (--ray-address '127.0.0.1:{port}'): no Ray "
            f"cluster answers at 127.0.0.1:{port} ("), err  # the params key and this command's option (cli/words.py)
        assert err.strip().endswith("or set executor.kind: local (--executor local); nothing was changed"), err
        assert not out.exists(), err
        rc, _, err = cli(capsys, *args, out, "--jobs", "0")
        assert rc == 2 and err.strip() == f"geoface {cmd}: --jobs 0: must be at least 1" and not out.exists(), err


def test_unit_timeout_s_stops_a_sequence_and_changes_no_result(capsys, run_dir, tmp_path):
    """`--unit-timeout-s` reaches the executor as `executor.unit_timeout_s` does from params.yaml: a sequence running
    past it (a UV map at 4096², seconds of work, against 1 s) is stopped and recorded as failed, nothing of it
    written; under a limit it does not reach, the maps are those of a run without one (run in a pool process)."""
    d = run_dir
    uv = ["uv", d / "fit" / "fits", d / "hm", "--set", "resolution=32", "--out"]
    rc, _, err = cli(capsys, *uv, tmp_path / "plain")
    assert rc == 0, err
    rc, out, err = cli(capsys, *uv, tmp_path / "limited", "--unit-timeout-s", "600")
    assert rc == 0 and json.loads(out)["units_run"] == 1, err
    name = Path("synth000", "synthetic", "00000.npz")
    for key, a in np.load(tmp_path / "plain" / name).items():
        np.testing.assert_array_equal(np.load(tmp_path / "limited" / name)[key], a)

    slow = tmp_path / "slow"
    rc, _, err = cli(capsys, "uv", d / "fit" / "fits", d / "hm", "--set", "resolution=4096", "--out", slow,
                     "--unit-timeout-s", "1")
    assert rc == 2 and "all 1 work unit(s) failed" in err and "UnitTimeout: ran past unit_timeout_s=1 s" in err, err
    failures = json.loads((slow / "failures.json").read_text())
    assert [(f["subject"], f["error"]) for f in failures] == [("synth000", "UnitTimeout: ran past unit_timeout_s=1 s")]
    assert not (slow / "synth000").exists()


def test_the_public_api_examples_run_as_written(run_dir, tmp_path, monkeypatch):
    """The example of `geoface.__doc__` and README's "From Python" run as written on a capture in the layout they
    name (data/captures, data/head_model: run_dir's, 1 subject synth000), and the docstring's canonical vertices are
    the uv stage's (`canonical_vertices` of the saved fit arrays). The docstring baked an undefined name."""
    import re
    import textwrap

    import geoface
    from flame_fitting.uv.batch import canonical_vertices

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "captures").symlink_to(run_dir / "cap")
    (tmp_path / "data" / "head_model").symlink_to(run_dir / "hm")
    monkeypatch.chdir(tmp_path)
    docstring = textwrap.dedent(geoface.__doc__.split("::\n", 1)[1].strip("\n").split("\n\n")[0])
    readme = re.search(r"## From Python\n\n```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    for code in (readme, docstring):
        ns: dict = {}
        exec(compile(code, "example", "exec"), ns)  # noqa: S102 - the documented example itself
        assert ns["fit"].frames == [0] and ns["fit"].status[0].status == "ok"
    baked, head = ns["baked"], ns["head"]
    assert baked.posmap.shape == (256, 256, 3) and baked.mask.any()
    np.testing.assert_allclose(ns["canonical"], canonical_vertices(head, ns["fit"].stacked(), 0), atol=1e-6)
