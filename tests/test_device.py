"""gpu, cpu, f16, bf16, f32, f64 on tensors, models and trees, keeping ties."""

import dataclasses

import pytest
import torch
from torch import nn

import fluxtrain as ft


def tied_model():
    a, b = ft.Dense(3, 3), ft.Dense(3, 3)
    b.weight = a.weight  # tied
    return ft.Chain(a, ft.BatchNorm(3), b)


@pytest.mark.parametrize(
    "fn,dtype",
    [(ft.f16, torch.float16), (ft.bf16, torch.bfloat16), (ft.f32, torch.float32),
     (ft.f64, torch.float64)],
)  # fmt: skip
def test_precision_helpers_convert_floating_tensors_of_a_model_and_keep_ties(fn, dtype):
    m = ft.f64(tied_model()) if dtype == torch.float32 else tied_model()
    new = fn(m)
    assert type(new) is ft.Chain
    assert new[0].weight is new[2].weight
    assert isinstance(new[0].weight, nn.Parameter) and new[0].weight.requires_grad
    assert len(ft.trainables(new)) == len(ft.trainables(m)) == 5
    for t in ft.trainables(new):
        assert t.dtype == dtype
    assert new[1].running_mean.dtype == dtype and new[1].running_var.dtype == dtype


def test_precision_helpers_leave_the_original_model_and_integer_tensors_alone():
    m = tied_model()
    tree = {"model": m, "labels": torch.arange(4), "x": torch.ones(2), "name": "run"}
    new = ft.f64(tree)
    assert m[0].weight.dtype == torch.float32
    assert new["labels"].dtype == torch.int64 and new["name"] == "run"
    assert new["x"].dtype == torch.float64
    assert ft.f16(torch.arange(3)).dtype == torch.int64


def test_converted_model_trains_in_its_precision():
    m = ft.f64(ft.Chain(ft.Dense(3, 4, ft.relu), ft.Dense(4, 1)))
    x = torch.randn(5, 3, dtype=torch.float64)
    st = ft.setup(ft.Descent(0.1), m)
    (g,) = ft.gradient(lambda mod: mod(x).pow(2).mean(), m)
    assert g.layers[0].weight.dtype == torch.float64
    before = m[0].weight.detach().clone()
    ft.update_(st, m, g)
    assert not torch.equal(before, m[0].weight)


def test_helpers_work_on_lists_tuples_and_dataclasses():
    @dataclasses.dataclass
    class Pair:
        w: torch.Tensor
        n: int

    tree = [torch.ones(2), (torch.zeros(1), Pair(torch.ones(3), 3))]
    new = ft.bf16(tree)
    assert new[0].dtype == torch.bfloat16
    assert new[1][0].dtype == torch.bfloat16
    assert isinstance(new[1][1], Pair) and new[1][1].w.dtype == torch.bfloat16
    assert new[1][1].n == 3


def test_tensor_reached_twice_in_a_tree_stays_one_tensor():
    w = torch.ones(2)
    new = ft.f64({"a": w, "b": [w]})
    assert new["a"] is new["b"][0]


def test_cpu_keeps_ties_and_values():
    m = tied_model()
    new = ft.cpu(m)
    assert new[0].weight is new[2].weight
    assert new[0].weight.device.type == "cpu"
    torch.testing.assert_close(new[0].weight, m[0].weight)


@pytest.mark.filterwarnings("ignore:ft.gpu. no GPU")
def test_gpu_is_a_no_op_without_a_gpu_and_moves_everything_with_one():
    m = tied_model()
    x = torch.ones(2)
    has_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    if not has_gpu:
        assert ft.gpu(m) is m and ft.gpu(x) is x  # as Flux: same script runs everywhere
    else:
        new = ft.gpu(m)
        assert new[0].weight.device.type != "cpu" and new[0].weight is new[2].weight
        back = ft.cpu(new)
        assert back[0].weight.device.type == "cpu" and back[0].weight is back[2].weight


def test_gpu_without_a_gpu_warns_once_and_returns_the_cpu_model(monkeypatch, recwarn):
    import fluxtrain.device as device

    monkeypatch.setattr(device, "_gpu_device", lambda: None)  # a CPU-only machine
    monkeypatch.setattr(device, "_warned_no_gpu", False)
    m = tied_model()
    with pytest.warns(UserWarning, match=r"ft.gpu: no GPU is available .* stay on the CPU"):
        assert ft.gpu(m) is m
    recwarn.clear()
    x = torch.ones(2)
    assert ft.gpu(x) is x and ft.gpu(m) is m
    assert not [w for w in recwarn if "no GPU" in str(w.message)], "warned more than once"


def test_todevice_cuda_without_cuda_is_a_clear_error(monkeypatch):
    from fluxtrain.callbacks import ToDevice

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"ToDevice\('cuda'\): no CUDA device is available"):
        ToDevice("cuda")
    with pytest.raises(ValueError, match=r"ToDevice\('cuda:1'\): no CUDA device"):
        ToDevice(torch.device("cuda:1"))
    assert ToDevice().device == torch.device("cpu")  # None: CUDA when present, else the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"no CUDA device 3; this machine has 1 \(cuda:0 to"):
        ToDevice("cuda:3")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="ToDevice\\('mps'\\): Apple's MPS device is not"):
        ToDevice("mps")
