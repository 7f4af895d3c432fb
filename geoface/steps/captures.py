"""The `captures` stage's work (also `geoface import` with a contact sheet and metrics): the canonical multi-view
capture every later stage reads. It spans rooms (synthetic generator or importers of pipelines/, the capture
reader of flame_fitting.formats), so it lives on top.

`source: synthetic` (default) renders captures from the head model with full ground truth (pipelines/synthetic,
docs/synthetic.md); any other source imports a real dataset from `root` (nersemble | renderme360 | colmap |
transforms_json | folder; docs/sources.md). Writes the capture folder (atomically), the metrics (counts; on
synthetic data the MediaPipe detection rate and landmark error per yaw band, measured on the generated views) and
a contact sheet PNG per subject (the first `MAX_SHEETS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flame_fitting.core.fileio import write_json
from flame_fitting.core.params import ParamsError, build_config, spec
from flame_fitting.formats.capture import capture_version, load_capture
from geoface.steps.head_model import HeadModelParams
from pipelines.common import ImportConfig
from pipelines.registry import SOURCES, import_capture
from pipelines.synthetic import SyntheticConfig, contact_sheet, detection_report, generate

MAX_SHEETS = 24  # contact sheets for the first subjects only (a large dataset has thousands)


@dataclass
class CaptureSource:
    source: str = spec("synthetic", "where captures come from", choices=list(SOURCES))
    root: str | None = spec(None, "dataset folder for real sources; unused for synthetic")

    def validate(self) -> None:
        if self.source != "synthetic" and not self.root:
            raise ParamsError(f"captures.root: needed for captures.source={self.source!r}")
        if self.source != "synthetic" and not Path(self.root).expanduser().exists():
            # checked with the params (check_params), before DVC removes the captures stage's outputs
            raise ParamsError(f"captures.root: {self.root} does not exist")


def load_capture_params(section: dict | None, where: str = "params.yaml:captures", head_model: dict | None = None):
    """(CaptureSource, SyntheticConfig | ImportConfig) from a `captures` section, validated; with the `head_model`
    section, also that the landmark calibration's subjects are not the synthetic captures' (their seeds differ)."""
    if section is not None and not isinstance(section, dict):
        raise ParamsError(f"{where}: expected a mapping, got {section!r}")
    section = dict(section or {})
    src = build_config(CaptureSource, {k: section.pop(k) for k in ("source", "root") if k in section}, where)
    synthetic = section.pop("synthetic", None) or {}
    imported = build_config(ImportConfig, section, where)  # checked for every source: a typo is never ignored
    if src.source == "synthetic":
        cfg = build_config(SyntheticConfig, synthetic, f"{where}.synthetic")
        _check_calibration_seed(head_model, cfg, where)
        return src, cfg
    return src, imported


def _check_calibration_seed(head_model: dict | None, cfg: SyntheticConfig, where: str) -> None:
    if head_model is None:
        return
    head = build_config(HeadModelParams, head_model, where.replace("captures", "head_model"))
    if head.calibrate_landmarks and head.calibration_config().seed == cfg.seed:
        raise ParamsError(f"{where}.synthetic.seed = head_model.calibration.seed = {cfg.seed}: the landmark "
                          "calibration would be rendered from the very subjects it is evaluated on; give them "
                          "different seeds")


def make_captures(head_model: Path | str | None, out: Path | str, sheets: Path | str | None, src: CaptureSource,
                  cfg: SyntheticConfig | ImportConfig, metrics_path: Path | str | None = None,
                  overwrite: bool = True) -> dict:
    """Generate (synthetic, from the head model folder) or import (`src.root`) the capture into `out`, draw the
    contact sheets into `sheets` (None: none); returns (and writes) the metrics."""
    out = Path(out)
    if src.source == "synthetic":
        summary = generate(Path(head_model), out, cfg)
    else:
        report = import_capture(src.source, src.root, out, cfg, overwrite=overwrite)
        summary = {"skipped": len(getattr(report, "skipped", []) or [])}
    cap = load_capture(out)
    m = cap.manifest
    metrics = {
        "captures_version": capture_version(out),
        "source": src.source,
        "n_subjects": int(m.subject.nunique()),
        "n_sequences": int(len(cap.sequences())),
        "n_frames": int(m.groupby(["subject", "sequence"]).frame.nunique().sum()),
        "n_cameras": int(m.camera.nunique()),
        "n_images": int(len(m)),
        "split_subjects": {k: int(v) for k, v in m.groupby("split").subject.nunique().items()},
        **{k: v for k, v in summary.items() if isinstance(v, (int, float))},
    }
    if sheets is not None:
        Path(sheets).mkdir(parents=True, exist_ok=True)
    if src.source == "synthetic":
        metrics.update(detection_report(out))
    for subject in sorted(m.subject.unique())[:MAX_SHEETS] if sheets is not None else []:
        contact_sheet(out, subject, Path(sheets) / f"{subject}.png")
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def check_view_size(src: CaptureSource, cfg, tokens, path) -> None:
    """ParamsError when the capture's views as the captures section (`src`, `cfg` of `load_capture_params`) sizes
    them (captures.synthetic.resolution, or an import's captures.resize) do not divide into the app token grid
    (tokens.resolution / tokens.patch_size tokens per side): the correspondences stage would refuse every frame,
    after the landmarks and the fit had run (check_params calls it; an imported capture sized by its source is
    checked by the correspondences stage)."""
    t = tokens.app_tokens
    if src.source == "synthetic":
        key, size = "captures.synthetic.resolution", [cfg.resolution, cfg.resolution]
    elif getattr(cfg, "resize", None):
        key, size = "captures.resize", list(cfg.resize)
    else:
        return
    if size[0] % t or size[1] % t:
        raise ParamsError(f"{path}: {key} {size[0] if size[0] == size[1] else size} is not divisible by the "
                          f"{t} app tokens per side (tokens.resolution / tokens.patch_size): the correspondences "
                          f"stage would refuse every frame; use a multiple of {t}, e.g. {size[0] // t * t}")
