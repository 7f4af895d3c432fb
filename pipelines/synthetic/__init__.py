"""geoface's built-in default data: synthetic multi-view captures rendered from the head model.

Every quantity is known (identity, expression, pose, cameras, the pixel→surface map), so these
captures are the yardstick of every later stage. See docs/synthetic.md.

    generate(head_model_dir, out, cfg, progress=True) -> dict     write a capture (+ ground truth)
    detection_report(capture_root) -> dict                        MediaPipe detection rate / error per |yaw| band
    contact_sheet(capture_root, subject, out_png) -> Path          all views of frame 0 of a subject
"""
from pipelines.synthetic.config import SyntheticConfig
from pipelines.synthetic.generate import generate
from pipelines.synthetic.report import contact_sheet, detection_report

__all__ = ["SyntheticConfig", "generate", "detection_report", "contact_sheet"]
