"""A training run that cannot write (a full disk, here a file-size limit: writes past it fail with EFBIG), is
interrupted while writing, or finds its run folder's JSON damaged: one line naming the folder or file, no
half-written temporary left taking the space, and the next run resumes or republishes."""
import json
import resource
from contextlib import contextmanager

import pytest
from test_resume_safety import micro  # the same micro config (4 steps, a checkpoint every 2)

from geoface_model.checkpoint import WriteError
from geoface_model.train import train
from geoface_model.train_run import PUBLISHED, run_id, train_model

pytestmark = pytest.mark.usefixtures("one_thread")


@contextmanager
def file_size_limit(nbytes: int):
    """Files of this process cannot grow past `nbytes` (Python ignores SIGXFSZ: the write fails with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def temporaries(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*geoface-tmp*"))


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_half_checkpoint(micro_shards, tmp_path):
    run = tmp_path / "run"
    with file_size_limit(500_000), pytest.raises(WriteError) as e:  # optimizer.bin is ~770 kB
        train(micro(), micro_shards, run, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(run / "checkpoints" / "step_000002") in msg and "resume" in msg
    assert temporaries(tmp_path) == [] and not (run / "checkpoints" / "step_000002").exists()
    m = train(micro(), micro_shards, run, progress=False)  # room again: the run goes on
    assert m["completed"] and m["steps"] == 4


def test_a_full_disk_while_publishing_keeps_the_published_model_and_no_temporary(micro_shards, tmp_path):
    st, model, csv = tmp_path / "state", tmp_path / "model", tmp_path / "loss.csv"
    train_model(micro(), micro_shards, st, model, csv)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    with file_size_limit(300_000), pytest.raises(WriteError) as e:  # the weights are ~390 kB
        train_model(micro(), micro_shards, st, model, csv)
    assert "\n" not in str(e.value) and str(st / run_id(micro(), micro_shards) / "model") in str(e.value)
    assert temporaries(tmp_path) == [] and {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_an_interrupt_while_checkpointing_leaves_no_temporary(micro_shards, tmp_path, monkeypatch):
    import geoface_model.train_checkpoint as tr

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(tr, "save_extra_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(micro(), micro_shards, tmp_path / "run", progress=False)
    assert temporaries(tmp_path) == [] and not (tmp_path / "run" / "checkpoints" / "step_000002").exists()


@pytest.mark.parametrize("name", ["model_card.json", "metrics.json"])
@pytest.mark.parametrize("text, why", [('{"step', "not valid JSON (Unterminated string starting at: line 1 column 2 "
                                                 "(char 1))"),
                                       ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)")])
def test_a_damaged_published_record_is_republished(micro_shards, tmp_path, capsys, name, text, why):
    """A record nested beyond the JSON parser's depth was a RecursionError traceback of the training."""
    st, model, csv = tmp_path / "state", tmp_path / "model", tmp_path / "loss.csv"
    first = train_model(micro(), micro_shards, st, model, csv)
    record = st / run_id(micro(), micro_shards) / PUBLISHED
    (record / name).write_text(text)
    again = train_model(micro(), micro_shards, st, model, csv)
    assert f"train: {record / name}: {why}; publishing the finished run afresh\n" in capsys.readouterr().err
    assert again["steps"] == first["steps"] and json.loads((record / name).read_text())  # written again


def test_a_damaged_run_config_is_one_line_naming_it(micro_shards, tmp_path):
    run = tmp_path / "run"
    train(micro(), micro_shards, run, progress=False, max_steps=2)
    (run / "geoface_config.json").write_text('{"model": {"wid')
    with pytest.raises(ValueError) as e:
        train(micro(), micro_shards, run, progress=False)
    assert "\n" not in str(e.value) and str(run / "geoface_config.json") in str(e.value)
