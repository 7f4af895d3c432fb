"""Losses of GeoFace: the per-frame diffusion loss and the geometry-guided attention alignment loss.

Alignment loss (CAMEO / GeoFace). For a supervised query token q with sparse soft targets
{(k_j, w_j)}, Σ_j w_j = 1, and head-averaged fp32 logits ℓ_q· over its key set (all geometry tokens
for a2g; the app tokens of one view for g2a):

    CE(q) = − Σ_j w_j · log softmax(ℓ_q·)[k_j] = − Σ_j w_j · (ℓ_q,k_j − logsumexp_k ℓ_q,k)

summed over all target rows and divided by the number of distinct supervised queries (so it is the
mean cross-entropy per supervised query token). Only log-probs at the target indices are gathered; the
(B,F,Q,K) log-softmax is never materialised (logsumexp is (B,F,Q)). Layers and directions are averaged.

Sparse targets (after `data.collate`): index (M,4) long [batch, view, query token, key token] and
weight (M,) float, for a2g [b, view, app_token, geo_token] and for g2a [b, view, geo_token, app_token].
"""
from __future__ import annotations

import torch

from .attention import AlignLogits


def diffusion_loss(pred_app: torch.Tensor, target_app: torch.Tensor, n_ref: int, pred_geo: torch.Tensor | None = None,
                   target_geo: torch.Tensor | None = None, geo_weight: float = 1.0) -> torch.Tensor:
    """Mean squared error per generated frame, averaged over frames (geometry frame weighted by geo_weight).

    pred_app/target_app (B,Fa,C,h,w) — the first n_ref (clean reference) frames are not supervised;
    pred_geo/target_geo (B,C,hg,wg) or None.
    """
    per_frame = (pred_app[:, n_ref:].float() - target_app[:, n_ref:].float()).square().mean(dim=(2, 3, 4))  # (B,Ft)
    total, count = per_frame.sum(1), float(per_frame.shape[1])
    if pred_geo is not None and geo_weight > 0:
        total = total + geo_weight * (pred_geo.float() - target_geo.float()).square().mean(dim=(1, 2, 3))
        count += geo_weight
    return (total / count).mean()


def _check_index(logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, what: str) -> None:
    if index.ndim != 2 or index.shape[1] != 4 or weight.shape != (index.shape[0],):
        raise ValueError(f"{what}: index must be (M,4) and weight (M,), got {tuple(index.shape)}, {tuple(weight.shape)}")
    if len(index):
        hi = index.max(0).values
        if (index.min() < 0) or any(int(hi[i]) >= logits.shape[i] for i in range(4)):
            raise ValueError(f"{what}: target index out of range for logits {tuple(logits.shape)} (max {hi.tolist()})")


def _query_ids(logits: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat query id of each row and the inverse map to distinct queries."""
    B, F, Q, _ = logits.shape
    flat = (index[:, 0] * F + index[:, 1]) * Q + index[:, 2]
    return torch.unique(flat, return_inverse=True)


def align_cross_entropy(logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, what: str = "align") -> torch.Tensor:
    """Mean soft-target cross-entropy per supervised query. logits (B,F,Q,K) fp32; index (M,4); weight (M,)."""
    _check_index(logits, index, weight, what)
    if len(index) == 0:
        return logits.sum() * 0.0
    logits = logits.float()
    b, f, q, k = index.unbind(1)
    lse = logits.logsumexp(-1)  # (B,F,Q)
    logp = logits[b, f, q, k] - lse[b, f, q]
    n_queries = _query_ids(logits, index)[0].numel()
    return -(weight.float() * logp).sum() / n_queries


def alignment_loss(align: dict[int, AlignLogits], targets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Average of `align_cross_entropy` over supervised layers and the directions present in `targets`
    ({"a2g": (index, weight), "g2a": (index, weight)})."""
    terms = []
    for layer, al in sorted(align.items()):
        for name, (index, weight) in targets.items():
            logits = getattr(al, name)
            if logits is None:
                raise ValueError(f"alignment_loss: layer {layer} has no {name} logits (direction not computed)")
            terms.append(align_cross_entropy(logits, index, weight, f"{name} targets (layer {layer})"))
    if not terms:
        raise ValueError("alignment_loss: nothing to supervise (no layers or no directions)")
    return torch.stack(terms).mean()


@torch.no_grad()
def attention_mass(logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> float:
    """Mean over supervised queries of the softmax probability on their target keys (a number in [0, 1];
    chance level = (targets per query) / K). logits (B,F,Q,K); index (M,4); weight (M,) (only its support is used)."""
    _check_index(logits, index, weight, "attention_mass")
    if len(index) == 0:
        raise ValueError("attention_mass: no targets")
    logits = logits.float()
    b, f, q, k = index.unbind(1)
    p = (logits[b, f, q, k] - logits.logsumexp(-1)[b, f, q]).exp()
    uniq, inv = _query_ids(logits, index)
    per_query = torch.zeros(uniq.numel(), dtype=p.dtype, device=p.device).index_add_(0, inv, p)
    return float(per_query.mean())
