"""The `dataset` stage's work (also `geoface dataset`): pack training samples into safetensors shards, split by
subject.

One sample = one fitted frame: its views resized to `tokens.resolution` (images in [-1, 1] and foreground
masks), the refined cameras with K scaled to that resolution, the canonical UV position map baked at
`tokens.uv_resolution` from the fitted canonical mesh (UV folder's .canonical.npy), and the token-level
correspondence targets (computed at the same token grids: both read the `tokens` params section). Frames the
fit marked as diverged are left out and counted. Splits come from the capture manifest (train / val / test by
subject). Writes OUT/<split>/shard_XXXX.safetensors (format: geoface_model/data.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from flame_fitting.core.fileio import make_temp_dir, replace_dir, write_json
from flame_fitting.core.params import spec
from flame_fitting.formats.capture import load_cameras, load_capture
from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.formats.lineage import captures_version_of, tree_hash, write_lineage
from flame_fitting.head.head_model import load_head_model
from flame_fitting.uv import UVLayout, bake_posmap
from flame_fitting.uv.correspondences import load_correspondences

from .config import TokensConfig
from .data import write_shard


@dataclass
class DatasetParams:
    samples_per_shard: int = spec(64, "samples per safetensors shard", lo=1)


def view_arrays(cap, rows, cams, names, S):
    """images (V,3,S,S) in [-1,1], masks (V,1,S,S), K (V,3,3), world_to_cam (V,4,4) at resolution S."""
    imgs, masks, Ks, w2cs = [], [], [], []
    for n in names:
        row = rows.loc[n]
        img = cv2.resize(cap.image(row), (S, S), interpolation=cv2.INTER_AREA)
        imgs.append(img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
        if isinstance(row.get("mask_path"), str):
            m = cv2.imread(str(cap.root / row["mask_path"]), cv2.IMREAD_GRAYSCALE)
            m = cv2.resize(m.astype(np.float32) / 255, (S, S), interpolation=cv2.INTER_AREA) > 0.5
        else:
            m = np.ones((S, S), bool)
        masks.append(m[None].astype(np.float32))
        cam = cams[n].resized(S, S)
        Ks.append(cam.K)
        w2cs.append(cam.world_to_cam)
    return np.stack(imgs), np.stack(masks), np.stack(Ks), np.stack(w2cs)


def build_dataset(captures: Path | str, fits: Path | str, uv: Path | str, correspondences: Path | str,
                  head_model: Path | str, out: Path | str, cfg: DatasetParams, tok: TokensConfig,
                  metrics_path: Path | str | None = None) -> dict:
    """Shards of every successfully fitted frame (module docstring); returns (and writes) the metrics."""
    cap, uv, correspondences = load_capture(captures), Path(uv), Path(correspondences)
    m = cap.manifest
    split_of = m.groupby("subject").split.first().to_dict()
    samples = {"train": [], "val": [], "test": []}
    skipped, model, layout = 0, None, None
    for folder in tqdm(sorted(p.parent for p in Path(fits).glob("*/*/fit.npz")), desc="dataset"):
        fit = load_sequence_fit(folder)
        subject, sequence = folder.parent.name, folder.name
        if model is None:
            model = load_head_model(head_model, n_shape=fit["shape"].shape[1], n_expr=fit["expr"].shape[1])
            layout = UVLayout.from_head_model(model)
        cams = load_cameras(folder / "cameras.json")
        for i, frame in enumerate(fit["frame"].tolist()):
            if not fit["ok"][i]:
                skipped += 1
                continue
            cpath = correspondences / subject / sequence / f"{frame:05d}.npz"
            corr = load_correspondences(cpath)
            if (corr.tokens.app_tokens, corr.tokens.geo_tokens) != (tok.app_tokens, tok.geo_tokens):
                raise ValueError(f"{cpath}: token grids {corr.tokens.app_tokens}/{corr.tokens.geo_tokens} differ from "
                                 f"params tokens {tok.app_tokens}/{tok.geo_tokens}; re-run the correspondences stage")
            rows = m[(m.subject == subject) & (m.sequence == sequence) & (m.frame == frame)].set_index("camera")
            names = list(corr.views)
            images, masks, K, w2c = view_arrays(cap, rows, cams, names, tok.resolution)
            canon = np.load(uv / subject / sequence / f"{frame:05d}.canonical.npy")
            baked = bake_posmap(canon, layout, tok.uv_resolution, frame_id=f"{subject}/{sequence}/{frame:05d}")
            samples[split_of[subject]].append(dict(
                images=images, masks=masks, K=K, world_to_cam=w2c,
                uv_posmap=baked.posmap.transpose(2, 0, 1), uv_mask=baked.mask[None].astype(np.float32),
                a2g_index=corr.a2g_index, a2g_weight=corr.a2g_weight.astype(np.float32),
                g2a_index=corr.g2a_index, g2a_weight=corr.g2a_weight.astype(np.float32),
                subject=subject, sequence=sequence, frame=frame, cameras=names))
    tmp = make_temp_dir(out)
    for split, items in samples.items():
        for k in range(0, len(items), cfg.samples_per_shard):
            write_shard(tmp / split / f"shard_{k // cfg.samples_per_shard:04d}.safetensors",
                        items[k:k + cfg.samples_per_shard], split=split, patch_size=tok.patch_size,
                        geo_patch_size=tok.geo_patch_size)
    version = captures_version_of(captures)  # lineage.json: what the train stage's model card reads
    write_lineage(tmp, captures_version=version, head_model_sha256=tree_hash(head_model),
                  params={"dataset": cfg.__dict__, "tokens": tok.__dict__})
    replace_dir(tmp, out)
    metrics = {"captures_version": version, **{f"samples_{s}": len(v) for s, v in samples.items()}}
    metrics.update({f"subjects_{s}": len({x["subject"] for x in v}) for s, v in samples.items()})
    metrics.update({"frames_left_out_diverged": skipped, "resolution": tok.resolution, "uv_resolution": tok.uv_resolution,
                    "app_tokens": tok.app_tokens, "geo_tokens": tok.geo_tokens})
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics
