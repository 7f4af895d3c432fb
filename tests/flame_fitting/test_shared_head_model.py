"""flame_fitting/head/shared.py: one head model per process and folder content, read again when the folder changes."""
import numpy as np
import torch
from flame_folder_factory import write_flame_folder

from flame_fitting.head.head_model import load_head_model
from flame_fitting.head.shared import shared_head_model


def test_one_model_per_folder_content_and_components(tmp_path):
    spec = write_flame_folder(tmp_path / "head", n_shape=20, n_expr=10)
    a = shared_head_model(spec.path)
    assert shared_head_model(spec.path) is a
    assert shared_head_model(spec.path, n_shape=a.n_shape, n_expr=a.n_expr) is a  # None = every component
    small = shared_head_model(spec.path, n_shape=5, n_expr=3)
    assert small is not a and (small.n_shape, small.n_expr) == (5, 3)
    fresh = load_head_model(spec.path)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), fresh.state_dict().values()))


def test_a_changed_folder_is_read_again(tmp_path):
    spec = write_flame_folder(tmp_path / "head", n_shape=20, n_expr=10)
    a = shared_head_model(spec.path)
    with np.load(spec.model_file) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["v_template"] = arrays["v_template"] + np.float32(0.01)
    np.savez(spec.model_file, **arrays)  # the same path, another model
    b = shared_head_model(spec.path)
    assert b is not a
    assert torch.allclose(b.flame.v_template, a.flame.v_template + 0.01)
