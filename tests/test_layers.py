"""The import direction of docs/architecture.md: every import (including function-local ones) of every
module of the toolkit goes to its own room or a room below it; none runs upward, so there is no cycle."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# room -> the rooms it may import (besides itself), bottom to top
BELOW = {
    "flame_fitting.core": set(),
    "flame_fitting.geometry": {"flame_fitting.core"},
    "flame_fitting.formats": {"flame_fitting.core", "flame_fitting.geometry"},
    "flame_fitting.head": {"flame_fitting.core", "flame_fitting.geometry", "flame_fitting.formats"},
    "flame_fitting.landmarks": {"flame_fitting.core", "flame_fitting.geometry", "flame_fitting.formats",
                                "flame_fitting.head"},
    "flame_fitting.fit": {"flame_fitting.core", "flame_fitting.geometry", "flame_fitting.formats", "flame_fitting.head",
                          "flame_fitting.landmarks"},
    "flame_fitting.uv": {"flame_fitting.core", "flame_fitting.geometry", "flame_fitting.formats", "flame_fitting.head"},
    "pipelines": {"flame_fitting.core", "flame_fitting.geometry", "flame_fitting.formats", "flame_fitting.head",
                  "flame_fitting.landmarks"},
    "geoface_model": {"flame_fitting.core", "flame_fitting.geometry", "flame_fitting.formats", "flame_fitting.head",
                      "flame_fitting.landmarks", "flame_fitting.fit", "flame_fitting.uv"},
    "geoface": {"flame_fitting", "pipelines", "geoface_model"},
}
PACKAGES = ("flame_fitting", "pipelines", "geoface_model", "geoface")


def room(module: str) -> str | None:
    """The longest room name that `module` is in (None: not the toolkit's)."""
    best = None
    for r in list(BELOW) + ["flame_fitting"]:
        if (module == r or module.startswith(r + ".")) and (best is None or len(r) > len(best)):
            best = r
    return best


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.append((node.lineno, name))
    return out


def modules():
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield path, ".".join(parts)


def test_every_module_is_in_a_room():
    homeless = [m for _, m in modules() if room(m) in (None, "flame_fitting") and m != "flame_fitting"]
    assert not homeless, f"modules outside the rooms of docs/architecture.md: {homeless}"


@pytest.mark.parametrize("path, module", list(modules()), ids=lambda x: str(x) if isinstance(x, str) else "")
def test_imports_run_downward(path, module):
    mine = room(module)
    allowed = BELOW.get(mine, set()) | {mine}
    bad = []
    for line, name in imports(path, module):
        target = room(name)
        if target is None:
            continue
        if target == "flame_fitting" and name != "flame_fitting":
            continue  # a room of flame_fitting that room() resolved above
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            bad.append(f"{path.relative_to(REPO)}:{line} imports {name} ({target})")
    assert not bad, "imports that run upward:\n" + "\n".join(bad)
