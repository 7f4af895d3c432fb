"""The `dataset` stage's work (also `geoface dataset`): pack training samples into safetensors shards, each of
its sequence's split.

One sample = one fitted frame: its views resized to `tokens.resolution` (images in [-1, 1] and foreground
masks), the refined cameras with K scaled to that resolution, the canonical UV position map baked at
`tokens.uv_resolution` from the fitted canonical mesh (UV folder's .canonical.npy), and the token-level
correspondence targets (computed at the same token grids: both read the `tokens` params section). Frames the
fit marked as diverged are left out and counted. Splits come from the capture manifest (train / val / test by
subject or by sequence: load_capture refuses a sequence of two splits). Writes
OUT/<subject>/<sequence>/shard_XXXX.safetensors (format: geoface_model/data.py; each shard's metadata names its
sequence's split), one work unit per fitted sequence (flame_fitting/core/units.py): a sequence whose
inputs (its capture files, the fit's arrays and cameras, canonical meshes and correspondences it reads: `READS`; the
head model, the params, the code) did not change keeps its shards as they are. Readers take every shard under OUT
in sorted path order (subject, sequence, shard), which is the sample order of the former OUT/<split>/ layout.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.core.executor import ExecutorConfig, open_executor
from flame_fitting.core.fileio import check_output_dir, write_json
from flame_fitting.core.readers import read_mask
from flame_fitting.core.params import spec
from flame_fitting.core.unit_keys import Unit, code_digest, tree_digest, unit_key
from flame_fitting.core.units import run_units, write_unit_failures
from flame_fitting.formats.capture import CaptureError, load_capture
from flame_fitting.formats.capture_checks import load_cameras
from flame_fitting.formats.fits import fit_folders, load_sequence_fit
from flame_fitting.formats.lineage import captures_version_of, check_same_capture, write_lineage
from flame_fitting.formats.units import capture_unit_hashes, unit_capture, unit_payload
from flame_fitting.head.shared import shared_head_model
from flame_fitting.uv import UVLayout, bake_posmap
from flame_fitting.uv.bake import model_layout
from flame_fitting.uv.correspondence_files import load_correspondences

from .config import TokensConfig
from .data import write_shard


@dataclass
class DatasetParams:
    samples_per_shard: int = spec(64, "samples per safetensors shard (shards are per sequence)", lo=1)


def view_arrays(cap, rows, cams, names, S):
    """images (V,3,S,S) in [-1,1], masks (V,1,S,S), K (V,3,3), world_to_cam (V,4,4) at resolution S."""
    imgs, masks, Ks, w2cs = [], [], [], []
    for n in names:
        row = rows.loc[n]
        img = cv2.resize(cap.image(row), (S, S), interpolation=cv2.INTER_AREA)
        imgs.append(img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
        if isinstance(row.get("mask_path"), str):
            path = cap.root / row["mask_path"]
            m = read_mask(path, error=CaptureError)  # its header's size checked before it is decoded
            if m is None:
                raise CaptureError(f"{path}: the mask is missing or not a decodable image")
            m = cv2.resize(m.astype(np.float32) / 255, (S, S), interpolation=cv2.INTER_AREA) > 0.5
        else:
            m = np.ones((S, S), bool)
        masks.append(m[None].astype(np.float32))
        cam = cams[n].resized(S, S)
        Ks.append(cam.K)
        w2cs.append(cam.world_to_cam)
    return np.stack(imgs), np.stack(masks), np.stack(Ks), np.stack(w2cs)


CODE = [Path(__file__).resolve().parents[1] / "flame_fitting" / r for r in
        ("__init__.py", "core", "geometry", "formats", "head", "uv")] + \
       [Path(__file__).resolve().parent / f for f in ("__init__.py", "config.py", "data.py", "shard_checks.py",
                                                      "shard_names.py", "dataset_build.py")]
# the files of its input unit folders a unit reads (dataset_unit), the only ones its key hashes: a fit's status.json,
# history.csv or residuals.parquet and the UV folder's position maps (.npz: the shards' maps are baked from the
# canonical mesh) may change without re-running it. Every frame's canonical mesh and correspondences are hashed,
# the diverged frames' (not read) too: they change only with the fit.npz, which is hashed.
READS = {"fit": ("fit.npz", "cameras.json"), "uv": ("*.canonical.npy",), "correspondences": ("*.npz",)}


def build_dataset(captures: Path | str, fits: Path | str, uv: Path | str, correspondences: Path | str,
                  head_model: Path | str, out: Path | str, cfg: DatasetParams, tok: TokensConfig,
                  metrics_path: Path | str | None = None, executor: ExecutorConfig | None = None,
                  gutter: int = 4) -> dict:
    """Shards of every successfully fitted frame (module docstring), the sequences whose inputs changed only, on
    `executor`, their UV maps baked with `gutter` (the uv stage's `uv.gutter`, which evaluation's mesh from a
    generated map uses too); returns (and writes) the metrics."""
    cap, uv, correspondences, out = (load_capture(captures, check_files=False),  # units check their images
                                     Path(uv), Path(correspondences), Path(out))
    inputs = [captures, fits, uv, correspondences, head_model]
    check_output_dir(out, inputs, True, kind="dataset")
    check_same_capture(captures, fits, "fits")
    head, code = tree_digest(head_model), code_digest(*CODE)
    params = {**asdict(cfg), **asdict(tok), "gutter": int(gutter)}
    # the split a unit writes into its shards: its sequence's (one per sequence: load_capture); the subject's first
    # row's before 2026-12-07, so a later sequence moved to another split kept its shards and their old split
    split_of = {k: str(cap.manifest.split.iat[rows[0]]) for k, rows in cap.sequence_rows.items()}
    units = [Unit(f.parent.name, f.name, unit_key(
        "dataset", capture=capture_unit_hashes(cap, f.parent.name, f.name), split=split_of.get((f.parent.name, f.name)),
        fit=tree_digest(f, READS["fit"]), head=head, code=code,
        uv=tree_digest(uv / f.parent.name / f.name, READS["uv"]), params=params,
        correspondences=tree_digest(correspondences / f.parent.name / f.name, READS["correspondences"])))
        for f in fit_folders(fits)]
    fn = partial(dataset_unit, str(cap.root), str(fits), str(uv), str(correspondences), str(head_model), cfg, tok,
                 gutter=int(gutter))
    with open_executor(executor or ExecutorConfig(workers=1)) as ex:
        run = run_units(ex, fn, units, out, "dataset", inputs=inputs, source=fits, payload=partial(unit_payload, cap))
    write_unit_failures(out / "failures.json", run)
    recs = run.records.values()
    version = captures_version_of(captures)  # lineage.json: what the train stage's model card reads
    write_lineage(out, captures_version=version, head_model_sha256=head,
                  params={"dataset": cfg.__dict__, "tokens": tok.__dict__})
    metrics = {"captures_version": version}
    metrics |= {f"samples_{s}": sum(r["samples"] for r in recs if r["split"] == s) for s in ("train", "val", "test")}
    metrics.update({f"subjects_{s}": len({r["subject"] for r in recs if r["split"] == s and r["samples"]})
                    for s in ("train", "val", "test")})
    metrics.update({"frames_left_out_diverged": sum(r["skipped"] for r in recs), "resolution": tok.resolution,
                    "uv_resolution": tok.uv_resolution, "app_tokens": tok.app_tokens, "geo_tokens": tok.geo_tokens,
                    "view_aspect_stretch": aspect_stretch(cap), **run.summary()})
    if metrics["view_aspect_stretch"] > 1.01:  # the model would learn stretched faces; generation gives square crops
        print(f"dataset: warning: {cap.root} holds non-square views, resized to {tok.resolution}² in the shards (faces "
              f"stretched up to {metrics['view_aspect_stretch']:.3g}×); import the capture with captures.crop_head "
              "(square head crops) or crop_aspect: 1 (docs/sources.md)", file=sys.stderr)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics


def aspect_stretch(cap) -> float:
    """The largest width/height ratio (or its inverse) of the capture's views: how much the square shards stretch
    a face (1.0 for square views; 1.46 for NeRSemble's 1100×1604)."""
    m = cap.manifest
    r = (m.width / m.height).to_numpy(float) if len(m) else np.ones(1)
    return round(float(np.maximum(r, 1 / r).max()), 4)


def _layout(head_model: str, n_shape: int, n_expr: int) -> UVLayout:
    return model_layout(shared_head_model(head_model, n_shape=n_shape, n_expr=n_expr))  # once per process and content


def dataset_unit(captures: str, fits: str, uv: str, correspondences: str, head_model: str, cfg: DatasetParams,
                 tok: TokensConfig, unit: Unit, tmp: Path, extras, gutter: int = 4) -> tuple[dict, list]:
    """One dataset unit (runs in a worker): the shards of one fitted sequence into `tmp`."""
    subject, sequence = unit.subject, unit.sequence
    cap = unit_capture(captures, unit)
    m = cap.manifest
    split = str(m.split.iat[0])  # the sequence's rows only (unit_capture), all of one split (load_capture)
    folder = Path(fits) / subject / sequence
    fit = load_sequence_fit(folder)
    layout = _layout(head_model, fit["shape"].shape[1], fit["expr"].shape[1])
    cams = load_cameras(folder / "cameras.json")
    items, skipped = [], 0
    for i, frame in enumerate(fit["frame"].tolist()):
        if not fit["ok"][i]:
            skipped += 1
            continue
        cpath = Path(correspondences) / subject / sequence / f"{frame:05d}.npz"
        corr = load_correspondences(cpath, maps=False)  # token-level targets only: the maps are not shards' data
        if (corr.tokens.app_tokens, corr.tokens.geo_tokens) != (tok.app_tokens, tok.geo_tokens):
            raise ValueError(f"{cpath}: token grids {corr.tokens.app_tokens}/{corr.tokens.geo_tokens} differ from "
                             f"params tokens {tok.app_tokens}/{tok.geo_tokens}; re-run the correspondences stage")
        rows = m[(m.subject == subject) & (m.sequence == sequence) & (m.frame == frame)].set_index("camera")
        names = list(corr.views)
        images, masks, K, w2c = view_arrays(cap, rows, cams, names, tok.resolution)
        canon = np.load(Path(uv) / subject / sequence / f"{frame:05d}.canonical.npy")
        baked = bake_posmap(canon, layout, tok.uv_resolution, gutter, frame_id=f"{subject}/{sequence}/{frame:05d}")
        items.append(dict(
            images=images, masks=masks, K=K, world_to_cam=w2c,
            uv_posmap=baked.posmap.transpose(2, 0, 1), uv_mask=baked.mask[None].astype(np.float32),
            a2g_index=corr.a2g_index, a2g_weight=corr.a2g_weight.astype(np.float32),
            g2a_index=corr.g2a_index, g2a_weight=corr.g2a_weight.astype(np.float32),
            subject=subject, sequence=sequence, frame=frame, cameras=names))
    for k in range(0, len(items), cfg.samples_per_shard):
        write_shard(tmp / f"shard_{k // cfg.samples_per_shard:04d}.safetensors", items[k:k + cfg.samples_per_shard],
                    split=split, patch_size=tok.patch_size, geo_patch_size=tok.geo_patch_size)
    return {"subject": subject, "split": split, "samples": len(items), "skipped": skipped}, []
