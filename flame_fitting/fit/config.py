"""`FitConfig`: every knob of the multi-view landmark fitter, one documented field each.

Build it directly (`FitConfig(refine_cameras=True)`) or from a params.yaml section with
`flame_fitting.core.params.build_config(FitConfig, section, where)`; either way every field's type, range and
choices are checked (fields carry them; `help(FitConfig)` lists them).
Units: the data term is in pixels² (one landmark in one view with a 1 px error costs 1), so a
prior weight of 1 on N(0, 1) coefficients is the Bayesian weight for 1 px landmark noise.
"""
from __future__ import annotations

from dataclasses import dataclass

from flame_fitting.core.params import ParamsError, check_fields, field_docs, spec


@dataclass
class FitConfig:
    iterations: int = spec(30, "maximum Levenberg-Marquardt iterations (accepted + rejected steps)", lo=0, hi=10000)
    lambda_init: float = spec(1e-3, "initial LM damping λ (relative to the diagonal of JᵀWJ)", lo=0.0)
    tolerance: float = spec(1e-6, "stop when a step lowers the cost by less than this × max(cost, number of "
                                  "observations)", lo=0.0)
    robust_loss: str = spec("cauchy", "robust loss on the 2D reprojection error: cauchy | huber | l2",
                            choices=["cauchy", "huber", "l2"])
    robust_scale_px: float = spec(3.0, "robust loss scale in pixels (errors well above it are outliers)", lo=1e-6)
    robust_anneal: float = spec(3.0, "start the robust scale at this × the robust spread (1.48·median) of the "
                                     "initial errors, at least halve it per accepted step down to robust_scale_px "
                                     "(0 = fixed scale)", lo=0.0)
    view_weighting: bool = spec(True, "down-weight whole views whose median error is far above the robust scale "
                                      "(failed detections)")
    prior_shape: float = spec(1.0, "weight of ||shape||² (identity coefficients ~ N(0, 1))", lo=0.0)
    prior_expr: float = spec(1.0, "weight of ||expr||² per frame (expression coefficients ~ N(0, 1))", lo=0.0)
    prior_shape_landmarks_only: float = spec(5.0, "weight of ||shape||² instead of prior_shape when the sequence has "
                                                   "no silhouette term (no masks, or silhouette_weight 0): MediaPipe's "
                                                   "errors are shared by every view and frame and correlated across "
                                                   "landmarks, so alone they pull the unobserved head away from the "
                                                   "mean (tuned on held-out synthetic subjects, docs/fitting.md)", lo=0.0)
    prior_expr_landmarks_only: float = spec(10.0, "weight of ||expr||² per frame instead of prior_expr when the sequence "
                                                  "has no silhouette term (see prior_shape_landmarks_only)", lo=0.0)
    prior_jaw: float = spec(10.0, "weight of ||jaw_pose||² (rad²) per frame", lo=0.0)
    prior_neck: float = spec(1e4, "weight of ||neck_pose||² (rad²); face landmarks cannot tell the neck from "
                                  "the head pose, so this keeps the head rotation in global_orient", lo=0.0)
    prior_eyes: float = spec(10.0, "weight of ||eye_pose||² (rad², both eyes) per frame", lo=0.0)
    visibility: bool = spec(True, "down-weight landmarks whose triangle faces away from the camera")
    visibility_cos: float = spec(0.1, "cos(normal, direction to camera) at which a landmark gets weight 0.5",
                                 lo=-1.0, hi=1.0)
    visibility_softness: float = spec(0.05, "width of the smooth visibility step in cos units", lo=1e-4)
    noise_model: bool = spec(True, "after the first solve, estimate each landmark group's noise from the residuals "
                                   "and solve again with the groups weighted 1 / (1 + κ·excess variance) "
                                   "(noise.py, docs/fitting.md); changes nothing for landmarks within "
                                   "noise_free_px")
    noise_rounds: int = spec(1, "estimate-and-solve rounds of the noise model", lo=1, hi=10)
    noise_free_px: float = spec(1.25, "residual spread (per-axis σ, px) taken as independent pixel noise; only the "
                                      "variance above it is down-weighted", lo=0.0)
    noise_correlation: float = spec(1.0, "correlation across views of a landmark's excess error (1 = a detector "
                                         "bias shared by all the views that see it): the excess variance counts "
                                         "× the design effect 1 + (views - 1)·ρ", lo=0.0, hi=1.0)
    noise_dense_factor: float = spec(10.0, "extra factor on the excess variance of MediaPipe's dense surface points "
                                           "(not contour, lips, eyes, brows, iris or nose): MediaPipe places them with "
                                           "its mesh model, so neighbours share their errors", lo=1.0)
    calibrated_embedding: bool = spec(True, "fit with the head model's detector-calibrated MediaPipe embedding "
                                            "(mediapipe_landmark_embedding_calibrated.npz, flame_fitting."
                                            "landmarks.calibration) when its folder has one; false = the original")
    silhouette_weight: float = spec(1.0, "weight of the multi-view silhouette term (silhouette.py, docs/fitting.md): "
                                          "per mask boundary sample, ρ of its point-to-line distance (px) to the "
                                          "nearest model contour vertex; 0 = off; needs masks", lo=0.0)
    silhouette_loss: str = spec("cauchy", "robust loss of the silhouette term: cauchy | huber | l2",
                                choices=["cauchy", "huber", "l2"])
    silhouette_scale_px: float = spec(1.0, "robust scale of the silhouette term (pixels)", lo=1e-6)
    silhouette_step_px: int = spec(3, "sample every this many boundary pixels of a mask", lo=1)
    silhouette_max_px: float = spec(10.0, "boundary samples farther than this from every model contour vertex are "
                                          "not used (pixels)", lo=0.0)
    silhouette_mode: str = spec("auto", "two_sided: the mask boundary and the model's contour must coincide "
                                        "(masks of exactly the modelled surface, e.g. synthetic renders); inside: "
                                        "only a model contour outside the mask is penalised (real masks that also "
                                        "cover hair, neck, shoulders); auto: fit_capture picks two_sided for "
                                        "synthetic captures and inside for every other source (fit_sequence: "
                                        "two_sided)", choices=["auto", "two_sided", "inside"])
    silhouette_region: str = spec("all", "model vertices that may form the silhouette: all | head (drop the vertices "
                                         "skinned mostly to the root joint: neck base / shoulders)",
                                  choices=["all", "head"])
    silhouette_tolerance: float = spec(1e-3, "the silhouette solve stops when a step lowers the cost by less than this "
                                             "× the cost (the pairing's refresh makes the cost noisy below ~1e-4)",
                                       lo=0.0)
    silhouette_reanneal: bool = spec(True, "anneal the landmarks' robust scale again in the silhouette solve (as the "
                                           "noise-model solve does); false: keep robust_scale_px from the start")
    points_weight: float = spec(3.0, "weight of the surface-point term (points.py, docs/fitting.md) of a sequence "
                                      "fitted without silhouettes: 3D points triangulated from the images' feature "
                                      "tracks, ρ of their point-to-plane distance (mm) to the nearest model vertex; "
                                      "0 = off (fit_capture reads the images)", lo=0.0)
    points_with_masks: bool = spec(False, "use the surface points also when the silhouette term runs (masks); "
                                          "off by default so the pipeline's figures stay comparable (measured: "
                                          "docs/fitting.md)")
    points_loss: str = spec("huber", "robust loss of the surface-point term: huber | cauchy | l2",
                            choices=["cauchy", "huber", "l2"])
    points_scale_mm: float = spec(1.0, "robust scale of the surface-point term (mm)", lo=1e-6)
    points_max_mm: float = spec(5.0, "points farther than this from every model vertex are not used (mm)", lo=0.0)
    points_reproj_px: float = spec(1.0, "keep a triangulated track only if every observation reprojects within this "
                                        "(pixels)", lo=0.0)
    refine_cameras: bool = spec(False, "bundle adjustment: refine each camera's extrinsics jointly with the head")
    refine_focal: bool = spec(False, "also refine a per-camera focal scale (needs refine_cameras)")
    camera_rot_sigma_deg: float = spec(2.0, "prior σ of a camera's rotation correction (degrees)", lo=1e-6)
    camera_trans_sigma_mm: float = spec(20.0, "prior σ of a camera's centre move (mm)", lo=1e-6)
    focal_sigma: float = spec(0.02, "prior σ of a camera's log focal scale", lo=1e-6)
    camera_scale: str = spec("rig", "what sets the metric scale when refining cameras: rig (the given rig's size is "
                                    "held) | head (the head model through its identity prior; the rig's size may "
                                    "change)", choices=["rig", "head"])
    camera_accept_gain: float = spec(2.0, "keep the refined cameras only if the fit's objective (data + priors) fell "
                                          "by more than this per free camera parameter (6 per camera - 7 for the "
                                          "gauge, 6 with camera_scale head; 2 = AIC), else keep the calibration (refine.py)", lo=0.0)
    camera_max_sigmas: float = spec(1.5, "refuse a camera refinement that moves any camera's rotation or centre by "
                                         "more than this many prior σ (camera_rot_sigma_deg, camera_trans_sigma_mm)",
                                    lo=0.0)
    camera_features: bool = spec(True, "with refine_cameras: refine the rig from image feature tracks (SIFT inside "
                                       "the masks, bundle-adjusted; features.py) before the fit, which then holds "
                                       "the cameras; the landmark camera solve runs only when the images give too "
                                       "few tracks")
    camera_feature_max_sigmas: float = spec(3.0, "refuse a feature camera refinement that moves any camera, relative "
                                                 "to the rest of the rig, by more than this many prior σ (the priors "
                                                 "are per axis: a calibration error of 1 σ per axis is √3 σ long)",
                                            lo=0.0)
    camera_feature_scale_px: float = spec(0.3, "Huber scale of the feature bundle adjustment (px, at the median "
                                               "keypoint size; chosen on a held-out capture: 1 / 0.5 / 0.3 px gave "
                                               "1.89 / 1.83 / 1.63 mm median camera error)", lo=1e-3)
    camera_feature_frames: int = spec(4, "frames of a sequence (spread evenly) whose images the feature camera "
                                         "refinement uses; the cameras are shared by all frames (0 = all)", lo=0)
    camera_feature_neighbours: int = spec(4, "cameras each camera's features are matched with (nearest optical "
                                             "axes)", lo=1, hi=64)
    temporal_weight: float = spec(0.0, "weight of ||θ_t - θ_t-1||² between consecutive fitted frames (expr units, "
                                       "rotations in 0.1 rad, translation in cm); 0 = off", lo=0.0)
    n_shape: int | None = spec(None, "identity components fitted (null = all the head model has)", lo=0)
    n_expr: int | None = spec(None, "expression components fitted (null = all the head model has)", lo=0)
    min_views: int = spec(2, "fit a frame only when at least this many views have detections (1 also fits "
                             "single-view frames, which need an `init` pose, as geoface generate's photo camera "
                             "gives: without one such a frame cannot be triangulated and is reported diverged)", lo=1)
    triangulation_px: float = spec(12.0, "RANSAC inlier threshold of the initial triangulation (pixels of an image "
                                         "up to 512 px on its longer side; scaled with the side above that)", lo=0.1)
    ransac_pairs: int = spec(12, "view pairs tried per landmark by the triangulation RANSAC (all when fewer)", lo=1)
    max_median_px: float = spec(25.0, "a fitted frame whose median reprojection error exceeds this is flagged "
                                      "diverged (pixels of an image up to 512 px on its longer side; scaled with the "
                                      "side above that: landmark errors grow with resolution)", lo=0.0)
    chunk_frames: int = spec(32, "frames whose Jacobians are built at once (memory bound)", lo=1)
    threads: int = spec(1, "torch intra-op threads while fitting (0 = leave torch's setting); the linear algebra is "
                           "small, so run sequences in parallel processes instead", lo=0)
    seed: int = spec(0, "seed of the RANSAC view-pair sampling")

    def validate(self) -> None:
        """Raise ParamsError naming the field on a wrong type, a value outside its range or choices, a non-finite
        number (as build_config does for params.yaml) or inconsistent settings."""
        check_fields(self, "FitConfig")
        if self.refine_focal and not self.refine_cameras:
            raise ParamsError("FitConfig: refine_focal needs refine_cameras")

    def __post_init__(self) -> None:
        self.validate()


FitConfig.__doc__ = f"""Settings of `fit_sequence` / `fit_capture`; construction checks every field (`validate`).

Fields (name = default: meaning [range]):
{field_docs(FitConfig)}
"""
