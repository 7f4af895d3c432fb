"""Where the model runs at inference: `resolve_device` (auto / cpu / cuda[:N]; a GPU that is not there is an
error, never a silent CPU run), and the sd21 MLP logit head stays fp32 under bf16 autocast (its checkpointed
recompute included), as the alignment loss's logits must."""
import pytest
import torch

from geoface_model.device import DeviceError, resolve_device
from geoface_model.sd21.attention import LogitHead


def test_auto_is_a_gpu_when_there_is_one_else_the_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", "", "mps:0"])
def test_a_name_that_is_no_device_is_refused(name):
    with pytest.raises(DeviceError, match="choose auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_a_gpu_that_is_not_there_is_refused():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError, match=f"device 'cuda:{n}'"):
        resolve_device(f"cuda:{n}")


@pytest.mark.parametrize("grad", [True, False])
def test_the_mlp_logit_head_is_fp32_under_bf16_autocast(grad):
    torch.manual_seed(0)
    head = LogitHead(heads=4, kind="mlp", chunk_queries=3)
    per_head = torch.randn(1, 2, 7, 5, 4, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        ref = head(per_head)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(per_head)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    if grad:
        g_ref, = torch.autograd.grad(ref.square().sum(), per_head)
        g, = torch.autograd.grad(out.square().sum(), per_head)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
