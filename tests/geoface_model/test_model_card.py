"""MODEL_CARD.md (geoface_model/lineage.py) is a Markdown table of the card's strings, some of them another's (the
dataset's folder, its lineage.json): a '|' split a row into more cells, a backtick ended the code span, a newline ended
the row (an audit, 2026-12-07). Each cell now reads back, through a real Markdown parser, as the card holds it."""
import json

import pytest
from markdown_it import MarkdownIt

from flame_fitting.core.fileio import write_bytes
from flame_fitting.formats.lineage import write_lineage
from geoface_model.lineage import CARD_MD, read_model_card, write_model_card

KEYS = {"captures version": "captures_version", "head model sha256": "head_model_sha256", "dataset": "dataset",
        "training run id": "run_id", "date (UTC)": "date"}


def table(markdown: str) -> list[list[str]]:
    """The first table's rows (header included) as the text of their cells, parsed as GitHub does (GFM tables)."""
    rows, row, cell = [], None, None
    for t in MarkdownIt("commonmark").enable("table").parse(markdown):
        if t.type == "tr_open":
            row = []
        elif t.type in ("th_open", "td_open"):
            cell = ""
        elif t.type == "inline" and cell is not None:
            cell = "".join(c.content for c in t.children)
        elif t.type in ("th_close", "td_close"):
            row.append(cell)
            cell = None
        elif t.type == "tr_close":
            rows.append(row)
        elif t.type == "table_close":
            return rows
    return rows


@pytest.mark.parametrize("odd", ["a|b", "a`b``c", "`a|b`", "a\nb | c", "a\\|b", " x "])
def test_a_model_card_table_reads_back_the_cards_values(tmp_path, odd):
    data = tmp_path / f"data{odd}set"
    write_bytes(data / "train" / "shard_0000.safetensors", b"shard")
    write_lineage(data, captures_version=f"v{odd}", head_model_sha256="0" * 64, params={"dataset": {}})
    write_model_card(tmp_path / "model", data, {"train": {"steps": 1}}, f"run{odd}")
    card = read_model_card(tmp_path / "model")
    assert card["captures_version"] == f"v{odd}" and card["run_id"] == f"run{odd}" and card["dataset"] == str(data)
    rows = table((tmp_path / "model" / CARD_MD).read_text())
    assert len(rows) == 8 and all(len(r) == 2 for r in rows), rows  # header + 7 rows of two cells, no more
    cells = dict(rows[1:])
    for label, key in KEYS.items():  # a newline is shown as its escape: one row per entry
        assert cells[label] == card[key].replace("\n", "\\n"), (label, cells[label], card[key])


def test_the_cards_json_sections_stay_code_blocks(tmp_path):
    # the dataset's params come from its lineage.json: a string with a fence in it stays inside the JSON block
    data = tmp_path / "data"
    write_bytes(data / "train" / "shard_0000.safetensors", b"shard")
    params = {"dataset": {"note": "```\n# Forged heading\n```"}}
    write_lineage(data, captures_version="v1", head_model_sha256="0" * 64, params=params)
    write_model_card(tmp_path / "model", data, {"train": {"steps": 1}}, "run0")
    tokens = MarkdownIt("commonmark").enable("table").parse((tmp_path / "model" / CARD_MD).read_text())
    assert [t.content for t in tokens if t.type == "inline" and t.map and "Forged" in t.content] == []
    blocks = [json.loads(t.content) for t in tokens if t.type == "fence" and t.info == "json"]
    assert blocks == [{"train": {"steps": 1}}, params]
