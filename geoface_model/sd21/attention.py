"""Multi-view self-attention for the SD 2.x UNet: a diffusers attention processor for every `attn1`.

The UNet runs the frames of a sample as a batch: hidden states (B·F, L, C), frames of one sample
consecutive, appearance views first and the geometry frame last. `MultiViewAttnProcessor` regroups them
as (B, F·L, C) so that every token attends to the tokens of ALL frames of its sample (3D attention), then
ungroups; with F = 1 it is exactly diffusers' `AttnProcessor2_0` on the original layer (tested). The
frame count comes in through the UNet's `cross_attention_kwargs` (`mv_frames`).

Alignment layer. When the model asks (`request`), the processor also returns, in fp32, only the
appearance↔geometry blocks of that layer's attention logits (never the N×N matrix):

    per head h:  a2g[b,h,v,i,g] = q_h(app token i of view v) · k_h(geo token g) · s     (B, H, Fa, La, Lg)
                 g2a[b,h,v,g,i] = q_h(geo token g) · k_h(app token i of view v) · s     (B, H, Fa, Lg, La)

with s = the layer's scale (1/√d_head), q, k after the optional QK-norm, and a `LogitHead` turns heads
into one logit: "mean" (head average, computed as one full-width matmul, no H× memory) or "mlp" (CAMEO's
`HeadMlp_Softmax`: an MLP over the H per-head logits of each query-key pair, H → ratio·H → 1, GELU; the
softmax that follows is per view because each a2g/g2a block holds the keys of one frame).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..attention import AlignLogits, TokenLayout, explicit_align_logits


class LogitHead(nn.Module):
    """Per-head logits (B, F, Q, K, H) -> one logit (B, F, Q, K): "mean" or CAMEO's "mlp" (depth 1, GELU).

    The MLP runs over `chunk_queries` query rows at a time, each chunk recomputed in the backward pass
    (non-reentrant checkpoint), so its ratio·H-wide hidden layer is never held for all Q·K pairs at once:
    at 512² (layer 10, 4 views, 10 heads) the hidden layer would be 2.5 GiB, the per-head logits are 320 MiB."""

    def __init__(self, heads: int, kind: str = "mean", mlp_ratio: float = 4.0, chunk_queries: int = 256):
        super().__init__()
        if kind not in ("mean", "mlp"):
            raise ValueError(f"LogitHead: kind {kind!r} is not 'mean' or 'mlp'")
        self.kind, self.heads, self.chunk_queries = kind, heads, chunk_queries
        if kind == "mlp":
            hidden = int(heads * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(heads, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):  # fp32 logits under bf16/fp16 autocast (and its recompute)
            return self.mlp(x.float())[..., 0]

    def forward(self, per_head: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return per_head.mean(-1)
        x = per_head.float()
        if not torch.is_grad_enabled():
            return torch.cat([self._mlp(c) for c in x.split(self.chunk_queries, dim=2)], 2)
        return torch.cat([checkpoint(self._mlp, c, use_reentrant=False) for c in x.split(self.chunk_queries, dim=2)], 2)


def per_head_align_logits(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, scale: float,
                          directions: tuple[str, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """q, k (B, H, N, d) -> a2g (B, Fa, La, Lg, H), g2a (B, Fa, Lg, La, H) fp32 (heads last, for the MLP head)."""
    B, H, N, d = q.shape
    if N != layout.n_tokens or layout.geo_len == 0:
        raise ValueError(f"per_head_align_logits: {N} tokens do not match layout {layout} (needs a geometry frame)")
    na, Fa, La = layout.n_app * layout.app_len, layout.n_app, layout.app_len
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = q.float(), k.float()
        a2g = g2a = None
        if "a2g" in directions:
            a2g = torch.einsum("bhfid,bhgd->bfigh", q[:, :, :na].reshape(B, H, Fa, La, d), k[:, :, na:]) * scale
        if "g2a" in directions:
            g2a = torch.einsum("bhgd,bhfid->bfgih", q[:, :, na:], k[:, :, :na].reshape(B, H, Fa, La, d)) * scale
    return a2g, g2a


@dataclass
class AlignRequest:
    layout: TokenLayout
    directions: tuple[str, ...]
    head: LogitHead
    result: AlignLogits | None = None
    taken: bool = False  # the model has read `result`; a recomputation (gradient checkpointing) keeps nothing


class MultiViewAttnProcessor:
    """3D self-attention over the frames of each sample (module docstring); `request` asks for logits."""

    def __init__(self, name: str = ""):
        self.name = name
        self.request: AlignRequest | None = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, mv_frames: int = 1) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None \
                or attn.group_norm is not None or hidden_states.ndim != 3:
            raise ValueError(f"MultiViewAttnProcessor ({self.name}): only plain 3D self-attention is supported")
        BF, L, C = hidden_states.shape
        if BF % mv_frames:
            raise ValueError(f"MultiViewAttnProcessor ({self.name}): batch {BF} is not a multiple of {mv_frames} frames")
        residual = hidden_states
        x = hidden_states.reshape(BF // mv_frames, mv_frames * L, C)  # (B, F·L, C)
        B, N, _ = x.shape
        H = attn.heads
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        d = q.shape[-1] // H
        q, k, v = (t.view(B, N, H, d).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = out.transpose(1, 2).reshape(B, N, H * d).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out)).reshape(BF, L, -1)
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor
        req = self.request
        if req is not None and req.directions:
            if req.layout.n_tokens != N:
                raise ValueError(f"MultiViewAttnProcessor ({self.name}): {N} tokens per sample, layout {req.layout}")
            if req.head.kind == "mean":  # Σ_h q_h·k_h = full-width dot product: no per-head tensor
                flat = lambda t: t.transpose(1, 2).reshape(B, N, H * d)  # noqa: E731
                result = explicit_align_logits(flat(q) * (attn.scale * d**0.5), flat(k), req.layout, H, req.directions)
            else:
                a2g, g2a = per_head_align_logits(q, k, req.layout, attn.scale, req.directions)
                result = AlignLogits(a2g=None if a2g is None else req.head(a2g),
                                     g2a=None if g2a is None else req.head(g2a))
            if not req.taken:
                req.result = result
        return out


def reference_mv_attention(attn, hidden_states: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference of the processor: explicit softmax over the tokens of all frames of a sample.
    hidden_states (B·F, L, C) -> (out (B·F, L, C), per-head logits (B, H, N, N) fp32)."""
    BF, L, C = hidden_states.shape
    B, N, H = BF // frames, frames * L, attn.heads
    x = hidden_states.reshape(B, N, C).double()
    lin = lambda m, t: t @ m.weight.double().T + (m.bias.double() if m.bias is not None else 0)  # noqa: E731
    q, k, v = (lin(m, x).view(B, N, H, -1).transpose(1, 2) for m in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        ln = lambda m, t: F.layer_norm(t, t.shape[-1:], m.weight.double(), m.bias.double(), m.eps)  # noqa: E731
        q, k = ln(attn.norm_q, q), ln(attn.norm_k, k)
    logits = q @ k.transpose(-1, -2) * attn.scale
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1)
    out = lin(attn.to_out[0], out).reshape(BF, L, -1)
    return out.float(), logits.float()
