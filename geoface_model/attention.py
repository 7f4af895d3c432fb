"""Self-attention over all frames' tokens, with explicit app↔geo logits for the supervised block(s).

Every block uses fused `torch.nn.functional.scaled_dot_product_attention` (never materialises the
N×N matrix). For a block named in `align_layers` the processor additionally returns, in fp32 and
averaged over heads, ONLY these two blocks of the attention logits (CAMEO's recipe):

    a2g[b, v, i, g] = mean_h q_h(app token i of view v) · k_h(geo token g) / √d_head   (B, Fa, La, Lg)
    g2a[b, v, g, i] = mean_h q_h(geo token g) · k_h(app token i of view v) / √d_head   (B, Fa, Lg, La)

Head averaging costs no extra memory: Σ_h q_h·k_h is the dot product of the full-width q and k, so the
blocks are one (La×D)·(D×Lg) matmul per view. Memory: 2·B·Fa·La·Lg·4 bytes, against B·H·N²·4 for the full
matrix with N = Fa·La + Lg (see `presets.estimate_memory`).

Token layout (row-major within each frame): [view 0 | view 1 | … | view Fa-1 | geometry].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    n_app: int  # appearance frames Fa (references first, then targets)
    app_len: int  # tokens per appearance frame La
    geo_len: int  # geometry tokens Lg (0 = no geometry frame)

    @property
    def n_tokens(self) -> int:
        return self.n_app * self.app_len + self.geo_len


@dataclass
class AlignLogits:
    a2g: torch.Tensor | None  # (B, Fa, La, Lg) fp32: app queries of each view × geo keys
    g2a: torch.Tensor | None  # (B, Fa, Lg, La) fp32: geo queries × app keys of each view


def explicit_align_logits(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, heads: int,
                          directions: tuple[str, ...]) -> AlignLogits:
    """q, k (B, N, D) projected queries/keys (heads concatenated) -> head-averaged fp32 logit blocks."""
    B, N, D = q.shape
    if N != layout.n_tokens or layout.geo_len == 0:
        raise ValueError(f"explicit_align_logits: {N} tokens do not match layout {layout} (needs a geometry frame)")
    scale = 1.0 / (heads * (D // heads) ** 0.5)
    na = layout.n_app * layout.app_len
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = q.float(), k.float()
        a2g = g2a = None
        if "a2g" in directions:
            qa = q[:, :na].reshape(B, layout.n_app, layout.app_len, D)
            a2g = torch.einsum("bfid,bgd->bfig", qa, k[:, na:]) * scale
        if "g2a" in directions:
            ka = k[:, :na].reshape(B, layout.n_app, layout.app_len, D)
            g2a = torch.einsum("bgd,bfid->bfgi", q[:, na:], ka) * scale
    return AlignLogits(a2g=a2g, g2a=g2a)


class GeoFaceAttnProcessor:
    """Fused attention for every block; explicit app↔geo logits when `directions` is non-empty."""

    def __call__(self, attn: "Attention", x: torch.Tensor, layout: TokenLayout | None = None,
                 directions: tuple[str, ...] = ()) -> tuple[torch.Tensor, AlignLogits | None]:
        B, N, D = x.shape
        q, k, v = attn.to_qkv(x).chunk(3, dim=-1)  # each (B, N, D)
        H = attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B,N,D) -> (B,H,N,d)
            return t.view(B, N, H, D // H).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        out = attn.to_out(out.transpose(1, 2).reshape(B, N, D))
        align = None
        if directions:
            if layout is None:
                raise ValueError("GeoFaceAttnProcessor: explicit logits need the token layout")
            align = explicit_align_logits(q, k, layout, H, directions)
        return out, align


class Attention(nn.Module):
    """Multi-head self-attention holding the projections; the maths lives in its processor."""

    def __init__(self, dim: int, heads: int, processor: GeoFaceAttnProcessor | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Linear(dim, dim)
        self.processor = processor or GeoFaceAttnProcessor()

    def forward(self, x: torch.Tensor, layout: TokenLayout | None = None,
                directions: tuple[str, ...] = ()) -> tuple[torch.Tensor, AlignLogits | None]:
        return self.processor(self, x, layout, directions)


def reference_attention(x: torch.Tensor, attn: Attention) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: explicit softmax attention -> (out (B,N,D), head-averaged logits (B,N,N) fp32)."""
    B, N, D = x.shape
    H = attn.heads
    q, k, v = (t.view(B, N, H, D // H).transpose(1, 2).float() for t in attn.to_qkv(x).chunk(3, dim=-1))
    logits = q @ k.transpose(-1, -2) / (D // H) ** 0.5  # (B,H,N,N)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)
    return attn.to_out(out), logits.mean(1)
