"""Alignment loss on hand-made attention and against a dense reference; attention mass; diffusion loss."""
import math

import pytest
import torch

from geoface_model.attention import AlignLogits
from geoface_model.losses import align_cross_entropy, alignment_loss, attention_mass, diffusion_loss


def _sparse_targets(B, F, Q, K, seed=0, per_query=3, frac=0.6):
    """Random soft targets: (M,4) index, (M,) weight, and the dense (B,F,Q,K) target matrix."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(B, F, Q, K)
    rows, ws = [], []
    for b in range(B):
        for f in range(F):
            for q in range(Q):
                if torch.rand(1, generator=g) > frac:
                    continue
                ks = torch.randperm(K, generator=g)[:per_query]
                w = torch.rand(per_query, generator=g) + 0.1
                w = w / w.sum()
                dense[b, f, q, ks] = w
                rows += [[b, f, q, int(k)] for k in ks]
                ws.append(w)
    return torch.tensor(rows), torch.cat(ws), dense


def _dense_reference(logits, dense):
    supervised = dense.sum(-1) > 0
    ce = -(dense * logits.log_softmax(-1)).sum(-1)
    return ce[supervised].mean()


def test_target_at_the_maximum_gives_small_loss_uniform_gives_log_n():
    B, F, Q, K = 2, 3, 5, 7
    idx = torch.tensor([[b, f, q, (q * 3 + f) % K] for b in range(B) for f in range(F) for q in range(Q)])
    w = torch.ones(len(idx))
    logits = torch.zeros(B, F, Q, K)
    logits[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] = 20.0
    assert align_cross_entropy(logits, idx, w) < 1e-6
    assert attention_mass(logits, idx, w) > 0.9999
    flat = torch.zeros(B, F, Q, K)
    assert align_cross_entropy(flat, idx, w).item() == pytest.approx(math.log(K), rel=1e-6)
    assert attention_mass(flat, idx, w) == pytest.approx(1 / K, rel=1e-6)


def test_matches_dense_reference_and_gradient():
    B, F, Q, K = 2, 3, 6, 9
    idx, w, dense = _sparse_targets(B, F, Q, K)
    logits = torch.randn(B, F, Q, K, requires_grad=True)
    loss = align_cross_entropy(logits, idx, w)
    ref = _dense_reference(logits, dense)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    (g,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g, g_ref, atol=1e-7, rtol=1e-5)
    # soft-target mass: sum of softmax probabilities on the target set of each query
    p = logits.detach().softmax(-1)
    sup = dense.sum(-1) > 0
    torch.testing.assert_close(torch.tensor(attention_mass(logits.detach(), idx, w)), (p * (dense > 0)).sum(-1)[sup].mean())


def test_alignment_loss_averages_layers_and_directions():
    B, F, La, Lg = 1, 2, 4, 5
    i1, w1, d1 = _sparse_targets(B, F, La, Lg, seed=1)
    i2, w2, d2 = _sparse_targets(B, F, Lg, La, seed=2)
    al = {3: AlignLogits(torch.randn(B, F, La, Lg), torch.randn(B, F, Lg, La)),
          5: AlignLogits(torch.randn(B, F, La, Lg), torch.randn(B, F, Lg, La))}
    got = alignment_loss(al, {"a2g": (i1, w1), "g2a": (i2, w2)})
    want = sum(_dense_reference(a.a2g, d1) + _dense_reference(a.g2a, d2) for a in al.values()) / 4
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="no g2a logits"):
        alignment_loss({3: AlignLogits(al[3].a2g, None)}, {"g2a": (i2, w2)})


def test_empty_targets_and_bad_index():
    logits = torch.randn(1, 2, 3, 4, requires_grad=True)
    loss = align_cross_entropy(logits, torch.zeros(0, 4, dtype=torch.long), torch.zeros(0))
    assert loss.item() == 0 and loss.requires_grad
    with pytest.raises(ValueError, match="out of range"):
        align_cross_entropy(logits, torch.tensor([[0, 2, 0, 0]]), torch.ones(1))


def test_diffusion_loss_ignores_references_and_weights_geometry():
    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 3, 8, 8, generator=g)
    pg, tg = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    a = diffusion_loss(pred, tgt, 1, pg, tg, geo_weight=2.0)
    pred2 = pred.clone()
    pred2[:, 0] += 5  # reference frame prediction is not supervised
    assert diffusion_loss(pred2, tgt, 1, pg, tg, geo_weight=2.0) == a
    per_frame = (pred[:, 1:] - tgt[:, 1:]).square().mean((2, 3, 4)).sum(1)
    geo = (pg - tg).square().mean((1, 2, 3))
    torch.testing.assert_close(a, ((per_frame + 2 * geo) / 5).mean())
    torch.testing.assert_close(diffusion_loss(pred, tgt, 1, pg, tg, geo_weight=0.0), (per_frame / 3).mean())
