"""`make test` hands the test files to its processes in tests/conftest.py's order (the slowest first), as
docs/environment.md says: pytest-xdist (3.8) otherwise re-sorts loadfile's files by their number of tests, and the
DVC pipeline test (12 tests, a fifth of the suite's time) was handed out 39th of 115 files, the one-test training files
last. Checked with pytest's own configuration (xdist's options) built from the arguments of the Makefile's `test`
recipe."""
import re
import shlex
from pathlib import Path

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parents[1]


def make_test_args() -> list[str]:
    """The pytest arguments of the `test` recipe, with the Makefile's default process count."""
    text = (REPO / "Makefile").read_text()
    workers = re.search(r"^TEST_WORKERS \?= (\d+)$", text, re.M).group(1)
    recipe = re.search(r"^test:.*\n\t(.*)$", text, re.M).group(1).replace("$(TEST_WORKERS)", workers)
    words = shlex.split(recipe.split(";")[0].lstrip("@"))
    return [w for w in words[words.index("pytest") + 1:] if "$(" not in w]


def test_make_test_keeps_the_conftest_order_of_files(pytester):
    config = pytester.parseconfig(*make_test_args())
    assert config.option.dist == "loadfile" and config.option.numprocesses == 2
    assert config.option.loadscopereorder is False, "xdist would order the files by their number of tests"
