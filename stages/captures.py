"""DVC stage `captures`: the canonical multi-view capture every later stage reads.

`captures.source: synthetic` (default) renders captures from the head model with full ground
truth (pipelines/synthetic, docs/synthetic.md); any other source imports a real dataset from
`captures.root` (nersemble | renderme360 | colmap | transforms_json | folder; docs/sources.md).
Writes data/captures/ (atomically), metrics/captures.json (counts; on synthetic data the
MediaPipe detection rate and landmark error per yaw band, measured on the generated views) and
a contact sheet PNG per subject (the first 24) under plots/captures/.
Run: `dvc repro captures`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_json

from flame_fitting.formats.capture import load_capture
from flame_fitting.core.params import ParamsError, build_config, read_params, spec
from pipelines.import_config import ImportConfig
from pipelines.registry import SOURCES, import_capture

OUT = Path("data/captures")
SHEETS = Path("plots/captures")
MAX_SHEETS = 24  # contact sheets for the first subjects only (a large dataset has thousands)


@dataclass
class CaptureSource:
    source: str = spec("synthetic", "where captures come from", choices=list(SOURCES))
    root: str | None = spec(None, "dataset folder for real sources; unused for synthetic")

    def validate(self) -> None:
        if self.source != "synthetic" and not self.root:
            raise ParamsError(f"captures.root: needed for captures.source={self.source!r}")


def load_params(params: dict):
    """(CaptureSource, SyntheticConfig | ImportConfig) from the `captures` section, validated."""
    section = dict(params.get("captures") or {})
    src = build_config(CaptureSource, {k: section.pop(k) for k in ("source", "root") if k in section},
                       "params.yaml:captures")
    synthetic = section.pop("synthetic", None) or {}
    if src.source == "synthetic":
        from pipelines.synthetic import SyntheticConfig

        return src, build_config(SyntheticConfig, synthetic, "params.yaml:captures.synthetic")
    return src, build_config(ImportConfig, section, "params.yaml:captures")


def main() -> None:
    src, cfg = load_params(read_params())
    from pipelines.synthetic import contact_sheet  # works on any canonical capture

    if src.source == "synthetic":
        from pipelines.synthetic import detection_report, generate

        summary = generate(Path("data/head_model"), OUT, cfg)
    else:
        report = import_capture(src.source, src.root, OUT, cfg, overwrite=True)
        summary = {"skipped": len(getattr(report, "skipped", []) or [])}
    cap = load_capture(OUT)
    m = cap.manifest
    metrics = {
        "source": src.source,
        "n_subjects": int(m.subject.nunique()),
        "n_sequences": int(len(cap.sequences())),
        "n_frames": int(m.groupby(["subject", "sequence"]).frame.nunique().sum()),
        "n_cameras": int(m.camera.nunique()),
        "n_images": int(len(m)),
        "split_subjects": {k: int(v) for k, v in m.groupby("split").subject.nunique().items()},
        **{k: v for k, v in summary.items() if isinstance(v, (int, float))},
    }
    SHEETS.mkdir(parents=True, exist_ok=True)
    if src.source == "synthetic":
        metrics.update(detection_report(OUT))
    for subject in sorted(m.subject.unique())[:MAX_SHEETS]:
        contact_sheet(OUT, subject, SHEETS / f"{subject}.png")
    write_json("metrics/captures.json", metrics)
    print(f"captures: {metrics['n_images']} images of {metrics['n_subjects']} subjects from {src.source}")


if __name__ == "__main__":
    run(main)
