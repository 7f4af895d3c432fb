"""What turns a loaded SD 2.x UNet into the multi-view one: pure edits of the module tree.

- `self_attention_names`: the 16 `attn1` modules in down → mid → up order (CAMEO's layer indices; layer 10 =
  `up_blocks.2.attentions.0.transformer_blocks.0.attn1`, the first self-attention of the 640-channel up block;
  `up_blocks.0` is the attention-free UpBlock2D).
- `remove_text_cross_attention`: every `attn2` (and its norm) is deleted, not fed a dummy context. There is no
  text: a constant context would only add a learned per-layer bias through 2×1024×C extra weights per layer,
  and CAMEO/MVGenMaster drop the layer (`no_text_cross_attn: true`). The UNet then runs with
  `encoder_hidden_states=None`.
- `widen_conv_in`: latent (4) + extra channels in; the old kernel is copied, the new input channels' kernels
  are zero, so the output is unchanged whatever the extra channels hold (one frame = the original UNet).
- `add_qk_norm`: LayerNorm over each head's queries and keys (diffusers' `qk_norm="layer_norm"`), optional.
- `latent_stride`: the downsampling of a layer's token grid relative to the latent.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import MultiViewAttnProcessor


def _order(name: str) -> tuple[int, str]:
    return ({"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[name.split(".")[0]], name)


def self_attention_names(unet: nn.Module) -> list[str]:
    """Names of every `attn1` of the UNet, down → mid → up (module order within each part)."""
    names = [n for n, _ in unet.named_modules() if n.endswith(".attn1")]
    parts = {0: [], 1: [], 2: []}
    for n in names:
        parts[_order(n)[0]].append(n)
    return parts[0] + parts[1] + parts[2]


def latent_stride(name: str, n_levels: int = 4) -> int:
    """Token-grid stride (latent pixels) of the attention module `name` of a UNet with `n_levels` resolutions."""
    part, _, rest = name.partition(".")
    if part == "down_blocks":
        return 2 ** int(rest.split(".")[0])
    if part == "mid_block":
        return 2 ** (n_levels - 1)
    if part == "up_blocks":
        return 2 ** (n_levels - 1 - int(rest.split(".")[0]))
    raise ValueError(f"latent_stride: {name!r} is not in down_blocks, mid_block or up_blocks")


def remove_text_cross_attention(unet: nn.Module) -> int:
    """Delete attn2 + norm2 of every transformer block; returns how many were removed."""
    n = 0
    for module in unet.modules():
        if getattr(module, "attn2", None) is not None and hasattr(module, "norm2"):
            module.attn2, module.norm2 = None, None
            n += 1
    return n


def widen_conv_in(unet: nn.Module, extra: int) -> None:
    """conv_in: in_channels → in_channels + extra; old kernel copied, new channels zero."""
    old = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra)


def add_qk_norm(unet: nn.Module, names: list[str], eps: float = 1e-6) -> None:
    """LayerNorm(d_head) on the queries and keys of the named attention modules."""
    for n in names:
        attn = unet.get_submodule(n)
        d = attn.to_q.out_features // attn.heads
        attn.norm_q = nn.LayerNorm(d, eps=eps, device=attn.to_q.weight.device)
        attn.norm_k = nn.LayerNorm(d, eps=eps, device=attn.to_q.weight.device)


def install_processors(unet: nn.Module, names: list[str]) -> dict[str, MultiViewAttnProcessor]:
    """A `MultiViewAttnProcessor` on each named attention module; returns them by name."""
    procs = {}
    for n in names:
        procs[n] = MultiViewAttnProcessor(n)
        unet.get_submodule(n).set_processor(procs[n])
    return procs
