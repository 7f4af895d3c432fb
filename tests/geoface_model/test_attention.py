"""Fused attention vs an explicit reference; the explicit app↔geo logit blocks vs the full matrix."""
import pytest
import torch

from geoface_model.attention import Attention, TokenLayout, explicit_align_logits, reference_attention


@pytest.fixture
def setup():
    torch.manual_seed(0)
    layout = TokenLayout(n_app=3, app_len=6, geo_len=5)
    attn = Attention(dim=24, heads=3)
    x = torch.randn(2, layout.n_tokens, 24)
    return layout, attn, x


def test_fused_attention_equals_reference(setup):
    layout, attn, x = setup
    out, align = attn(x, layout)
    ref, _ = reference_attention(x, attn)
    assert align is None
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_explicit_blocks_equal_blocks_of_full_matrix(setup):
    layout, attn, x = setup
    out, align = attn(x, layout, ("a2g", "g2a"))
    _, full = reference_attention(x, attn)  # (B,N,N) head-averaged logits
    na, La = layout.n_app * layout.app_len, layout.app_len
    assert align.a2g.shape == (2, 3, 6, 5) and align.g2a.shape == (2, 3, 5, 6)
    for v in range(layout.n_app):
        rows = slice(v * La, (v + 1) * La)
        torch.testing.assert_close(align.a2g[:, v], full[:, rows, na:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(align.g2a[:, v], full[:, na:, rows], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, reference_attention(x, attn)[0], atol=1e-5, rtol=1e-5)


def test_only_requested_direction_and_fp32_under_autocast(setup):
    layout, attn, x = setup
    _, align = attn(x, layout, ("g2a",))
    assert align.a2g is None and align.g2a is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, align = attn(x, layout, ("a2g",))
    assert align.a2g.dtype == torch.float32


def test_layout_mismatch_is_refused(setup):
    layout, attn, x = setup
    q = torch.randn(2, layout.n_tokens + 1, 24)
    with pytest.raises(ValueError, match="do not match layout"):
        explicit_align_logits(q, q, layout, 3, ("a2g",))
    with pytest.raises(ValueError, match="needs a geometry frame"):
        explicit_align_logits(q[:, :18], q[:, :18], TokenLayout(3, 6, 0), 3, ("a2g",))
