"""Reading a model folder someone else sent (docs/model.md "Model folders from others"): its JSON configs and its
safetensors weights are checked before anything the files declare is built or allocated, and nothing is unpickled.

    read_config_json(path, Error)          # a regular file of at most MAX_CONFIG_BYTES holding one JSON object
    load_model_folder(cls, load, path, Error, **kw)   # a backbone's `from_pretrained` (model.py, sd21/model.py)

`load_model_folder` builds the model on the meta device from config.json (the constructor's own range checks, no
memory), reads the header of diffusion_pytorch_model.safetensors with safetensors' own parser (header length,
JSON, offsets inside the file and not overlapping), refuses tensors that are not floating point or whose names or
shapes differ from the model's, then lets diffusers load with `use_safetensors=True` (a folder holding only
.bin / .pt / .ckpt pickles is refused, never unpickled) and refuses weights that hold NaN or Inf.
"""
from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from flame_fitting.core.json_files import read_json

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
MAX_CONFIG_BYTES = 16 << 20   # 16 MiB: a config is ~1 KB, a scheduler's trained_betas of 100000 timesteps ~2.5 MB
MAX_HEADER_BYTES = 16 << 20   # a safetensors header: ~100 bytes a tensor (safetensors itself allows 100 MB)
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def _regular_file(path: Path, error: type[Exception], what: str) -> int:
    """The size of `path` (symlinks followed); `error` when it is missing or not a regular file (a FIFO would block
    the reader forever, /dev/zero never ends)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: {what} is missing ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file (a FIFO, device or folder where the {what} should be)")
    return st.st_size


def read_config_json(path: Path | str, error: type[Exception], what: str = "config file") -> dict:
    """The JSON object in `path` (`json_files.read_json` with a model config's size limit, MAX_CONFIG_BYTES): `error`
    naming the file when it is missing, not a regular file, too large, not JSON or not an object."""
    data = read_json(path, error, MAX_CONFIG_BYTES, f"model's {what}")
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_safetensors(path: Path, expected: dict[str, tuple[int, ...]], error: type[Exception]) -> None:
    """`error` naming the file unless it is a regular safetensors file whose tensors are floating point and are
    exactly `expected` (name -> shape). Only the header is read; safetensors validates the offsets."""
    size = _regular_file(path, error, "weights file")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise error(f"{path}: {size} bytes, not a safetensors file (empty or cut short)")
    n = struct.unpack("<Q", head)[0]
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise error(f"{path}: the safetensors header declares {n} bytes ({size} in the file, at most "
                    f"{MAX_HEADER_BYTES} read); a damaged or hostile file")
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path}: not a readable safetensors file ({e})") from None
    bad = sorted(k for k, (dt, _) in found.items() if dt not in FLOAT_DTYPES)
    if bad:
        raise error(f"{path}: tensor {bad[0]} is {found[bad[0]][0]}, model weights are floating point "
                    f"({', '.join(sorted(FLOAT_DTYPES))}){f'; {len(bad)} such tensors' if len(bad) > 1 else ''}")
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise error(f"{path}: the weights do not match config.json: {len(missing)} missing {missing[:3]}, "
                    f"{len(unexpected)} unexpected {unexpected[:3]} (weights of another model?)")
    shape = next((k for k in sorted(found) if found[k][1] != tuple(expected[k])), None)
    if shape is not None:
        raise error(f"{path}: tensor {shape} has shape {list(found[shape][1])}, config.json gives "
                    f"{list(expected[shape])}")


def check_finite(model: torch.nn.Module, path: Path, error: type[Exception]) -> None:
    """`error` naming the weights file and the first tensor holding NaN or Inf (a diverged run or a damaged file
    would otherwise generate NaN images, saved as uniform grey)."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise error(f"{path}: tensor {name} holds NaN or Inf values (a diverged training run or a damaged "
                        "file); nothing is generated from it")


def load_model_folder(cls, load, path, error: type[Exception], *args, **kwargs):
    """`load(path, *args, **kwargs)` (diffusers' ModelMixin.from_pretrained of `cls`) after the checks of the module
    docstring; local files and safetensors only."""
    folder = Path(path) / (kwargs.get("subfolder") or "")
    if kwargs.get("variant"):
        raise error(f"{folder}: weight variants are not used by GeoFace models (variant={kwargs['variant']!r})")
    config = read_config_json(folder / "config.json", error)
    if config.get("_class_name") != cls.__name__:
        raise error(f"{folder / 'config.json'}: _class_name is {config.get('_class_name')!r}, expected {cls.__name__!r}")
    weights = folder / WEIGHTS_NAME
    if not os.path.lexists(weights):
        pickles = sorted(p.name for pat in PICKLES for p in folder.glob(pat))
        raise error(f"{folder}: no {WEIGHTS_NAME}" + (f"; {', '.join(pickles[:3])} are pickles, which can run code "
                    "and are never loaded (convert them where you trust them: safetensors.torch.save_file)"
                    if pickles else ""))
    with torch.device("meta"):  # the constructor's range checks; the shapes, nothing allocated
        meta = cls.from_config(config)
    check_safetensors(weights, {k: tuple(v.shape) for k, v in meta.state_dict().items()}, error)
    kwargs.update(local_files_only=True, use_safetensors=True)
    model = load(str(path), *args, **kwargs)
    check_finite(model, weights, error)
    return model
