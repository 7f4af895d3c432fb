"""Bundle adjustment of a rig from point tracks (flame_fitting/fit/rig_ba.py): the Schur-complement LM reaches
scipy's least_squares minimum of the same objective (the reference), the gauge (mean rotation, centroid, size of
the rig) is held exactly, exact tracks recover perturbed cameras, and cameras held stay put."""
import numpy as np
import pytest
from scipy.optimize import least_squares

from flame_fitting.fit.rig_ba import Tracks, bundle_adjust, gauge_basis, noise_level_px, prior_cost, triangulate
from flame_fitting.fit.so3 import left_jacobian_np as left_jacobian, rodrigues_np as exp_so3


def _rig(n_cams=6, n_points=60, noise_px=0.0, seed=0):
    """Cameras on an arc 1 m from a 10 cm cloud of points; every point seen by every camera."""
    rng = np.random.default_rng(seed)
    K = np.array([[1500.0, 0, 256], [0, 1500.0, 256], [0, 0, 1]])
    R, o = [], []
    for yaw in np.linspace(-60, 60, n_cams):
        c = np.array([np.sin(np.radians(yaw)), 0.05 * rng.standard_normal(), np.cos(np.radians(yaw))])
        z = -c / np.linalg.norm(c)
        x = np.cross([0, 1, 0], z); x /= np.linalg.norm(x)
        R.append(np.stack([x, np.cross(z, x), z])); o.append(c)
    R, o = np.array(R), np.array(o)
    X = rng.normal(0, 0.05, (n_points, 3))
    cam, point = np.repeat(np.arange(n_cams), n_points), np.tile(np.arange(n_points), n_cams)
    xc = np.einsum("nij,nj->ni", R[cam], X[point] - o[cam])
    uv = (xc @ K.T)[:, :2] / xc[:, 2:] + rng.normal(0, noise_px, (len(cam), 2))
    return Tracks(cam, point, uv, n_points), np.repeat(K[None], n_cams, 0), R, o, X


def _perturb(R, o, deg, mm, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((len(R), 3))
    w *= np.radians(deg) / np.linalg.norm(w, axis=1, keepdims=True)
    d = rng.standard_normal((len(R), 3))
    d *= mm * 1e-3 / np.linalg.norm(d, axis=1, keepdims=True)
    return exp_so3(w) @ R, o + d


def _aligned_errors(R, o, R_ref, o_ref):
    """Rotation (deg) and centre (mm) errors after the best similarity (the gauge no image observes)."""
    U, _, Vt = np.linalg.svd(sum(a.T @ b for a, b in zip(R_ref, R)))
    Q = U @ np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    a, b = o - o.mean(0), o_ref - o_ref.mean(0)
    s = (b * (a @ Q.T)).sum() / (a ** 2).sum()
    rot = [np.degrees(np.arccos(np.clip((np.trace(r @ Q.T @ rr.T) - 1) / 2, -1, 1))) for r, rr in zip(R, R_ref)]
    return np.array(rot), np.linalg.norm(s * a @ Q.T - b, axis=1) * 1e3


def test_left_jacobian_matches_finite_differences():
    w, d = np.array([0.3, -0.2, 0.5]), np.array([1e-6, -2e-6, 1.5e-6])
    lhs = exp_so3(w + d) @ exp_so3(w).T
    rhs = exp_so3(left_jacobian(w) @ d)
    assert np.abs(lhs - rhs).max() < 1e-11


def test_schur_lm_reaches_the_scipy_reference_minimum():
    tr, K, R, o, _ = _rig(noise_px=0.3)
    tr.weight = np.random.default_rng(5).uniform(0.3, 3.0, len(tr.cam))  # per-observation weights in the cost
    R0, o0 = _perturb(R, o, 1.0, 10.0)
    rs, ts = np.radians(2.0), 0.02
    got = bundle_adjust(tr, K, R0, o0, rs, ts, scale_px=1e6, iterations=200, tol=1e-15)  # Huber at 1e6 px: least squares
    basis = gauge_basis(o0, R0)
    C, P = len(R0), tr.n_points

    def resid(x):  # the same objective, camera corrections in the same gauge subspace, scipy's solver
        c = (basis @ x[:basis.shape[1]]).reshape(C, 6)
        Rc, oc, X = exp_so3(c[:, :3]) @ R0, o0 + c[:, 3:], x[basis.shape[1]:].reshape(P, 3)
        xc = np.einsum("nij,nj->ni", Rc[tr.cam], X[tr.point] - oc[tr.cam])
        uv = np.einsum("nij,nj->ni", K[tr.cam], xc)
        return np.concatenate([((uv[:, :2] / uv[:, 2:] - tr.uv) * np.sqrt(tr.weight)[:, None]).ravel(), (c[:, :3] / rs).ravel(), (c[:, 3:] / ts).ravel()])

    x0 = np.concatenate([np.zeros(basis.shape[1]), triangulate(tr, K, R0, o0).ravel()])
    ref = least_squares(resid, x0, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
    c = (basis @ ref.x[:basis.shape[1]]).reshape(C, 6)
    assert np.abs(exp_so3(c[:, :3]) @ R0 - got.R).max() < 1e-7
    assert np.abs(o0 + c[:, 3:] - got.centers).max() < 1e-7
    assert got.cost == pytest.approx(0.5 * (ref.fun ** 2).sum(), rel=1e-6)


def test_exact_tracks_recover_the_cameras_and_the_gauge_is_held():
    tr, K, R, o, _ = _rig(n_cams=8, n_points=120)
    R0, o0 = _perturb(R, o, 2.0, 20.0, seed=3)
    got = bundle_adjust(tr, K, R0, o0, np.radians(20.0), 0.2, iterations=200, tol=1e-14)
    rot, centre = _aligned_errors(got.R, got.centers, R, o)
    assert rot.max() < 0.01 and centre.max() < 0.2, (rot, centre)
    assert np.abs(got.centers.mean(0) - o0.mean(0)).max() < 1e-12                       # centroid held
    v = (o0 - o0.mean(0)) / np.sqrt(((o0 - o0.mean(0)) ** 2).sum(1).mean())
    assert abs(((got.centers - o0) * v).sum()) < 1e-12                                   # size held (first order)
    held = bundle_adjust(tr, K, R0, o0, np.radians(2.0), 0.02, hold_cameras=True)
    assert np.array_equal(held.R, exp_so3(np.zeros((len(R0), 3))) @ R0) and np.array_equal(held.centers, o0)
    assert held.cost > got.cost


@pytest.mark.parametrize("noise", [0.1, 0.4])
def test_the_noise_level_is_estimated_from_the_residuals(noise):
    tr, K, R, o, _ = _rig(n_cams=12, n_points=150, noise_px=noise, seed=2)
    R0, o0 = _perturb(R, o, 2.0, 20.0, seed=12)
    got = bundle_adjust(tr, K, R0, o0, np.radians(2.0), 0.02, scale_px=1e6)
    assert noise_level_px(tr, got.residuals, len(R0)) == pytest.approx(noise, rel=0.05)
    tr.weight = np.full(len(tr.cam), 4.0)    # observations twice as precise as the unit: the noise at weight 1 doubles
    assert noise_level_px(tr, got.residuals, len(R0)) == pytest.approx(2 * noise, rel=0.05)


def test_the_data_term_in_noise_units_and_the_cost_split():
    """noise_px divides the data term (the same minimum as weights of 1 / noise²), a start from a solution reaches
    the cold start's minimum, and the data cost at held cameras + prior_cost is the solver's objective."""
    tr, K, R, o, _ = _rig(n_cams=8, n_points=80, noise_px=0.1, seed=4)
    R0, o0 = _perturb(R, o, 2.0, 20.0, seed=5)
    rs, ts = np.radians(2.0), 0.02
    first = bundle_adjust(tr, K, R0, o0, rs, ts, scale_px=0.3, tol=1e-14)
    a = bundle_adjust(tr, K, R0, o0, rs, ts, scale_px=0.3, noise_px=0.1, tol=1e-14)
    b = bundle_adjust(tr, K, R0, o0, rs, ts, scale_px=0.3, noise_px=0.1, start=first, tol=1e-14)
    weighted = Tracks(tr.cam, tr.point, tr.uv, tr.n_points, np.full(len(tr.cam), 100.0))
    c = bundle_adjust(weighted, K, R0, o0, rs, ts, scale_px=0.3, tol=1e-14)
    assert np.abs(a.R - b.R).max() < 1e-8 and np.abs(a.centers - b.centers).max() < 1e-8
    assert np.abs(a.R - c.R).max() < 1e-8 and a.cost == pytest.approx(c.cost, rel=1e-9)
    assert np.abs(a.R - first.R).max() > 1e-5           # the images weigh more: a different minimum
    held = bundle_adjust(tr, K, first.R, first.centers, rs, ts, scale_px=0.3, hold_cameras=True, X0=first.X)
    assert held.cost + prior_cost(first.R, first.centers, R0, o0, rs, ts) == pytest.approx(first.cost, rel=1e-9)


def _ring(n_cams=12, seed=0, noise_px=0.1):
    """Cameras all round a 10 cm sphere of points (a RenderMe-360-like rig), each seeing the points facing it."""
    rng = np.random.default_rng(seed)
    K = np.array([[1500.0, 0, 256], [0, 1500.0, 256], [0, 0, 1]])
    R, o = [], []
    for yaw, pitch in zip(np.linspace(0, 330, n_cams), rng.uniform(-15, 15, n_cams)):
        y, p = np.radians(yaw), np.radians(pitch)
        c = np.array([np.sin(y) * np.cos(p), np.sin(p), np.cos(y) * np.cos(p)])
        z = -c
        x = np.cross([0, 1, 0], z); x /= np.linalg.norm(x)
        R.append(np.stack([x, np.cross(z, x), z])); o.append(c)
    R, o = np.array(R), np.array(o)
    n = rng.standard_normal((2000, 3)); n /= np.linalg.norm(n, axis=1, keepdims=True)
    X = 0.1 * n
    cam, point = [], []
    for c in range(n_cams):
        facing = np.flatnonzero(((o[c] - X) * n).sum(1) / np.linalg.norm(o[c] - X, axis=1) > 0.3)
        cam += [c] * len(facing); point += list(facing)
    cam, point = np.array(cam), np.array(point)
    seen = np.bincount(point, minlength=len(X)) >= 2
    keep, remap = seen[point], np.cumsum(seen) - 1
    cam, point = cam[keep], remap[point[keep]]
    X = X[seen]
    xc = np.einsum("nij,nj->ni", R[cam], X[point] - o[cam])
    uv = (xc @ K.T)[:, :2] / xc[:, 2:] + rng.normal(0, noise_px, (len(cam), 2))
    return Tracks(cam, point, uv, len(X)), np.repeat(K[None], n_cams, 0), R, o


def _mean_turn_deg(R, R_ref):
    """The rotation (deg) that best takes the rig R_ref onto R (their common turn in world axes)."""
    U, _, Vt = np.linalg.svd(sum(b.T @ a for a, b in zip(R, R_ref)))
    Q = U @ np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    return np.degrees(np.arccos(np.clip((np.trace(Q) - 1) / 2, -1, 1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_rig_all_round_the_head_keeps_its_mean_orientation(seed):
    """The gauge row was Σ_c ω_c = 0 with ω_c in each camera's own axes: on a ring Σ_c R_c is nearly singular, two
    turns of the whole rig were free, and the refined 360° rig turned 38–43° against the given cameras (accepted by
    the stage's test). Held in world axes, it keeps the given mean orientation and recovers each camera."""
    tr, K, R, o = _ring(seed=seed)
    R0, o0 = _perturb(R, o, 2.0, 20.0, seed=10 + seed)
    got = bundle_adjust(tr, K, R0, o0, np.radians(2.0), 0.02, scale_px=0.3, noise_px=0.1, iterations=300)
    assert _mean_turn_deg(got.R, R0) < 1e-3                               # the rig's mean orientation held
    rot, centre = _aligned_errors(got.R, got.centers, R, o)
    assert np.median(rot) < 0.05 and np.median(centre) < 2.0, (rot, centre)  # from 2° / 20 mm
    assert got.iterations < 50


def test_a_camera_without_observations_is_held_and_left_out_of_the_gauge():
    tr, K, R, o, _ = _rig(n_cams=7, n_points=80, noise_px=0.2, seed=4)
    blind = tr.cam == 6
    tr = Tracks(tr.cam[~blind], tr.point[~blind], tr.uv[~blind], tr.n_points)
    R0, o0 = _perturb(R, o, 1.0, 10.0, seed=5)
    got = bundle_adjust(tr, K, R0, o0, np.radians(2.0), 0.02, iterations=200)
    assert np.array_equal(got.R[6], R0[6]) and np.array_equal(got.centers[6], o0[6])  # no evidence: not moved
    assert _mean_turn_deg(got.R[:6], R0[:6]) < 1e-3                                   # the gauge of the six seen
    assert np.abs(got.centers[:6].mean(0) - o0[:6].mean(0)).max() < 1e-12
