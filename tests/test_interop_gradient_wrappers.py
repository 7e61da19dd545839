"""ft.gradient on wrapped models (torch.compile, DataParallel, DDP) gives the inner model's tree."""

from __future__ import annotations

import copy

import torch

import fluxtrain as ft


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _data(n: int = 4):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)) for _ in range(n)]


def _loss(m, x, y):
    return (m(x) - y).pow(2).mean()


def test_gradient_tree_of_a_compiled_model_updates_it_exactly_as_the_eager_models():
    eager = _model()
    inner = copy.deepcopy(eager)
    compiled = torch.compile(inner, backend="aot_eager")
    st_eager = ft.setup(ft.Adam(0.01), eager)
    st_compiled = ft.setup(ft.Adam(0.01), compiled)
    for x, y in _data():
        (g_eager,) = ft.gradient(_loss, eager, x, y)[:1]
        val, grads = ft.withgradient(_loss, compiled, x, y)
        assert val == _loss(eager, x, y).item()
        g_compiled = grads[0]
        assert "_orig_mod" not in g_compiled  # rooted at the model itself
        assert torch.equal(g_compiled[0].weight, g_eager[0].weight)
        ft.update_(st_eager, eager, g_eager)
        ft.update_(st_compiled, compiled, g_compiled)
    for p, q in zip(eager.parameters(), inner.parameters()):
        assert torch.equal(p, q)
    # the state set up from the compiled model is the one of the model inside
    assert str(ft.trainables(inner, path=True)[0][0]) == "0.weight"
    assert st_compiled[2].bias.state[0].shape == (2,)


def test_gradient_tree_of_a_data_parallel_model_has_no_module_level():
    inner = _model()
    wrapped = torch.nn.DataParallel(inner)  # on the CPU it calls the model directly
    x, y = _data(1)[0]
    (g,) = ft.gradient(lambda m: _loss(m, x, y), wrapped)
    (ref,) = ft.gradient(lambda m: _loss(m, x, y), inner)
    assert "module" not in g and torch.equal(g[2].weight, ref[2].weight)
    st = ft.setup(ft.Descent(0.1), inner)
    ft.update_(st, wrapped, g)  # the same state serves the wrapped model


def test_gradient_tree_of_a_ddp_model_has_no_module_level(one_process_group):
    inner = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(inner)
    x, y = _data(1)[0]
    (g,) = ft.gradient(lambda m: _loss(m, x, y), ddp)
    (ref,) = ft.gradient(lambda m: _loss(m, x, y), copy.deepcopy(inner))
    assert "module" not in g and torch.allclose(g[0].weight, ref[0].weight)
    st = ft.setup(ft.Descent(0.1), inner)
    before = inner[0].weight.detach().clone()
    ft.update_(st, ddp, g)
    assert torch.allclose(inner[0].weight, before - 0.1 * ref[0].weight)


def _fully_sharded():
    """A model and its copy sharded with FSDP2's ``fully_shard`` (in a one-process group)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    plain = _model()
    sharded = copy.deepcopy(plain)
    fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
    return plain, sharded


def test_gradient_of_an_fsdp_sharded_model_is_its_own_tree_with_the_plain_models_values(
    one_process_group,
):
    plain, sharded = _fully_sharded()
    x, y = _data(1)[0]
    (g,) = ft.gradient(lambda m: _loss(m, x, y), sharded)
    (ref,) = ft.gradient(lambda m: _loss(m, x, y), plain)
    assert g[1] is None and ref[1] is None  # the same tree as the plain model's
    for layer in (0, 2):
        for name in ("weight", "bias"):
            got = getattr(g[layer], name)
            want = getattr(ref[layer], name)
            assert torch.allclose(got.full_tensor(), want, atol=1e-6), (layer, name)
    assert all(p.grad is None for p in sharded.parameters())  # .grad left as it was


def test_gradient_of_an_fsdp_sharded_model_updates_it_as_the_plain_model(one_process_group):
    # Needs the update engine to leave parameters' storage alone (DTensor parameters).
    plain, sharded = _fully_sharded()
    st_plain = ft.setup(ft.Adam(0.01), plain)
    st_sharded = ft.setup(ft.Adam(0.01), sharded)
    for x, y in _data(3):
        ft.update_(st_plain, plain, ft.gradient(_loss, plain, x, y)[0])
        ft.update_(st_sharded, sharded, ft.gradient(_loss, sharded, x, y)[0])
    for p, q in zip(plain.parameters(), sharded.parameters()):
        assert torch.allclose(p, q.full_tensor(), atol=1e-6)
