"""Training shards (safetensors) and the Dataset / collate the trainer reads them with.

A shard is one safetensors file holding N samples of one split with the same number of views V
(see docs/contracts.md, "Training samples"), stacked:

    images (N,V,3,S,S) uint8   = round((x + 1) · 127.5) of the [-1,1] views (they come from 8-bit images)
    masks (N,V,1,S,S) uint8 {0,1}     K (N,V,3,3) f32      world_to_cam (N,V,4,4) f32
    uv_posmap (N,3,R,R) f32 in [-1,1] uv_mask (N,1,R,R) uint8
    a2g_index (ΣM,3) int32 [view, app_token, geo_token]  a2g_weight (ΣM,) f32  a2g_offsets (N+1,) int64
    g2a_index (ΣM2,3) int32 [view, geo_token, app_token] g2a_weight (ΣM2,) f32 g2a_offsets (N+1,) int64

Sample n's sparse targets are rows offsets[n]:offsets[n+1]. The header metadata key "geoface" is JSON:
{"format": "geoface-shard", "version": 1, "split", "resolution", "uv_resolution", "patch_size",
"geo_patch_size", "app_tokens": [h, w], "geo_tokens": [h, w], "n_samples", "n_views", "subjects",
"samples": [{"subject", "sequence", "frame", "cameras"}]}. Its names are untrusted input (a dataset from
someone else): a header whose names are not safe single names is refused (shard_names.py).

`GeoFaceDataset` picks per item n_ref reference + n_tgt target views (random per epoch for train,
fixed per item for val/test) and remaps the sparse targets to the chosen views (references first).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from flame_fitting.core.arrays import checked_array
from flame_fitting.core.fileio import write_bytes
from flame_fitting.core.interrupt import interrupts_held
from flame_fitting.core.json_files import parse_json

from .shard_checks import SPARSE, ShardError, check_layout, checked_offsets
from .shard_names import header_names_problem

FORMAT, VERSION = "geoface-shard", 1
DENSE = ("images", "masks", "K", "world_to_cam", "uv_posmap", "uv_mask")

@dataclass
class ShardMeta:
    split: str
    resolution: int  # S
    uv_resolution: int  # R
    patch_size: int  # image pixels per app token side
    geo_patch_size: int  # UV texels per geo token side
    n_samples: int
    n_views: int
    subjects: list[str] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)  # {"subject", "sequence", "frame", "cameras"}

    @property
    def app_tokens(self) -> int:
        return self.resolution // self.patch_size

    @property
    def geo_tokens(self) -> int:
        return self.uv_resolution // self.geo_patch_size

    def to_json(self) -> str:
        d = {"format": FORMAT, "version": VERSION, **asdict(self)}
        d["app_tokens"], d["geo_tokens"] = [self.app_tokens] * 2, [self.geo_tokens] * 2
        return json.dumps(d)


def read_shard_meta(path: Path | str) -> ShardMeta:
    """The JSON header of a shard (no tensor is read)."""
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("geoface")
    except Exception as e:  # safetensors raises several types for damaged files
        raise ShardError(f"{path}: not a readable safetensors file ({e})") from None
    if raw is None:
        raise ShardError(f"{path}: no 'geoface' metadata in the header (not a geoface shard)")
    d = parse_json(raw, f"{path}: the 'geoface' metadata", ShardError)  # nested too deeply included
    if not isinstance(d, dict) or d.pop("format", None) != FORMAT or d.pop("version", None) != VERSION:
        raise ShardError(f"{path}: not a {FORMAT} v{VERSION} file")
    d.pop("app_tokens", None), d.pop("geo_tokens", None)
    try:
        meta = ShardMeta(**d)
    except TypeError as e:
        raise ShardError(f"{path}: the 'geoface' metadata has other fields than a {FORMAT} v{VERSION} file ({e})") from None
    sizes = ("resolution", "uv_resolution", "patch_size", "geo_patch_size", "n_samples", "n_views")
    bad = [n for n in sizes if type(getattr(meta, n)) is not int or getattr(meta, n) < 1]
    if bad or not isinstance(meta.split, str):
        raise ShardError(f"{path}: the 'geoface' metadata's {bad or ['split']} must be positive integers (split a string)")
    if why := header_names_problem(meta.samples, meta.subjects, meta.n_samples, meta.n_views):
        raise ShardError(f"{path}: the 'geoface' metadata's {why}")
    return meta


def read_shard(path: Path | str) -> tuple[ShardMeta, dict[str, torch.Tensor]]:
    """All tensors of a shard as stored (uint8 images), with its metadata."""
    meta = read_shard_meta(path)
    with safe_open(str(path), "pt") as f:
        return meta, {k: f.get_tensor(k) for k in f.keys()}


def _check_sample(i: int, s: dict, V: int, S: int, R: int, La: int, Lg: int, path) -> None:
    shapes = {"images": (V, 3, S, S), "masks": (V, 1, S, S), "K": (V, 3, 3), "world_to_cam": (V, 4, 4),
              "uv_posmap": (3, R, R), "uv_mask": (1, R, R)}
    for k, shp in shapes.items():
        checked_array(s[k], shp, f"{path}: sample {i} {k}", ShardError)
    for k in ("images", "uv_posmap"):
        if np.abs(np.asarray(s[k])).max() > 1 + 1e-6:
            raise ShardError(f"{path}: sample {i} {k} outside [-1, 1]")
    for k in ("masks", "uv_mask"):
        if not np.isin(np.asarray(s[k]), (0, 1)).all():
            raise ShardError(f"{path}: sample {i} {k} is not a {{0,1}} mask")
    for name, (nq, nk) in (("a2g", (La, Lg)), ("g2a", (Lg, La))):
        idx, w = np.asarray(s[f"{name}_index"]), np.asarray(s[f"{name}_weight"])
        if idx.ndim != 2 or idx.shape[1] != 3 or w.shape != (len(idx),):
            raise ShardError(f"{path}: sample {i} {name}_index must be (M,3) with {name}_weight (M,), got {idx.shape}, {w.shape}")
        if len(idx) == 0:
            continue
        if idx.min() < 0 or idx[:, 0].max() >= V or idx[:, 1].max() >= nq or idx[:, 2].max() >= nk:
            raise ShardError(f"{path}: sample {i} {name}_index out of range (views {V}, queries {nq}, keys {nk})")
        if (w <= 0).any():
            raise ShardError(f"{path}: sample {i} {name}_weight has non-positive weights")
        q = idx[:, 0].astype(np.int64) * nq + idx[:, 1]
        sums = np.bincount(q, weights=w)[np.unique(q)]
        if np.abs(sums - 1).max() > 1e-3:
            raise ShardError(f"{path}: sample {i} {name} weights do not sum to 1 per query (worst {sums[np.argmax(np.abs(sums - 1))]:.4f})")


def write_shard(path: Path | str, samples: list[dict], *, split: str, patch_size: int, geo_patch_size: int) -> ShardMeta:
    """Validate and write samples (contract keys + "subject", "sequence", "frame", optional "cameras") atomically."""
    path = Path(path)
    if not samples:
        raise ShardError(f"{path}: no samples to write")
    V, S = np.asarray(samples[0]["images"]).shape[0], np.asarray(samples[0]["images"]).shape[-1]
    R = np.asarray(samples[0]["uv_posmap"]).shape[-1]
    if S % patch_size or R % geo_patch_size:
        raise ShardError(f"{path}: resolution {S} / uv_resolution {R} not divisible by patch sizes {patch_size} / {geo_patch_size}")
    La, Lg = (S // patch_size) ** 2, (R // geo_patch_size) ** 2
    for i, s in enumerate(samples):
        missing = [k for k in (*DENSE, "a2g_index", "a2g_weight", "g2a_index", "g2a_weight", "subject", "sequence", "frame") if k not in s]
        if missing:
            raise ShardError(f"{path}: sample {i} is missing {missing}")
        _check_sample(i, s, V, S, R, La, Lg, path)
    t = {k: torch.from_numpy(np.stack([np.asarray(s[k], np.float32) for s in samples])) for k in DENSE}
    t["images"] = ((t["images"] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    t["masks"], t["uv_mask"] = t["masks"].to(torch.uint8), t["uv_mask"].to(torch.uint8)
    for name in SPARSE:
        idx = [np.asarray(s[f"{name}_index"], np.int32).reshape(-1, 3) for s in samples]
        t[f"{name}_index"] = torch.from_numpy(np.concatenate(idx))
        t[f"{name}_weight"] = torch.from_numpy(np.concatenate([np.asarray(s[f"{name}_weight"], np.float32) for s in samples]))
        t[f"{name}_offsets"] = torch.from_numpy(np.concatenate([[0], np.cumsum([len(x) for x in idx])]).astype(np.int64))
    recs = [{"subject": str(s["subject"]), "sequence": str(s["sequence"]), "frame": int(s["frame"]),
             "cameras": list(s.get("cameras", [str(v) for v in range(V)]))} for s in samples]
    meta = ShardMeta(split, S, R, patch_size, geo_patch_size, len(samples), V, sorted({r["subject"] for r in recs}), recs)
    if why := header_names_problem(meta.samples, meta.subjects, meta.n_samples, meta.n_views):
        raise ShardError(f"{path}: {why}")
    write_bytes(path, save({k: v.contiguous() for k, v in t.items()}, metadata={"geoface": meta.to_json()}))
    return meta


def check_compatible(meta: ShardMeta, tokens, where: str) -> None:
    """Refuse a shard whose resolution / token grids differ from `tokens` (a config.TokensConfig)."""
    for name in ("resolution", "patch_size", "uv_resolution", "geo_patch_size", "app_tokens", "geo_tokens"):
        a, b = getattr(meta, name), getattr(tokens, name)
        if a != b:
            raise ShardError(f"{where}: shard {name} = {a} but the model config has tokens.{name} = {b}; "
                             "rebuild the dataset or change the tokens section")


class GeoFaceDataset(torch.utils.data.Dataset):
    """Samples of one split from every `*.safetensors` shard under `shard_dir` (recursively)."""

    def __init__(self, shard_dir: Path | str, split: str, n_ref: int = 1, n_tgt: int = 3, seed: int = 0,
                 random_views: bool | None = None, views_asked: str | None = None):
        """`views_asked`: the params keys that asked for n_ref + n_tgt views, as the error for too few names them
        (default the train section's: `train.n_ref = 1 + train.n_tgt = 3`)."""
        self.paths = [p for p in sorted(Path(shard_dir).glob("**/*.safetensors")) if read_shard_meta(p).split == split]
        if not self.paths:
            raise ShardError(f"{shard_dir}: no shard of split {split!r}")
        self.metas = [read_shard_meta(p) for p in self.paths]
        m0 = self.metas[0]
        for p, m in zip(self.paths, self.metas):
            for name in ("resolution", "uv_resolution", "patch_size", "geo_patch_size"):
                if getattr(m, name) != getattr(m0, name):
                    raise ShardError(f"{p}: {name} = {getattr(m, name)} differs from {self.paths[0]} ({getattr(m0, name)})")
            if m.n_views < n_ref + n_tgt:
                asked = views_asked or f"train.n_ref = {n_ref} + train.n_tgt = {n_tgt}"
                raise ShardError(f"{p}: samples have {m.n_views} views, fewer than the {n_ref + n_tgt} asked ({asked})")
        self.meta, self.split, self.n_ref, self.n_tgt, self.seed = m0, split, n_ref, n_tgt, seed
        self.random_views = split == "train" if random_views is None else random_views
        self.items = [(s, i) for s, m in enumerate(self.metas) for i in range(m.n_samples)]
        self.offsets = []
        for p, m in zip(self.paths, self.metas):
            with safe_open(str(p), "pt") as f:
                check_layout(f, m, p)
                self.offsets.append({n: checked_offsets(f, n, m.n_samples, p) for n in SPARSE})
        self.epoch = 0
        self._handles: dict[int, object] = {}  # open safetensors handles of this process (opening costs ~50 ms)

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        return {**self.__dict__, "_handles": {}}

    def _handle(self, s: int):
        if s not in self._handles:
            self._handles[s] = safe_open(str(self.paths[s]), "pt")
        return self._handles[s]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def choose_views(self, i: int) -> np.ndarray:
        """(n_ref + n_tgt,) view ids of item i: references first."""
        V = self.metas[self.items[i][0]].n_views
        rng = np.random.default_rng([self.seed, self.epoch if self.random_views else 0, i])
        return rng.permutation(V)[: self.n_ref + self.n_tgt]

    def __getitem__(self, i: int) -> dict:
        return self.item(i, self.choose_views(i))

    def item(self, i: int, views: np.ndarray) -> dict:
        """Item i with the given view ids (the first `n_ref` are the references), e.g. chosen by an evaluator."""
        with interrupts_held():  # a Ctrl-C / SIGTERM inside safetensors' slices would come out as its ValueError
            return self._item(i, views)

    def _item(self, i: int, views: np.ndarray) -> dict:
        s, j = self.items[i]
        views = np.asarray(views, np.int64)
        if views.ndim != 1 or len(set(views.tolist())) != len(views) or views.min() < 0 or views.max() >= self.metas[s].n_views:
            raise ShardError(f"{self.paths[s]}#{j}: view ids {views.tolist()} are not distinct ids in [0, {self.metas[s].n_views})")
        vt = torch.from_numpy(views)
        out = {"views": vt, "sample": f"{self.paths[s].name}#{j}", "n_ref": self.n_ref}
        f = self._handle(s)
        for k in DENSE:
            sl = f.get_slice(k)
            if k in ("images", "masks", "K", "world_to_cam"):  # per-view slices (cheaper than fancy indexing)
                out[k] = torch.stack([sl[j : j + 1, int(v) : int(v) + 1][0, 0] for v in views])
            else:
                out[k] = sl[j : j + 1][0]
        for k in ("K", "world_to_cam", "uv_posmap"):  # written finite (_check_sample); a damaged file may not be
            if not torch.isfinite(out[k]).all():
                raise ShardError(f"{self.paths[s]}#{j}: {k} contains NaN or inf")
        meta = self.metas[s]
        vmap = torch.full((meta.n_views,), -1, dtype=torch.long)
        vmap[vt] = torch.arange(len(views))
        for n in SPARSE:
            o0, o1 = (int(v) for v in self.offsets[s][n][j : j + 2])
            idx = f.get_slice(f"{n}_index")[o0:o1].long()
            w = f.get_slice(f"{n}_weight")[o0:o1]
            La, Lg = meta.app_tokens ** 2, meta.geo_tokens ** 2  # tokens per view / UV map (per side squared)
            nq, nk = (La, Lg) if n == "a2g" else (Lg, La)
            if len(idx) and (idx.min() < 0 or idx[:, 0].max() >= meta.n_views or idx[:, 1].max() >= nq
                             or idx[:, 2].max() >= nk):  # a negative view id would wrap round to another view
                raise ShardError(f"{self.paths[s]}#{j}: {n}_index out of range (views {meta.n_views}, queries {nq}, "
                                 f"keys {nk})")
            if not torch.isfinite(w).all():
                raise ShardError(f"{self.paths[s]}#{j}: {n}_weight contains NaN or inf")
            keep = vmap[idx[:, 0]] >= 0
            idx, w = idx[keep], w[keep]
            idx[:, 0] = vmap[idx[:, 0]]
            out[f"{n}_index"], out[f"{n}_weight"] = idx, w
        out["images"] = out["images"].float() / 127.5 - 1
        for k in ("masks", "uv_mask"):
            out[k] = out[k].float()
        return out


def collate(items: list[dict]) -> dict:
    """Stack dense tensors; concatenate sparse targets with a leading batch column -> (M,4) long."""
    batch = {k: torch.stack([it[k] for it in items]) for k in (*DENSE, "views")}
    for n in SPARSE:
        batch[f"{n}_index"] = torch.cat([torch.cat([torch.full((len(it[f"{n}_index"]), 1), b), it[f"{n}_index"]], 1)
                                         for b, it in enumerate(items)])
        batch[f"{n}_weight"] = torch.cat([it[f"{n}_weight"] for it in items])
    batch["sample"] = [it["sample"] for it in items]
    refs = {it["n_ref"] for it in items}
    if len(refs) != 1:
        raise ValueError(f"collate: items disagree on n_ref {refs}")
    batch["n_ref"] = refs.pop()
    return batch
