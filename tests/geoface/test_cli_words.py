"""The library's messages name params.yaml keys (`set executor.kind: local`, `train.log_every = 5 is not below ...`);
`geoface CMD` writes beside each key the option of CMD that sets it (geoface/cli/words.py), in its error line and
in the warnings the library writes to stderr while CMD runs. The DVC stage scripts keep the params keys alone. And
the --help of the data commands says of each input folder which command writes it."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cliutil import cli
from geoface.cli import parser
from geoface.cli.words import annotate, options_of
from geoface_model.synthetic import make_synthetic_shard

REPO = Path(__file__).resolve().parents[2]
SNR = ["zero_terminal_snr=true", "model.prediction_type=epsilon"]  # refused by GeoFaceConfig (config.py)


def test_a_train_config_error_names_the_set_keys_of_the_cli(capsys, tmp_path):
    (tmp_path / "ds").mkdir()
    rc, _, err = cli(capsys, "train", tmp_path / "ds", "--out", tmp_path / "M", "--set", *SNR)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("geoface train: train.zero_terminal_snr (--set zero_terminal_snr=...) needs "
                          "model.prediction_type (--set model.prediction_type=...) v_prediction"), err
    assert "(set train.zero_terminal_snr false (--set zero_terminal_snr=false) for ε)" in err, err


def test_the_train_stage_keeps_the_params_keys(tmp_path):
    """The same error from the DVC stage script (what `dvc repro train` runs, in the folder of params.yaml)."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "params.yaml").write_text("train:\n  zero_terminal_snr: true\nmodel:\n  prediction_type: epsilon\n")
    r = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "ds", "--state", "st", "--model", "M",
                        "--loss-csv", "l.csv", "--metrics", "m.json"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode != 0 and "train.zero_terminal_snr needs model.prediction_type v_prediction" in r.stderr
    assert "--set" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_warnings_of_a_training_name_the_set_keys(capsys, tmp_path):
    """train_model prints its config warnings to stderr itself: through the CLI they get the --set keys too."""
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=4, resolution=32,
                         uv_resolution=32, seed=0)
    sets = ["tokens.resolution=32", "tokens.patch_size=8", "tokens.uv_resolution=32", "tokens.geo_patch_size=8",
            "model.width=16", "model.depth=1", "model.heads=2", "steps=2", "log_every=5", "batch_size=2", "n_ref=1",
            "n_tgt=2", "warmup_steps=1", "checkpoint_every=2"]
    rc, out, err = cli(capsys, "train", tmp_path / "ds", "--out", tmp_path / "M", "--set", *sets)
    assert rc == 0, err
    assert "train: warning: train.log_every = 5 (--set log_every=5) is not below train.steps = 2 (--set steps=2)" \
        in err, err
    assert "train: warning: model.width = 16 (--set model.width=16) is below" in err, err
    assert "(--set" not in out  # the result on stdout is left as it is


@pytest.mark.parametrize("cmd", ["landmarks", "fit", "uv", "correspondences", "dataset"])
def test_the_executor_keys_of_a_data_command_are_its_options(cmd):
    args = parser([cmd]).parse_args([cmd, *["x"] * {"landmarks": 1, "fit": 1, "uv": 2}.get(cmd, 4 + (cmd == "dataset")),
                                     "--out", "o"])
    words = options_of(args)
    line = ("executor.ray_address='10.0.0.1:6379': no Ray cluster answers at 10.0.0.1:6379; start one or set "
            "executor.kind: local; the local pool's processes died (executor.retries=3; ...)")
    assert annotate(line, words) == (
        "executor.ray_address='10.0.0.1:6379' (--ray-address '10.0.0.1:6379'): no Ray cluster answers at "
        "10.0.0.1:6379; start one or set executor.kind: local (--executor local); the local pool's processes died "
        "(executor.retries=3 (--retries 3); ...)")
    assert words["executor.workers"] == "--jobs"  # not fit's --workers (the landmark detection's threads)
    # the command's own section: bare --set keys
    assert any(key == f"{cmd}.{name}" and option == f"--set {name}" for key, option in words.items()
               for name in [key.partition(".")[2]])


def test_only_the_keys_a_command_sets_are_given_options():
    """import: an imported dataset's keys bare, the synthetic generator's as synthetic.KEY, each only for its kind
    of source (import refuses the other's --set keys); a command without executor options names none; keys already
    in the CLI's words or after a params file are left alone."""
    folder = options_of(parser(["import"]).parse_args(["import", "folder", "r", "--out", "o"]))
    synthetic = options_of(parser(["import"]).parse_args(["import", "synthetic", "--out", "o"]))
    line = "set captures.follow_symlinks: true; captures.synthetic.n_shape = 10; set captures.cameras to the others"
    assert annotate(line, folder) == ("set captures.follow_symlinks: true (--set follow_symlinks=true); "
                                      "captures.synthetic.n_shape = 10; set captures.cameras (--set cameras=...) to "
                                      "the others")
    assert annotate(line, synthetic) == ("set captures.follow_symlinks: true; captures.synthetic.n_shape = 10 "
                                         "(--set synthetic.n_shape=10); set captures.cameras to the others")
    assert "captures.root" not in folder and "captures.source" not in folder  # the positionals ROOT, SOURCE
    train = options_of(parser(["train"]).parse_args(["train", "d", "--out", "o"]))
    assert "executor.kind" not in train
    for said in ("--set model.width: 3 is below the minimum 8", "p.yaml:train.steps: 0 is below the minimum 1"):
        assert annotate(said, train) == said


DATA_POSITIONALS = {"uv": ["FITS", "HEAD_MODEL"], "correspondences": ["FITS", "UV", "CAPTURES", "HEAD_MODEL"],
                    "dataset": ["CAPTURES", "FITS", "UV", "CORRESPONDENCES", "HEAD_MODEL"],
                    "evaluate": ["MODEL", "DATASET", "FITS", "HEAD_MODEL"]}


@pytest.mark.parametrize("cmd", list(DATA_POSITIONALS))
def test_each_input_folder_says_which_command_writes_it(capsys, cmd):
    """A user of the CLI alone learns from --help what to pass: FITS is OUT/fits of `geoface fit --out OUT` (not
    OUT), every input folder names the command (and stage) that writes it."""
    _, out, _ = cli(capsys, cmd, "--help")
    text = " ".join(out.split())
    said = re.findall(r"(?<= )([A-Z_]+) ([a-zA-Z ]+ folder \(the [a-z_]+ stage; [^)]*\))", text)
    assert [name for name, _ in said] == DATA_POSITIONALS[cmd], text
    assert all("`geoface " in what for _, what in said), said
    assert "FITS fits folder (the fit stage; OUT/fits of `geoface fit --out OUT`)" in text


def test_too_few_views_name_the_key_that_asked_for_them(capsys, tmp_path):
    """A dataset whose samples hold fewer views than a command asks for: the error names the keys of that command.
    Before, `geoface evaluate --set n_targets=5` said `fewer than n_ref + n_tgt = 6`, two keys of the train section
    that evaluate does not have, and `geoface train` named no key at all (no `--set` beside them)."""
    import json

    from geoface_model.config import GeoFaceConfig

    tokens = ["tokens.resolution=32", "tokens.patch_size=8", "tokens.uv_resolution=32", "tokens.geo_patch_size=8"]
    for split in ("train", "test"):
        make_synthetic_shard(tmp_path / "ds" / f"{split}.safetensors", n_samples=2, n_views=4, resolution=32,
                             uv_resolution=32, seed=0, split=split)
    rc, _, err = cli(capsys, "train", tmp_path / "ds", "--out", tmp_path / "M", "--set", *tokens, "n_tgt=5")
    assert rc == 2 and err.strip() == (f"geoface train: {tmp_path / 'ds' / 'train.safetensors'}: samples have 4 views, "
                                       "fewer than the 6 asked (train.n_ref = 1 (--set n_ref=1) + train.n_tgt = 5 "
                                       "(--set n_tgt=5))"), err
    for name in ("model", "fits", "head"):
        (tmp_path / name).mkdir()
    (tmp_path / "model" / "geoface_config.json").write_text(json.dumps(GeoFaceConfig().to_dict()))
    rc, _, err = cli(capsys, "evaluate", tmp_path / "model", tmp_path / "ds", tmp_path / "fits", tmp_path / "head",
                     "--out", tmp_path / "e", "--plots", tmp_path / "p", "--set", "n_targets=5")
    assert rc == 2 and err.strip() == (f"geoface evaluate: {tmp_path / 'ds' / 'test.safetensors'}: samples have 4 "
                                       "views, fewer than the 6 asked (1 reference + eval.n_targets = 5 "
                                       "(--set n_targets=5))"), err
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists()


def test_too_few_samples_for_a_batch_name_the_keys_that_ask(capsys, tmp_path):
    """4 training samples, train.batch_size 8: no batch. The error names the keys (and the CLI their --set) that
    decide it; before it said `4 samples give 0 batches of 8, fewer than grad_accum = 1`, no key the user could set."""
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=4, resolution=32,
                         uv_resolution=32, seed=0)
    tokens = ["tokens.resolution=32", "tokens.patch_size=8", "tokens.uv_resolution=32", "tokens.geo_patch_size=8"]
    rc, _, err = cli(capsys, "train", tmp_path / "ds", "--out", tmp_path / "M", "--set", *tokens, "batch_size=8")
    assert rc == 2 and err.strip() == (
        f"geoface train: {tmp_path / 'ds'}: 4 samples give 0 batches of train.batch_size = 8 (--set batch_size=8), "
        "fewer than train.grad_accum = 1 (--set grad_accum=1) (lower train.batch_size or train.grad_accum, or add "
        "training samples)"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # refused before any work
