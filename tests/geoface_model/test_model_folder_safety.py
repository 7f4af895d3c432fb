"""A model folder someone sent (an audit with hostile files): every file of a pipeline folder is checked before
anything it declares is built or allocated, no pickle is ever read, and each bad file is one error naming it.
Before: a FIFO as weights or a config hung the loader, a .bin-only folder was unpickled, int8/bool weights and a
missing tensor loaded silently, NaN weights gave grey images, num_train_timesteps 10^12 looped then asked for 4 TB,
resolution 65536 asked for 12 GB a view, model_index.json could name any class of the process (a UNet config
declaring 640 GB), a scheduler whose prediction_type was not the model's generated noise."""
import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from geoface.cli import main
from geoface_model.model import GeoFaceTransformer, ModelConfigError
from geoface_model.pipeline import GeoFacePipeline, PipelineError

pytestmark = pytest.mark.usefixtures("one_thread")
W = "transformer/diffusion_pytorch_model.safetensors"
MARKER = "pwned"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    tr = GeoFaceTransformer(width=32, depth=2, heads=2, geo_norm_resolution=32)
    root = tmp_path_factory.mktemp("folder")
    GeoFacePipeline.build(tr, resolution=32, uv_resolution=32).save_pretrained(root / "pipe")
    return root / "pipe"


@pytest.fixture
def folder(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "pipe")


def _edit_json(path, **kw):
    d = json.loads(path.read_text())
    d.update(kw)
    path.write_text(json.dumps(d))


def _edit_weights(path, fn):
    sd = load_file(path)
    fn(sd)
    save_file(sd, path)


def _header(path, n):
    b = path.read_bytes()
    path.write_bytes(struct.pack("<Q", n) + b[8:])


def _overlap(path):
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    a, c = [k for k in sorted(hdr) if k != "__metadata__" and hdr[k]["shape"] == [32]][:2]
    hdr[c]["data_offsets"] = hdr[a]["data_offsets"]
    h = json.dumps(hdr).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b[8 + n:])


def _put(key, value):
    return lambda sd: sd.__setitem__(key, value(sd[key]) if callable(value) else value)


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


K = "blocks.0.mlp.0.weight"
WEIGHT_CASES = {
    "header 2^40": (lambda p: _header(p, 1 << 40), "the safetensors header declares 1099511627776 bytes"),
    "header 2^63": (lambda p: _header(p, 1 << 63), "the safetensors header declares 9223372036854775808 bytes"),
    "empty file": (lambda p: p.write_bytes(b""), "0 bytes, not a safetensors file"),
    "cut short": (lambda p: p.write_bytes(p.read_bytes()[:-1000]), "not a readable safetensors file .*not fully covered"),
    "overlapping offsets": (_overlap, "not a readable safetensors file .*invalid offset"),
    "fifo": (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
    "link to /dev/zero": (lambda p: (p.unlink(), p.symlink_to("/dev/zero")), "not a regular file"),
    "folder": (lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
    "int8": (lambda p: _edit_weights(p, _put(K, lambda t: t.to(torch.int8))), f"tensor {K} is I8, model weights are floating"),
    "bool": (lambda p: _edit_weights(p, _put(K, lambda t: t > 0)), f"tensor {K} is BOOL"),
    "float8": (lambda p: _edit_weights(p, _put(K, lambda t: t.to(torch.float8_e4m3fn))), f"tensor {K} is F8_E4M3"),
    "missing tensor": (lambda p: _edit_weights(p, lambda sd: sd.pop(K)), rf"the weights do not match config.json: 1 missing \['{K}'\], 0 unexpected"),
    "unexpected tensor": (lambda p: _edit_weights(p, _put("junk", torch.zeros(3))), r"the weights do not match config.json: 0 missing \[\], 1 unexpected \['junk'\]"),
    "shape": (lambda p: _edit_weights(p, _put(K, torch.zeros(10, 10))), rf"tensor {K} has shape \[10, 10\], config.json gives \[128, 32\]"),
    "NaN": (lambda p: _edit_weights(p, _put(K, _nan)), f"tensor {K} holds NaN or Inf"),
    "Inf": (lambda p: _edit_weights(p, _put("app_final.linear.bias", torch.full((192,), float("inf")))),
            "tensor app_final.linear.bias holds NaN or Inf"),
}


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_a_bad_weights_file_is_refused_naming_it(folder, case):
    edit, match = WEIGHT_CASES[case]
    edit(folder / W)
    with pytest.raises(ModelConfigError, match=f"^{folder / W}: {match}"):
        GeoFacePipeline.from_pretrained(folder)
    with pytest.raises(ModelConfigError, match=f"^{folder / W}: {match}"):  # the transformer's own loader too
        GeoFaceTransformer.from_pretrained(folder / "transformer")


@pytest.mark.parametrize("name", ["diffusion_pytorch_model.bin", "model.pt", "model.ckpt", "model.pkl"])
@pytest.mark.parametrize("evil", [False, True])
def test_pickled_weights_are_never_loaded(folder, tmp_path, name, evil):
    sd = load_file(folder / W)
    (folder / W).unlink()
    if evil:
        (folder / "transformer" / name).write_bytes(pickle.dumps(_Evil(tmp_path / MARKER)))
    else:
        torch.save(sd, folder / "transformer" / name)  # plain tensors: diffusers loaded these with torch.load
    with pytest.raises(ModelConfigError, match=f"no diffusion_pytorch_model.safetensors; {name} are pickles"):
        GeoFacePipeline.from_pretrained(folder)
    assert not (tmp_path / MARKER).exists()


def _custom_code(folder, marker):
    _edit_json(folder / "model_index.json", _class_name=["evil", "Evil"])
    (folder / "evil.py").write_text(f"import os\nos.system('touch {marker}')\n")


INDEX_CASES = {
    "a function of the process": (lambda f, m: _edit_json(f / "model_index.json", transformer=["os", "system"]),
                                  r"transformer is \['os', 'system'\]; a GeoFace pipeline's is one of"),
    "a UNet declaring 640 GB": (lambda f, m: (_edit_json(f / "model_index.json", transformer=["diffusers", "UNet2DModel"]),
                                              _edit_json(f / "transformer/config.json", block_out_channels=[200000] * 4)),
                                r"transformer is \['diffusers', 'UNet2DModel'\]"),
    "another sampler": (lambda f, m: _edit_json(f / "model_index.json", scheduler=["diffusers", "LMSDiscreteScheduler"]),
                        "scheduler is"),
    "custom code": (_custom_code, r"_class_name is \['evil', 'Evil'\], expected 'GeoFacePipeline'"),
    "unknown entry": (lambda f, m: _edit_json(f / "model_index.json", text_encoder=["transformers", "CLIPTextModel"]),
                      "unknown entry 'text_encoder'"),
    "resolution 65536": (lambda f, m: _edit_json(f / "model_index.json", resolution=65536), "resolution 65536 is not an integer in 1..4096"),
    "resolution 0": (lambda f, m: _edit_json(f / "model_index.json", uv_resolution=0), "uv_resolution 0 is not an integer"),
    "nested JSON": (lambda f, m: (f / "model_index.json").write_text("[" * 100000 + "]" * 100000), r"not valid JSON \(nested too deeply\)"),
    "not an object": (lambda f, m: (f / "model_index.json").write_text("[1, 2]"), "expected a JSON object, got list"),
    "fifo": (lambda f, m: ((f / "model_index.json").unlink(), os.mkfifo(f / "model_index.json")), "not a regular file"),
}


@pytest.mark.parametrize("case", INDEX_CASES)
def test_a_bad_model_index_is_refused_before_anything_is_built(folder, tmp_path, case):
    edit, match = INDEX_CASES[case]
    edit(folder, tmp_path / MARKER)
    with pytest.raises(PipelineError, match=f"^{folder / 'model_index.json'}: {match}"):
        GeoFacePipeline.from_pretrained(folder)
    assert not (tmp_path / MARKER).exists()


SCHED_CASES = {
    "10^12 timesteps": ({"num_train_timesteps": 10**12}, "num_train_timesteps 1000000000000 is not an integer in 2..100000"),
    "0 timesteps": ({"num_train_timesteps": 0}, "num_train_timesteps 0 is not"),
    "float timesteps": ({"num_train_timesteps": 1000.5}, "num_train_timesteps 1000.5 is not"),
    "betas of another length": ({"trained_betas": [0.01] * 10}, r"trained_betas must be num_train_timesteps \(1000\) numbers"),
    "NaN betas": ({"trained_betas": [float("nan")] * 1000}, "trained_betas must be"),
    "betas above 1": ({"trained_betas": [2.0] * 1000}, "trained_betas must be"),
    "unknown schedule": ({"beta_schedule": "bogus"}, "beta_schedule 'bogus' is not one of"),
    "another prediction type": ({"prediction_type": "v_prediction"},
                                "prediction_type is 'v_prediction', the GeoFace ddim sampler of this transformer uses 'epsilon'"),
    "other spacing": ({"timestep_spacing": "leading"}, "timestep_spacing is 'leading'"),
    "NaN clip range": ({"clip_sample_range": float("nan")}, "clip_sample_range is nan"),
}


@pytest.mark.parametrize("case", SCHED_CASES)
def test_a_bad_scheduler_config_is_refused_before_the_betas_are_built(folder, case):
    edit, match = SCHED_CASES[case]
    _edit_json(folder / "scheduler/scheduler_config.json", **edit)
    with pytest.raises(PipelineError, match=f"^{folder / 'scheduler/scheduler_config.json'}: {match}"):
        GeoFacePipeline.from_pretrained(folder)


@pytest.mark.parametrize("key, value", [("geo_norm_scale", float("nan")), ("geo_norm_scale", -1.0),
                                        ("geo_norm_scale", float("inf")), ("mlp_ratio", 1e6), ("sigma_data", 0.0),
                                        ("camera_scale", float("nan")), ("prediction_type", "bogus")])
def test_a_transformer_config_with_values_no_model_has_is_refused(folder, key, value):
    _edit_json(folder / "transformer/config.json", **{key: value})
    with pytest.raises(ModelConfigError, match=f"GeoFaceTransformer config: {key} {value!r}"):
        GeoFacePipeline.from_pretrained(folder)


@pytest.mark.parametrize("key, value, message", [
    ("heads", 5, r"width \d+ is not divisible by heads 5 \(config.json of the model folder\)$"),
    ("align_layers", list(range(10 ** 6)), r"align_layers \[0, 1, 2, .{60,70}\.\.\. is not a list of at most \d+ "),
    ("align_layers", [True], r"align_layers \[True\] is not"), ("align_layers", 3, r"align_layers 3 is not")])
def test_heads_and_align_layers_are_named_in_one_short_line(folder, key, value, message):
    """`heads` that does not divide the width was a ValueError not naming the file; a million-entry align_layers was
    printed whole."""
    _edit_json(folder / "transformer/config.json", **{key: value})
    with pytest.raises(ModelConfigError, match=message) as e:
        GeoFacePipeline.from_pretrained(folder)
    assert len(str(e.value)) < 300


def test_head_description_must_be_a_json_object(folder):
    (folder / "head/head_model.json").write_text("[1]")
    with pytest.raises(PipelineError, match="head_model.json: expected a JSON object"):
        GeoFacePipeline.from_pretrained(folder)


def test_a_checked_folder_still_loads_also_through_a_link_to_a_blob(folder, saved, tmp_path):
    """huggingface_hub's cache links every file of a snapshot to ../../blobs/: a link to a regular file is read."""
    blob = tmp_path / "blobs" / "w"
    blob.parent.mkdir()
    shutil.move(folder / W, blob)
    (folder / W).symlink_to(blob)
    a, b = GeoFacePipeline.from_pretrained(saved), GeoFacePipeline.from_pretrained(folder)
    for k, v in a.transformer.state_dict().items():
        assert torch.equal(v, b.transformer.state_dict()[k])
    assert np.isfinite(b.transformer.geo_norm_mean.numpy()).all()


def test_the_cli_refuses_in_one_line_with_exit_code_2(folder, tmp_path, capsys):
    import matplotlib.cbook as cbook
    from standin_cache import standin_copy

    _edit_weights(folder / W, _put(K, _nan))
    standin_copy(tmp_path / "head", seed=0, n_shape=10, n_expr=10)
    rc = main(["generate", cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "--model", str(folder),
               "--head-model", str(tmp_path / "head"), "--out", str(tmp_path / "out"), "--steps", "1", "--views", "1",
               "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's line
    assert rc == 2 and f"{folder / W}: tensor {K} holds NaN or Inf" in err, err
    assert not (tmp_path / "out").exists()
