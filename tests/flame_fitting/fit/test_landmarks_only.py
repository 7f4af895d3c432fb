"""Landmarks-only fits (no silhouette term) lean on the identity / expression priors by as much as the noise model
discounted the landmarks (`fitter.landmarks_only_priors`, docs/fitting.md "Landmarks only")."""
import numpy as np
import pytest

from flame_fitting.fit import FitConfig, fit_sequence
from flame_fitting.fit.fitter import landmarks_only_priors
from flame_fitting.fit.synthetic import model_outputs


def test_priors_move_by_the_share_of_weight_removed():
    cfg = FitConfig(prior_shape=1.0, prior_expr=2.0, prior_shape_landmarks_only=5.0, prior_expr_landmarks_only=10.0)
    exact = landmarks_only_priors(cfg, 1.0)
    assert (exact.prior_shape, exact.prior_expr) == (1.0, 2.0)          # accurate landmarks: priors as configured
    noisy = landmarks_only_priors(cfg, 0.0)
    assert (noisy.prior_shape, noisy.prior_expr) == (5.0, 10.0)
    half = landmarks_only_priors(cfg, 0.5)
    assert half.prior_shape == pytest.approx(3.0) and half.prior_expr == pytest.approx(6.0)
    assert landmarks_only_priors(cfg, 1.5).prior_shape == 1.0            # clamped


def test_detector_like_landmarks_keep_the_unobserved_identity_near_the_mean(head, cams, truth):
    """A per-landmark offset shared by every view and frame (a detector's bias, 4 mm rms) plus 2 px noise: the noise
    model discounts most of the landmarks' weight, and the landmarks-only fit then keeps the identity nearer the mean
    than the configured (weak) priors would; exact landmarks are unaffected (test_fitter)."""
    rng = np.random.default_rng(5)
    bias = rng.standard_normal((478, 3)) * 4e-3 / np.sqrt(3)
    obs = {}
    for f, p in truth.items():
        lmk = model_outputs(head, p)[1]
        obs[f] = {n: c.project(lmk + bias)[0] + rng.standard_normal((478, 2)) * 2.0 for n, c in cams.items()}
    weak = fit_sequence(head, cams, obs, FitConfig(prior_shape_landmarks_only=1.0, prior_expr_landmarks_only=1.0),
                        progress=False)
    default = fit_sequence(head, cams, obs, FitConfig(), progress=False)
    assert default.noise is not None and (default.noise.weight < 0.5).all()
    f0 = min(truth)
    assert np.linalg.norm(default.params[f0].shape) < 0.9 * np.linalg.norm(weak.params[f0].shape)
    assert np.mean([np.linalg.norm(default.params[f].expr) for f in truth]) < \
        0.9 * np.mean([np.linalg.norm(weak.params[f].expr) for f in truth])
    assert all(s.status == "ok" for s in default.status.values())
