"""ReducedModel.for_points on points that are one vertex each (the silhouette model's candidate vertices): the
layouts written directly (reduced.py `_vertex_layouts`) hold the bytes of the general path, the einsum over the three
corners of each point's triangle, signed zeros included."""
import numpy as np
import pytest
import torch
from fit_testdata import N_EXPR, N_SHAPE

from flame_fitting.fit.reduced import ReducedModel
from flame_fitting.fit.silhouette_data import SilhouetteModel


def corners_reference(model, ids: np.ndarray, n_shape: int, n_expr: int) -> dict[str, torch.Tensor]:
    """The general path of `for_points` (as it was before the one-vertex layouts) for the points `ids` (vertices)."""
    fl, V = model.flame, model.n_vertices
    f64 = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
    idx = torch.as_tensor(ids)
    tri_local = torch.as_tensor(np.repeat(np.arange(len(ids))[:, None], 3, 1))
    bary = torch.zeros(len(ids), 3, dtype=torch.float64)
    bary[:, 0] = 1
    corner_w = bary[:, :, None] * f64(fl.lbs_weights)[idx][tri_local]
    lm = lambda t: torch.einsum("lkm,lk...->ml...", corner_w, t[tri_local])  # noqa: E731
    dirs = lm(torch.cat([f64(fl.shapedirs)[:, :, :n_shape], f64(fl.expr_dirs)[:, :, :n_expr]], -1)[idx])
    pose = lm(f64(fl.posedirs).T.reshape(V, 3, -1)[idx])
    K, L, n = dirs.shape[0], dirs.shape[1], dirs.shape[-1]
    return {"lm_dirs_z": dirs.permute(3, 0, 2, 1).reshape(n, K * 3 * L), "lm_dirs_j": dirs.permute(0, 2, 1, 3).reshape(
        K * 3, L * n), "lm_pose_z": pose.permute(3, 0, 2, 1).reshape(36, K * 3 * L),
        "lm_pose_j": pose.permute(0, 2, 1, 3).reshape(K * 3, L * 36),
        "lm_template": lm(f64(fl.v_template)[idx]).transpose(1, 2), "lm_weights": corner_w.sum(1).T}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.contiguous().numpy().tobytes() == b.contiguous().numpy(
    ).tobytes()


@pytest.mark.parametrize("every", [1, 3])
def test_one_vertex_points_give_the_corner_einsums_bytes(head, every):
    ids = np.arange(0, head.n_vertices, every)
    tri, bary = np.repeat(ids[:, None], 3, 1), np.tile([1.0, 0.0, 0.0], (len(ids), 1))
    rm = ReducedModel.for_points(head, tri, bary, ids, N_SHAPE, N_EXPR)
    ref = corners_reference(head, ids, N_SHAPE, N_EXPR)
    for name, want in ref.items():
        got = getattr(rm, name)
        assert got.is_contiguous() and same_bytes(got, want), name
    # the case the `+ 0.0` is for: a zero skinning weight times a negative basis value (-0.0 as a bare product)
    w = head.flame.lbs_weights.detach()[torch.as_tensor(ids)]
    rows = head.flame.shapedirs.detach()[torch.as_tensor(ids)][:, :, :N_SHAPE]
    assert ((w == 0).any(1)[:, None, None] & (rows < 0)).any()


def test_the_silhouette_model_keeps_its_values(head):
    sm = SilhouetteModel.from_head_model(head, N_SHAPE, N_EXPR)
    ref = corners_reference(head, sm.rm.vertex_ids, N_SHAPE, N_EXPR)
    assert all(same_bytes(getattr(sm.rm, k), v) for k, v in ref.items())
