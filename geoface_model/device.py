"""Where the model runs at inference (evaluation, generation): `resolve_device(name)`.

`auto` is the first CUDA GPU PyTorch sees, else the CPU; `cpu`, `cuda` and `cuda:N` are taken as they are, and a GPU
that is not there is one error line (never a silent fall-back to the CPU, which would be hours slower at the paper's
scale). Training's device is accelerate's (`accelerate launch` / its config), not this setting. The initial noise is
drawn on the CPU whatever the device (`GeoFacePipeline.__call__`), so a seed gives the same noise everywhere; the
results of a CPU and a GPU run still differ in their last bits (other kernels, TF32 convolutions on recent GPUs).
"""
from __future__ import annotations

import torch

from flame_fitting.core.errors import GeofaceError

CHOICES = "auto, cpu, cuda or cuda:N"


class DeviceError(GeofaceError, ValueError):
    """A device name that is not one of CHOICES, or a GPU that PyTorch does not see."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" (or a torch.device) -> torch.device; DeviceError for anything else, or for
    a CUDA device this machine does not have."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {name!r}: choose {CHOICES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"device {name!r}: choose {CHOICES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: PyTorch sees no CUDA GPU on this machine (torch {torch.__version__}); "
                          "use auto or cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    return dev
