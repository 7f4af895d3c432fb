"""One head model per process for the data stages' work (fit, uv, correspondences, dataset): `shared_head_model`.

Each of those stages' modules kept its own `lru_cache` of `load_head_model` keyed by the folder's path alone, so a
process that ran several stages (benchmarks/incremental.py's phases, a notebook, `geoface` calls from Python) read
and built the same model once per stage (0.12-0.15 s of CPU each on the stand-in: the folder's files read and checked,
the tensors built), and a folder whose content changed at the same path was never read again: the next run of a stage
in that process used the old model while its unit keys named the new one. Here a model is looked up by the folder's
path, its content (`tree_digest`, the hash the stages' unit keys hold, through the file-hash cache) and the number of
components, so a changed folder is read afresh and an unchanged one once per process.

The model is shared: callers must not modify its tensors (none does; the per-stage caches shared it in the same way
between the units of a stage)."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from flame_fitting.core.unit_keys import tree_digest
from flame_fitting.head.head_model import HeadModel, load_head_model

MAX_MODELS = 4  # (folder content, components) entries kept; a stage uses one
_MODELS: OrderedDict[tuple, HeadModel] = OrderedDict()


def shared_head_model(path: Path | str, n_shape: int | None = None, n_expr: int | None = None) -> HeadModel:
    """`load_head_model(path, n_shape, n_expr)` on the CPU, read once per process for the folder's current content
    (module docstring); None components: every component the folder provides, the same model as their numbers."""
    where = (str(path), str(Path(path).resolve()))  # the path as given: the model's messages name it
    content = tree_digest(path)
    key = (*where, content, n_shape, n_expr)
    model = _MODELS.get(key)
    if model is None:
        model = load_head_model(path, n_shape=n_shape, n_expr=n_expr)
        _MODELS[(*where, content, model.n_shape, model.n_expr)] = model  # None's numbers: the same model
        _MODELS[key] = model
        while len(_MODELS) > MAX_MODELS:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(key)
    return model
