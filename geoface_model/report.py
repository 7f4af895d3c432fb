"""Figures and the offline HTML report of an evaluation (`evaluate` stage).

  sample_grid(result)    one PNG per sample: row 1 the reference and the ground-truth targets, row 2 the
                         generated targets, row 3 the generated targets with the generated mesh overlaid,
                         row 4 the ground-truth and generated UV position maps (the paper's Figure 1/8 layout)
  overlay_figure(result) the generated views with the generated mesh overlaid, large tiles (no mesh: the views)
  loss_figure(csv)       training loss curves (diffusion, alignment) from plots/train/loss.csv
  write_report(...)      one self-contained HTML file (PNG figures embedded as data URIs, no scripts, no network):
                         provenance, metric tables with the ground-truth and every baseline row, the loss
                         curves, per-sample tables and every sample grid.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.core.fileio import atomic_write, encode_image
from flame_fitting.uv.preview import posmap_rgb

from .generate import contact_sheet
from .summary import with_count

# what each reported metric means (shown in the report; docs/evaluation.md has the definitions)
METRIC_DOCS = {
    "psnr": "PSNR (dB) of generated vs ground-truth target views; higher is better",
    "ssim": "SSIM of generated vs ground-truth target views; higher is better",
    "psnr_fg": "PSNR over the pixels inside the ground-truth head mask only (background ignored)",
    "ssim_fg": "mean of the SSIM map over the windows centred inside the ground-truth head mask",
    "lpips": "LPIPS (AlexNet); only with local weights",
    "tsed": "TSED: fraction of neighbouring view pairs with >= 10 SIFT matches and median epipolar error < 2 px",
    "landmark_fit_rmse_px": "MediaPipe landmarks on the views, one head fitted across them: RMSE (px at S)",
    "mesh_alignment_px": "generated mesh's landmarks projected vs landmarks detected on the views (px at S)",
    "geometry_error_mm": "UV position map vs the fitted head (mm, mean over valid texels)",
    "attention_hit_rate": "appearance tokens whose strongest geometry attention is within 1 token of the truth",
    "attention_hit_rate_low/_mid/_high": "the same with every generated frame at fixed noise levels of one band "
                                         "(low / mid / high thirds of the training timesteps, see noise_bands)",
    "attention_chance": "the same for a uniformly random key",
}
# baseline rows of the metric table: name in `baseline_<name>_<metric>` -> what it is
BASELINES = {
    "copy_reference": "copy the reference (every target = the reference view)",
    "mean_colour": "constant mean training colour (one constant image)",
    "mean_uv": "mean training UV map (geometry)",
    "camera_only": "camera-only attention (targets of the nearest training camera; no image, no noise input)",
}
MAIN = ["psnr", "psnr_fg", "ssim", "ssim_fg", "lpips", "tsed", "landmark_fit_rmse_px", "mesh_alignment_px",
        "geometry_error_mm", "attention_hit_rate", "attention_hit_rate_low", "attention_hit_rate_mid",
        "attention_hit_rate_high", "attention_chance"]


def metric_rows(summary: dict) -> list[dict]:
    """The metric table: the model, the ground-truth views / fitted mesh, and one row per baseline (its
    `baseline_<name>_<metric>` keys under the model's column names); a mean over fewer than all samples says over
    how many (`with_count`)."""
    rows = [{"": "generated (model)", **{k: with_count(summary, k) for k in MAIN}},
            {"": "ground-truth views / fitted mesh", **{k: with_count(summary, f"gt_{k}") for k in MAIN}}]
    for name, label in BASELINES.items():
        row = {k: with_count(summary, f"baseline_{name}_{k}") for k in MAIN}
        if any(v is not None for v in row.values()):
            rows.append({"": label, **row})
    return rows


def _tile_row(images: list[np.ndarray], cams, labels: list[str], vertices, faces, tile: int) -> np.ndarray:
    return contact_sheet(list(images), list(cams), labels, vertices, faces, tile=tile, cols=len(images))


def _pad_to(row: np.ndarray, width: int) -> np.ndarray:
    return np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) if row.shape[1] < width else row


def sample_grid(r, faces: np.ndarray | None, tile: int = 160) -> np.ndarray:
    """RGB uint8 grid of one `evaluate.SampleResult` (module docstring)."""
    ref_cam, tcams = r.cameras[0], r.cameras[1:]
    names = [c.name for c in tcams]
    rows = [_tile_row([r.reference, *r.gt], [ref_cam, *tcams], [f"ref {ref_cam.name}", *[f"GT {n}" for n in names]],
                      None, None, tile)]
    blank = np.zeros_like(r.reference)
    rows.append(_tile_row([blank, *r.generated], [ref_cam, *tcams], ["generated", *names], None, None, tile))
    if r.vertices is not None:
        rows.append(_tile_row([blank, *r.generated], [ref_cam, *tcams], ["+ generated mesh", *names], r.vertices, faces,
                              tile))
        maps = [posmap_rgb(r.gt_posmap, r.uv_mask), posmap_rgb(r.posmap, r.uv_mask)]
        maps = [cv2.resize(m, (tile, tile), interpolation=cv2.INTER_NEAREST) for m in maps]
        for m, label in zip(maps, ("UV map: fitted", "UV map: generated")):
            cv2.putText(m, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(np.concatenate(maps, 1))
    width = max(row.shape[1] for row in rows)
    return np.concatenate([_pad_to(row, width) for row in rows], 0)


def overlay_figure(r, faces: np.ndarray, tile: int = 256) -> np.ndarray:
    """The generated views with the generated mesh overlaid (the views alone, labelled, for a model without one)."""
    labels = [c.name if r.vertices is not None else f"{c.name} (no mesh)" for c in r.cameras[1:]]
    return contact_sheet(list(r.generated), list(r.cameras[1:]), labels, r.vertices,
                         faces if r.vertices is not None else None, tile=tile, cols=len(r.generated))


def loss_figure(loss_csv: Path | str) -> np.ndarray | None:
    """RGB uint8 plot of the training loss curves, or None when the CSV is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    p = Path(loss_csv)
    if not p.is_file():
        return None
    df = pd.read_csv(p)
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    for col in ("loss", "diffusion_loss", "align_loss"):
        if col in df and df[col].notna().any():
            ax.plot(df["step"], df[col], label=col, lw=1)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    img = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) RGB uint8 figure as PNG bytes (embedded in the HTML report)."""
    return encode_image(np.asarray(rgb, np.uint8), ".png", what="report figure")


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(rgb: np.ndarray, alt: str) -> str:
    data = base64.b64encode(png_bytes(rgb)).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


# entries that say how a run went, not what it produced (times, memory, a resume): they stay in metrics/*.json and
# are left out of the report (a DVC output), so it is the same bytes whenever the results are
TIMINGS = ("generate_s", "s_per_sample")  # the evaluation's, in the summary and the per-sample rows
TRAIN_RUN_ENTRIES = ("s_per_step", "peak_mem_mb", "steps_run", "resumed_from", "skipped_checkpoints")  # train.json's


def _without(d: dict | None, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in (d or {}).items() if k not in keys}


def write_report(path: Path | str, summary: dict, samples: list[dict], views: list[dict], figures: list[tuple[str, np.ndarray]],
                 provenance: dict, train_metrics: dict | None = None) -> Path:
    """Self-contained HTML report (atomic write). summary: metrics/eval.json; samples: per-sample metric rows;
    views: per-view rows; figures: (caption, RGB) pairs; provenance: JSON-able facts (model, data, settings). Run
    times and resumes (TIMINGS, TRAIN_RUN_ENTRIES) are left out."""
    summary, samples = _without(summary, TIMINGS), [_without(s, TIMINGS) for s in samples]
    rows = metric_rows(summary)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>geoface evaluation</title><style>",
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}th{background:#eee}"
        "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:13px;color:#444}code{background:#f4f4f4}",
        "</style></head><body><h1>geoface evaluation</h1>",
        f"<p>Split <b>{html.escape(str(summary.get('split')))}</b>, {summary.get('n_samples')} sample(s), "
        f"{summary.get('n_targets')} target view(s) each. LPIPS: {html.escape(str(summary.get('lpips_status')))}.</p>",
        "<h2>Metrics</h2>", _table(rows, ["", *MAIN]),
        f"<p>Noise bands (timesteps): {html.escape(str(summary.get('noise_bands')))}. Baselines from "
        f"{summary.get('baseline_training_samples')} training sample(s); definitions in docs/evaluation.md.</p>",
        "<ul>" + "".join(f"<li><code>{k}</code>: {html.escape(v)}</li>" for k, v in METRIC_DOCS.items()) + "</ul>",
    ]
    notes = summary.get("notes") or []
    if notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    train_metrics = _without(train_metrics, TRAIN_RUN_ENTRIES)
    if train_metrics:
        parts += ["<h2>Training</h2>", _table([train_metrics], list(train_metrics))]
    for caption, rgb in figures:
        parts.append(_img(rgb, caption))
    if samples:
        cols = list(dict.fromkeys(k for s in samples for k in s))
        parts += ["<h2>Per sample</h2>", _table(samples, cols)]
    if views:
        parts += ["<h2>Per view</h2>", _table(views, list(views[0]))]
    parts += ["<h2>Provenance</h2><pre>" + html.escape(_pretty(provenance)) + "</pre></body></html>"]
    return atomic_write(Path(path), lambda fh: fh.write("\n".join(parts).encode("utf-8")))


def _pretty(d: dict) -> str:
    import json

    return json.dumps(d, indent=2, default=str)
