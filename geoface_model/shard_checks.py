"""The checks a shard from elsewhere passes when the dataset opens it (data.py `GeoFaceDataset`): every tensor's dtype
and shape against its header's sizes, read from the safetensors header alone, and the sparse targets' offsets."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flame_fitting.core.errors import GeofaceError

if TYPE_CHECKING:
    from .data import ShardMeta

SPARSE = ("a2g", "g2a")


class ShardError(GeofaceError, ValueError):
    """A shard that is malformed or does not match the model's token grids."""


def check_layout(f, meta: ShardMeta, path: Path) -> None:
    """ShardError naming the shard unless each tensor has the dtype `write_shard` gives it and the shape its header's
    sizes imply (read from the safetensors header, no data): a shard from elsewhere whose tensors disagree with its
    header failed training with an IndexError traceback, or fed (N,V,3,8,8) images to a 32² model unnoticed."""
    N, V, S, R = meta.n_samples, meta.n_views, meta.resolution, meta.uv_resolution
    have = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    want = {"images": ("U8", (N, V, 3, S, S)), "masks": ("U8", (N, V, 1, S, S)), "K": ("F32", (N, V, 3, 3)),
            "world_to_cam": ("F32", (N, V, 4, 4)), "uv_posmap": ("F32", (N, 3, R, R)), "uv_mask": ("U8", (N, 1, R, R))}
    for n in SPARSE:
        rows = (have.get(f"{n}_index", ("", ()))[1] or (0,))[0]  # M: the weights must match the index rows
        want |= {f"{n}_index": ("I32", (rows, 3)), f"{n}_weight": ("F32", (rows,)), f"{n}_offsets": ("I64", (N + 1,))}
    for k, (dtype, shape) in want.items():
        if have.get(k) != (dtype, shape):
            got = f"is {have[k][0]} {list(have[k][1])}" if k in have else "is missing"
            raise ShardError(f"{path}: tensor {k} {got}, its header (n_samples {N}, n_views {V}, resolution {S}, "
                             f"uv_resolution {R}) gives {dtype} {list(shape)}")


def checked_offsets(f, name: str, n_samples: int, path: Path) -> torch.Tensor:
    """The `<name>_offsets` of an open shard, refused unless they are (n_samples + 1,) from 0, non-decreasing, ending
    at the number of `<name>_index` rows (a damaged or hand-made shard: ShardError naming it)."""
    try:
        off = f.get_tensor(f"{name}_offsets")
        rows = f.get_slice(f"{name}_index").get_shape()[0]
    except Exception as e:  # safetensors raises several types for a missing or unreadable tensor
        raise ShardError(f"{path}: cannot read {name}_offsets / {name}_index ({e})") from None
    if (off.ndim != 1 or len(off) != n_samples + 1 or off.dtype.is_floating_point or int(off[0]) != 0
            or bool((off[1:] < off[:-1]).any()) or int(off[-1]) != rows):
        raise ShardError(f"{path}: {name}_offsets must be {n_samples + 1} non-decreasing offsets from 0 to the "
                         f"{rows} rows of {name}_index")
    return off
