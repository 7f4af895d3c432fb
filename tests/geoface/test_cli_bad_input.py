"""Bad input on the `geoface` command line is one line naming the file (or --set key / option) and what is wrong:
damaged .npz files of a head model or a fit, --set values that are not YAML, --set examples the --help shows,
`audit` given a file, `diff-captures --repo` that is no folder, `export` of a sample with a malformed mesh.obj."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flame_fitting"))
from flame_folder_factory import write_flame_folder  # noqa: E402

from cliutil import cli  # noqa: E402
from geoface.cli.config import build, parse_value  # noqa: E402


def one_line(err: str, prefix: str) -> str:
    """The error line of `geoface CMD` (asserted to be the only stderr line and no traceback)."""
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"^\S+:\s+\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def object_npz(path: Path) -> None:
    np.savez(path, a=np.array([{"x": 1}], dtype=object))


@pytest.mark.parametrize("name", ["FLAME_NEUTRAL.npz", "mediapipe_landmark_embedding.npz"])
@pytest.mark.parametrize("damage", [truncate, object_npz], ids=["truncated", "object"])
def test_head_model_validate_names_a_damaged_npz(capsys, tmp_path, name, damage):
    spec = write_flame_folder(tmp_path / "head", n_lat=6, n_lon=12, n_shape=5, n_expr=5)
    damage(spec.path / name)
    rc, _, err = cli(capsys, "head-model", "validate", spec.path)
    assert rc == 2
    one_line(err, f"geoface head-model validate: {spec.path / name}: ")


@pytest.mark.parametrize("damage", [truncate, object_npz], ids=["truncated", "object"])
def test_uv_names_a_damaged_fit_npz(capsys, tmp_path, damage):
    spec = write_flame_folder(tmp_path / "head", n_lat=6, n_lon=12, n_shape=5, n_expr=5)
    seq = tmp_path / "fits" / "s1" / "seq"
    seq.mkdir(parents=True)
    np.savez_compressed(seq / "fit.npz", frame=np.arange(2), shape=np.zeros((2, 5)), expr=np.zeros((2, 5)),
                        vertices=np.zeros((2, 10, 3)))
    damage(seq / "fit.npz")
    rc, _, err = cli(capsys, "uv", tmp_path / "fits", spec.path, "--out", tmp_path / "uv", "--set", "resolution=16")
    assert rc == 2
    assert str(seq / "fit.npz") in one_line(err, "geoface uv: ")


@pytest.mark.parametrize("value, problem", [("n_shape=[1", "expected ',' or ']'"),
                                            ("n_shape=@x", "found character '@'"),
                                            ("n_shape={a", "expected ',' or '}'")])
def test_set_value_that_is_not_yaml_is_one_line_naming_key_and_value(capsys, tmp_path, value, problem):
    rc, _, err = cli(capsys, "head-model", "build", "--out", tmp_path / "hm", "--set", value)
    assert rc == 2
    line = one_line(err, f"geoface head-model build: --set {value}: not a valid value (")
    assert problem in line and not (tmp_path / "hm").exists()


HEAD = [("head_model", "geoface.steps.head_model:HeadModelParams")]
IMPORT = [("captures", "pipelines.common:ImportConfig"), ("captures.synthetic", "pipelines.synthetic:SyntheticConfig")]
TRAIN = [("train", "geoface_model.config:TrainConfig")]


@pytest.mark.parametrize("cmd, sections", [(["head-model", "build"], HEAD), (["import", "nersemble"], IMPORT),
                                           (["train"], TRAIN)])
def test_the_set_example_of_every_help_builds(capsys, cmd, sections):
    """--help says `e.g. --set KEY=DEFAULT`: that exact override is accepted (None is null for a nullable key)."""
    rc, out, _ = cli(capsys, *cmd, "--help")
    example = re.search(r"e\.g\.\s+--set\s+(\S+)", out).group(1)
    key, _, value = example.partition("=")
    cfg = build(sections, [example])[0]
    assert value != "None" or getattr(cfg, key) is None


def test_set_null_none_and_strings_that_yaml_reads_as_other_types():
    (head,) = build(HEAD, ["path=None"])
    assert head.path is None and build(HEAD, ["path=null"])[0].path is None
    imp, syn = build(IMPORT, ["subjects=None", "subject=017", "sequence=yes", "cameras=[\"00\"]", "synthetic.n_shape=None"])
    assert imp.subjects is None and imp.subject == "017" and imp.sequence == "yes" and imp.cameras == ["00"]
    assert syn.n_shape is None
    (train,) = build(TRAIN, ["mixed_precision=no"])
    assert train.mixed_precision == "no"
    assert parse_value("k", "no", bool) is False and parse_value("k", "3", int) == 3
    assert parse_value("k", "None", str) == "None" and parse_value("k", "@x", str | None) == "@x"


def test_audit_of_a_file_says_it_needs_the_model_folder(capsys, tmp_path):
    f = tmp_path / "params_check.json"
    f.write_text("{}")
    rc, _, err = cli(capsys, "audit", f)
    assert rc == 2
    assert "not a model folder" in one_line(err, f"geoface audit: {f}: ")


def test_diff_captures_repo_that_is_no_folder(capsys, tmp_path):
    rc, _, err = cli(capsys, "diff-captures", "HEAD", tmp_path / "cap", "--repo", tmp_path / "nofile")
    assert rc == 2 and one_line(err, "geoface diff-captures: ") == \
        f"geoface diff-captures: --repo {tmp_path / 'nofile'}: no such folder"
    (tmp_path / "afile.txt").write_text("x")
    rc, _, err = cli(capsys, "diff-captures", "HEAD", tmp_path / "cap", "--repo", tmp_path / "afile.txt")
    assert rc == 2 and one_line(err, "geoface diff-captures: ") == \
        f"geoface diff-captures: --repo {tmp_path / 'afile.txt'}: not a folder"


def sample_folder(root: Path) -> Path:
    from flame_fitting.core.fileio import write_png
    from flame_fitting.formats.capture import save_cameras
    from flame_fitting.geometry.camera import Camera, intrinsics, look_at

    cams = [Camera(K=intrinsics(60, 60, 24, 20), world_to_cam=look_at(0.5 * np.array([np.sin(a), 0.1, np.cos(a)]),
                                                                   np.zeros(3)), width=48, height=40, name=f"c{i}")
            for i, a in enumerate(np.radians([-30, 0, 30]))]
    write_png(root / "reference.png", np.full((40, 48, 3), 128, np.uint8))
    for i in (0, 2):
        write_png(root / "views" / f"c{i}.png", np.full((40, 48, 3), 64 * i, np.uint8))
    save_cameras(root / "cameras.json", {c.name: c for c in cams})
    return root


@pytest.mark.parametrize("mesh, words", [
    ("v 0 0 0\nv 1 0\nf 1 2 1\n", ":2: not a triangle OBJ line (a vertex needs 3 coordinates, got 2)"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", ": a face names vertex 9, the file has 3 vertices"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", ":4: not a triangle OBJ line (vertex index 0"),
    ("v 0 0 0\nv 1 0 0\n", ": no triangles"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", ": not a text OBJ file (not UTF-8)"),
    ("v 0 0 nan\n", ":1: not a triangle OBJ line (non-finite coordinate)"),
])
def test_export_of_a_sample_with_a_bad_mesh_obj_names_it(capsys, tmp_path, mesh, words):
    sample = sample_folder(tmp_path / "sample")
    (sample / "mesh.obj").write_bytes(mesh if isinstance(mesh, bytes) else mesh.encode())
    rc, _, err = cli(capsys, "export", sample, "--out", tmp_path / "gs")
    assert rc == 2
    assert one_line(err, f"geoface export: {sample / 'mesh.obj'}").startswith(
        f"geoface export: {sample / 'mesh.obj'}{words}")
    assert not (tmp_path / "gs").exists()


def test_export_of_a_sample_with_negative_obj_indices(capsys, tmp_path):
    sample = sample_folder(tmp_path / "sample")
    (sample / "mesh.obj").write_text("v 0 0 0\nv 0.01 0 0\nv 0 0.01 0\nf -3 -2 -1\n")
    rc, _, err = cli(capsys, "export", sample, "--out", tmp_path / "gs")
    assert rc == 0, err


@pytest.mark.parametrize("device,why", [("tpu", "choose auto, cpu, cuda or cuda:N"),
                                        ("cuda:99", "cuda:99")])
def test_generate_names_a_device_it_cannot_use(capsys, tmp_path, device, why):
    photo = tmp_path / "face.jpg"
    photo.write_bytes(b"not read: the device is checked first")
    rc, _, err = cli(capsys, "generate", photo, "--out", tmp_path / "out", "--device", device)
    line = one_line(err, "geoface generate: ")
    assert rc != 0 and f"device {device!r}" in line and why in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,words", [
    (["import", "synthetic", "--set", "subjects=3"], "--set subjects: a setting of imported datasets, not used by the "
                                                     "synthetic source (its settings are synthetic.KEY, e.g. --set "
                                                     "synthetic.subjects=..."),
    (["import", "folder", "{tmp}", "--set", "synthetic.subjects=2"], "--set synthetic.subjects: a setting of the "
                                                                     "synthetic source, not used when importing folder"),
])
def test_import_refuses_settings_of_the_other_kind_of_source(capsys, tmp_path, args, words):
    rc, _, err = cli(capsys, *[a.format(tmp=tmp_path) for a in args], "--out", tmp_path / "cap")
    assert rc == 2 and words in one_line(err, "geoface import: ")
    assert not (tmp_path / "cap").exists()


def test_a_bare_set_is_a_usage_error(capsys, tmp_path):
    rc, _, err = cli(capsys, "import", "folder", tmp_path, "--out", tmp_path / "cap", "--set")
    assert rc == 2 and "--set: expected at least one argument" in err


@pytest.mark.parametrize("extra,words", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--guidance", "-1"], "--guidance -1.0: must be at least 0"),
    (["--yaw-range", "60", "-60"], "--yaw-range 60 -60: give MIN <= MAX, both within -180..180 degrees"),
    (["--yaw-range", "0", "270"], "--yaw-range 0 270: give MIN <= MAX, both within -180..180 degrees"),
    (["--pitch", "90"], "--pitch 90: give an elevation between -90 and 90 degrees (exclusive)"),
    (["--pitch", "-120"], "--pitch -120: give an elevation between -90 and 90 degrees (exclusive)"),
    (["--model", "{tmp}/nowhere"], "--model {tmp}/nowhere does not exist (the default is relative to this folder"),
])
def test_generate_checks_its_options_before_any_work(capsys, tmp_path, extra, words):
    photo = tmp_path / "face.jpg"
    photo.write_bytes(b"never read: the options are checked first")
    rc, _, err = cli(capsys, "generate", photo, "--out", tmp_path / "out", *[e.format(tmp=tmp_path) for e in extra])
    assert rc == 2 and words.format(tmp=tmp_path) in one_line(err, "geoface generate: ")
    assert not (tmp_path / "out").exists()


def test_a_params_file_without_the_commands_section_is_refused(capsys, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("stages:\n  fit:\n    cmd: python stages/fit.py\n")  # say dvc.yaml
    rc, _, err = cli(capsys, "uv", tmp_path, tmp_path, "--out", tmp_path / "uv", "--params", other)
    assert rc == 2 and f"{other}: has none of this command's sections (uv)" in one_line(err, "geoface uv: ")
    assert not (tmp_path / "uv").exists()


def test_jobs_below_one_is_refused(capsys, tmp_path):
    rc, _, err = cli(capsys, "uv", tmp_path, tmp_path, "--out", tmp_path / "uv", "--jobs", "0")
    assert rc == 2 and "--jobs 0: must be at least 1" in one_line(err, "geoface uv: ")


DATA_COMMANDS = {"landmarks": 1, "fit": 1, "uv": 2, "correspondences": 4, "dataset": 5}  # command -> its folders
EXECUTOR_KEYS = {"--executor": "kind", "--jobs": "workers", "--ray-address": "ray_address",  # option -> params key
                 "--unit-timeout-s": "unit_timeout_s", "--retries": "retries", "--ray-memory-gb": "ray_memory_gb"}


@pytest.mark.parametrize("cmd", list(DATA_COMMANDS))
def test_executor_options_are_checked_as_params_yaml_executor_is(capsys, tmp_path, cmd):
    """Every data command takes params.yaml's `executor` keys as options (--executor, --jobs, --ray-address,
    --unit-timeout-s, --retries, --ray-memory-gb), refused in ExecutorConfig's words before anything is read or
    written; a Ray option without --executor ray is refused, not ignored."""
    _, out, _ = cli(capsys, cmd, "--help")
    text = " ".join(out.split())
    for option, key in EXECUTOR_KEYS.items():
        assert f"{option} " in text and f"(executor.{key};" in text, (cmd, option)
    args = [cmd, *[tmp_path / "missing"] * DATA_COMMANDS[cmd], "--out", tmp_path / "out"]
    cases = [(["--unit-timeout-s", "0.5"], "--unit-timeout-s: 0.5 is below the minimum 1.0"),
             (["--unit-timeout-s", "nan"], "--unit-timeout-s: nan is not a finite number"),
             (["--executor", "rey"], "--executor: 'rey' not one of ['local', 'ray']"),
             (["--retries", "-1"], "--retries: -1 is below the minimum 0"),
             (["--executor", "ray", "--ray-memory-gb", "-2"], "--ray-memory-gb: -2.0 is below the minimum 0.0"),
             (["--ray-address", "127.0.0.1:6379"], "--ray-address is an option of --executor ray (this run is "
                                                   "--executor local)")]
    for extra, message in cases:
        rc, _, err = cli(capsys, *args, *extra)
        assert rc == 2 and one_line(err, f"geoface {cmd}: ") == f"geoface {cmd}: {message}", (extra, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, name, unknown", [
    (["fit", "CAP", "--out", "OUT", "--refien-cameras"], "geoface fit", "--refien-cameras"),
    (["export", "fits", "--format", "vhap", "C", "F", "--out", "O", "--forse"], "geoface export fits", "--forse"),
    (["head-model", "build", "--out", "O", "--previw", "p.png"], "geoface head-model build", "--previw p.png"),
    (["audit", "--jsn"], "geoface audit", "--jsn")])
def test_a_mistyped_option_is_the_subcommands_error_with_its_usage(capsys, argv, name, unknown):
    """`geoface fit CAP --out OUT --refien-cameras` printed the top-level usage (`usage: geoface [-h] [--version]
    COMMAND ...`) and `geoface: error: ...`, which does not list fit's options."""
    rc, out, err = cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and out == ""
    assert lines[0].startswith(f"usage: {name} ")
    assert lines[-1] == f"{name}: error: unrecognized arguments: {unknown}"


def test_audit_outside_a_dvc_repository_prints_the_cards_lineage_then_one_line(capsys, tmp_path):
    """A model folder outside any DVC repository (copied off a training machine): the audit prints its card's
    lineage, then one line on stderr saying the workspace check needs the DVC repository; exit 2 (the audit cannot be
    made). Before, the one line came alone, nothing of the card. A folder without a card says so; a MODEL_DIR that does
    not exist is the one line alone, as before."""
    import json

    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    card = {"captures_version": "cv-1234", "shards_sha256": "ab" * 32, "head_model_sha256": "cd" * 32,
            "params": {"train": {"steps": 5}, "model": {"width": 16}}, "run_id": "run-7",
            "git": {"commit": "f" * 40, "dirty": True}, "date": "2026-12-07T10:00:00+00:00"}
    (model / "model_card.json").write_text(json.dumps(card))
    rc, out, err = cli(capsys, "audit", model)
    assert rc == 2 and out.splitlines() == [
        f"model:              {model}", "captures version:   cv-1234", f"shards sha256:      {'ab' * 32}",
        f"head model sha256:  {'cd' * 32}", 'params:             {"model": {"width": 16}, "train": {"steps": 5}}',
        "training run:       run-7", f"git commit:         {'f' * 40} (with uncommitted changes)",
        "trained (UTC):      2026-12-07T10:00:00+00:00"], out
    assert one_line(err, f"geoface audit: {model}: not inside a DVC repository (no .dvc folder above it): the "
                         "lineage above is the model card's alone; checking that the workspace still holds the data")
    rc, out, err = cli(capsys, "audit", model, "--json")
    got = json.loads(out)
    assert rc == 2 and got["card"] == card and got["stage"] is None and not got["matches"]
    assert got["workspace_error"].startswith(f"{model}: not inside a DVC repository") and one_line(err, "geoface audit")
    (model / "model_card.json").unlink()
    rc, out, err = cli(capsys, "audit", model)
    assert rc == 2 and f"model card:         unavailable: {model / 'model_card.json'}: missing" in out
    assert out.splitlines()[-1] == f"note: no lineage without {model / 'model_card.json'}" and one_line(err, "geoface")
    rc, out, err = cli(capsys, "audit", tmp_path / "none")
    assert rc == 2 and out == "" and "not inside a DVC repository" in one_line(err, f"geoface audit: {tmp_path}/none")
