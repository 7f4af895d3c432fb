"""Multi-view FLAME fitting by second-order bundle adjustment (Levenberg-Marquardt on landmarks).

Entry point: `fit_sequence(model, cameras, observations, cfg)` -> `SequenceFit`. Modules:
config (FitConfig), observations (input checks), reduced / jacobian (the head model restricted to
its landmarks, analytic Jacobians), triangulate / init (robust initialisation), rig (cameras and
their corrections), problem (cost, normal equations), schur (linear solves), lm (the optimiser),
noise (per-group landmark noise model and weights), silhouette (mask boundaries vs the model's
occluding contour), points (surface points triangulated from the images vs the model's surface, without masks),
features / rig_ba (SIFT tracks: camera refinement and those points), capture (a capture's sequences; its masks
in capture_masks, its written results and metrics in capture_results), fitter (orchestration), refits (the solves
after the first: noise model, silhouette / surface points), report (outputs, camera errors), overlay (drawing),
synthetic (test data). The method: docs/fitting.md.
"""
from flame_fitting.fit.config import FitConfig
from flame_fitting.fit.fitter import fit_sequence
from flame_fitting.fit.observations import FitInputError
from flame_fitting.fit.overlay import overlay_png
from flame_fitting.fit.report import (FrameParams, FrameStatus, SequenceFit, camera_errors, head_frame_vertices,
                                     head_to_world)

__all__ = ["FitConfig", "FitInputError", "FrameParams", "FrameStatus", "SequenceFit", "camera_errors", "fit_sequence",
           "head_frame_vertices", "head_to_world", "overlay_png"]
