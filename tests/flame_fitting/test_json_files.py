"""The one reader of untrusted JSON (flame_fitting/core/json_files.py): a valid document reads as json.loads reads it;
every way a file can be hostile (nested beyond the parser's depth, larger than its kind of file holds, a FIFO, not
UTF-8, an integer of 5000 digits, another JSON type) is one error line naming the file; and the readers of the markers
the toolkit writes into its folders (output_dirs.output_kind, unit_keys.read_key_file), which a folder from elsewhere
may hold damaged, read such a marker as absent (they raised RecursionError before)."""
import json
import os

import pytest

from flame_fitting.core.json_files import parse_json, read_json, read_json_object
from flame_fitting.core.output_dirs import MARKER, output_kind
from flame_fitting.core.unit_keys import KEY_FILE, read_key_file
from flame_fitting.head.flame_spec import HeadModelError, read_head_model_json

DEEP = "[" * 100_000 + "]" * 100_000


class Refused(ValueError):
    pass


@pytest.mark.parametrize("doc", [{"a": [1, 2.5, None, True], "é": "ü"}, [], 3, "x", {"deep": [[[[[[]]]]]]}])
def test_a_valid_document_reads_as_json_loads_reads_it(tmp_path, doc):
    f = tmp_path / "f.json"
    f.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    assert read_json(f, Refused) == json.loads(f.read_text(encoding="utf-8")) == doc
    assert parse_json(f.read_bytes(), f, Refused) == doc


@pytest.mark.parametrize("content, words", [
    (DEEP, "not valid JSON (nested too deeply)"),
    ('{"a": 1', "not valid JSON (Expecting ',' delimiter: line 1 column 8 (char 7))"),
    (b'{"a": "\xff"}', "not valid JSON (not UTF-8 text)"),
    ("1" * 5000, "not valid JSON (Exceeds the limit (4300 digits) for integer string conversion"),
    ("x" * 101, "101 bytes, more than a test file holds (100)")])
def test_a_hostile_file_is_one_error_naming_it(tmp_path, content, words):
    f = tmp_path / "f.json"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(Refused) as e:
        read_json(f, Refused, 100 if content == "x" * 101 else 1 << 20, "test file")
    assert str(e.value).startswith(f"{f}: {words}") and "\n" not in str(e.value)


def test_missing_fifo_and_other_types_are_one_error_naming_the_file(tmp_path):
    with pytest.raises(Refused, match=f"^{tmp_path / 'none.json'}: missing$"):
        read_json_object(tmp_path / "none.json", Refused)
    os.mkfifo(tmp_path / "fifo.json")  # opening it would block until someone writes
    with pytest.raises(Refused, match=f"^{tmp_path / 'fifo.json'}: not a regular file$"):
        read_json(tmp_path / "fifo.json", Refused)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(Refused, match=f"^{tmp_path / 'list.json'}: expected a JSON object, got a list$"):
        read_json_object(tmp_path / "list.json", Refused)


def test_damaged_markers_of_a_toolkit_folder_read_as_absent(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"written_by": "geoface", "kind": "uv"}))
    (tmp_path / KEY_FILE).write_text(json.dumps({"key": "abc"}))
    assert output_kind(tmp_path) == "uv" and read_key_file(tmp_path) == {"key": "abc"}
    for text in (DEEP, "[1]"):
        (tmp_path / MARKER).write_text(text)
        (tmp_path / KEY_FILE).write_text(text)
        assert output_kind(tmp_path) is None and read_key_file(tmp_path) is None


def test_a_head_model_description_nested_too_deeply_names_it(tmp_path):
    (tmp_path / "head_model.json").write_text(DEEP)
    with pytest.raises(HeadModelError, match=r"head_model.json: not valid JSON \(nested too deeply\)$"):
        read_head_model_json(tmp_path / "head_model.json")
