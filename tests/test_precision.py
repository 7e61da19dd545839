"""Mixed precision: MixedPrecision master copies, LossScaler, autocast training on digits."""

from __future__ import annotations

import pytest
import torch

import fluxtrain as ft

# ---------------------------------------------------------------------------------------------
# MixedPrecision


def test_mixed_precision_accumulates_steps_too_small_for_float16():
    grad = torch.ones(2, dtype=torch.float16)
    plain = torch.tensor([2.0, 2.0], dtype=torch.float16)
    st_plain = ft.setup(ft.Descent(1e-4), plain)
    mixed = plain.clone()
    st_mixed = ft.setup(ft.MixedPrecision(ft.Descent(1e-4)), mixed)
    for _ in range(20):
        ft.update_(st_plain, plain, grad)
        ft.update_(st_mixed, mixed, grad)
    # float16 spacing at 2.0 is 2^-9: each 1e-4 step rounds away without a master copy.
    assert torch.equal(plain, torch.tensor([2.0, 2.0], dtype=torch.float16))
    master = st_mixed.state[0]
    expected = torch.tensor(2.0)
    for _ in range(20):
        expected = expected - torch.tensor(1e-4) * 1.0  # the same float32 arithmetic
    assert master.dtype == torch.float32 and torch.equal(master, expected.expand(2))
    assert torch.equal(mixed, master.to(torch.float16))
    assert float(mixed[0]) < 2.0


def test_mixed_precision_master_follows_the_wrapped_rule_in_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, generator=g).to(torch.bfloat16)
    st = ft.setup(ft.MixedPrecision(ft.Momentum(0.1, 0.8)), x)
    master, vel = x.float(), torch.zeros(5)
    for _ in range(6):
        dx = torch.randn(5, generator=g).to(torch.bfloat16)
        ft.update_(st, x, dx)
        # Momentum by hand in float32 (v = rho v + eta dx, with torch's fused multiply-add)
        vel = torch.add(vel * 0.8, dx.float(), alpha=0.1)
        master = master - vel
        assert torch.equal(st.state[0], master)
        assert torch.equal(st.state[1], vel)
        assert torch.equal(x, master.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_parameter_is_exactly_the_rounded_master_copy_even_for_large_steps(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1000, generator=g) * 10).to(dtype)
    st = ft.setup(ft.MixedPrecision(ft.Descent(1.0)), x)
    for _ in range(5):
        # Steps as large as the values: many parameters change sign or magnitude.
        ft.update_(st, x, (torch.randn(1000, generator=g) * 10).to(dtype))
        assert torch.equal(x, st.state[0].to(dtype))


def test_mixed_precision_in_a_model_with_tree_state_and_adjust():
    model = torch.nn.Linear(3, 2).to(torch.float16)
    st = ft.setup(ft.MixedPrecision(ft.Adam(0.01)), model)
    assert st.weight.state[0].dtype == torch.float32
    ft.adjust_(st, 0.5)
    assert st.weight.rule == ft.MixedPrecision(ft.Adam(0.5))
    with pytest.raises(ValueError, match="dtype"):
        ft.adjust_(st, dtype=torch.float64)
    with pytest.raises(TypeError, match="wraps a rule"):
        ft.MixedPrecision(0.1)
    x = torch.randn(4, 3).half()
    ft.update_(st, model, ft.gradient(lambda m: m(x).float().pow(2).sum(), model)[0])
    assert torch.equal(model.weight, st.weight.state[0].half())


# ---------------------------------------------------------------------------------------------
# LossScaler


def test_scale_follows_torch_gradscaler_for_the_same_overflow_pattern():
    pattern = [False, False, True, False, False, False, False, True, True, False, False, False]
    ours = ft.LossScaler(init_scale=1024.0, growth_interval=3)
    w = torch.nn.Parameter(torch.zeros(2))
    ref = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    opt = torch.optim.SGD([w], lr=0.1)
    model = {"w": torch.zeros(2)}
    st = ft.setup(ft.Descent(0.1), model)
    for overflow in pattern:
        value = float("inf") if overflow else 1.0
        ref.scale((w * 0).sum()).backward()
        w.grad = torch.full((2,), value)
        ref.step(opt)
        ref.update()
        took = ours.step_(st, model, {"w": torch.full((2,), value)})
        assert took is not overflow
        assert ours.scale_value == ref.get_scale()
    assert ours.skipped == 3 and ours.steps == 9


def test_overflow_skips_the_step_leaving_parameters_rule_state_and_schedule_untouched():
    model = {"a": torch.ones(3), "b": torch.ones(2)}
    rule = ft.OptimiserChain(ft.Scheduler(ft.Descent, ft.Exp(0.1, 0.5)), ft.Adam(0.1))
    st = ft.setup(rule, model)
    scaler = ft.LossScaler(init_scale=8.0)
    assert scaler.step_(st, model, {"a": torch.full((3,), 8.0), "b": torch.full((2,), 8.0)})
    before = {k: v.clone() for k, v in model.items()}
    t_before = st["a"].state[0][0]
    beta_before = st["a"].state[1][2]
    bad = {"a": torch.tensor([1.0, float("nan"), 1.0]), "b": torch.ones(2)}
    assert not scaler.step_(st, model, bad)
    assert all(torch.equal(model[k], before[k]) for k in model)
    assert st["a"].state[0][0] == t_before == 2  # the schedule did not advance
    assert st["a"].state[1][2] == beta_before  # nor did Adam's beta^t
    assert (scaler.skipped, scaler.steps, scaler.scale_value) == (1, 1, 4.0)


def test_unscale_divides_gradient_trees_and_dot_grad_exactly():
    scaler = ft.LossScaler(init_scale=2.0**10)
    lin = torch.nn.Linear(2, 1)
    x = torch.tensor([[1.0, 2.0]])
    grads = ft.gradient(lambda m: scaler.scale(m(x).sum()), lin)[0]
    assert not scaler.unscale_(grads)
    assert torch.equal(grads.weight, x) and torch.equal(grads.bias, torch.ones(1))
    scaler.scale(lin(x).sum()).backward()
    assert not scaler.unscale_(lin)
    assert torch.equal(lin.weight.grad, x)


def test_unscale_without_the_fused_kernel_gives_the_same_result(monkeypatch):
    def missing(*args):
        raise NotImplementedError("no such kernel on this backend")

    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", missing)
    scaler = ft.LossScaler(init_scale=4.0)
    g = {"a": torch.full((3,), 8.0, dtype=torch.float16), "b": torch.tensor([4.0])}
    assert not scaler.unscale_(g)
    assert torch.equal(g["a"], torch.full((3,), 2.0, dtype=torch.float16))
    assert torch.equal(g["b"], torch.tensor([1.0]))
    assert scaler.unscale_({"a": torch.tensor([1.0, float("nan")])})
    assert scaler.unscale_({"a": torch.tensor([float("-inf")], dtype=torch.bfloat16)})


def test_loss_scaling_recovers_float16_gradients_that_would_underflow():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    x = torch.rand(8, 4)

    def loss(m):
        return m(x).float().sum() * 1e-8  # upstream gradient 1e-8 < smallest float16

    with ft.autocast("f16", "cpu"):
        unscaled = ft.gradient(loss, lin)[0]
    scaler = ft.LossScaler()
    with ft.autocast("f16", "cpu"):
        scaled = ft.gradient(lambda m: scaler.scale(loss(m)), lin)[0]
    assert not scaler.unscale_(scaled)
    exact = ft.gradient(loss, lin)[0]  # float32 reference
    assert torch.count_nonzero(unscaled.weight) == 0
    assert torch.allclose(scaled.weight, exact.weight, rtol=2e-3, atol=0)


def test_loss_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    s = ft.LossScaler(init_scale=256.0, growth_interval=5)
    s.update(True)
    s.update(False)
    ft.save(tmp_path / "c.safetensors", scaler=s)
    t = ft.LossScaler()
    ft.load(tmp_path / "c.safetensors", scaler=t)
    assert t.state_dict() == s.state_dict() and t.good_steps == 1


def test_loss_scaler_rejects_bad_settings():
    with pytest.raises(ValueError, match="init_scale"):
        ft.LossScaler(init_scale=0)
    with pytest.raises(ValueError, match="backoff_factor"):
        ft.LossScaler(backoff_factor=2.0)


# ---------------------------------------------------------------------------------------------
# autocast


def test_autocast_names_and_disabled_forms():
    lin = torch.nn.Linear(2, 2)
    with ft.autocast("bf16", "cpu"):
        assert lin(torch.ones(1, 2)).dtype == torch.bfloat16
    for off in (None, "f32", torch.float32):
        with ft.autocast(off):
            assert lin(torch.ones(1, 2)).dtype == torch.float32
    assert ft.precision_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="unknown precision"):
        ft.precision_dtype("f8")


@pytest.fixture
def one_thread():
    # Small models train fastest on one thread, and results do not depend on the core count.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _digits_accuracy(autocast) -> float:
    torch.manual_seed(0)
    (Xtr, ytr), (Xva, yva) = ft.load_digits(split=0.2, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 10),
    )
    st = ft.setup(ft.Adam(3e-3), model)
    loader = ft.DataLoader((Xtr, ytr), batchsize=32, shuffle=True, rng=0)

    def loss(m, x, y):
        return torch.nn.functional.cross_entropy(m(x).float(), y)

    for _ in range(4):
        ft.train_(loss, model, loader, st, autocast=autocast, progress=False)
    with torch.no_grad(), ft.autocast(autocast, "cpu"):
        pred = model(Xva).argmax(dim=1)
    return float((pred == yva).float().mean())


def test_bf16_autocast_training_of_a_cnn_on_digits_is_within_one_point_of_float32(one_thread):
    acc32 = _digits_accuracy(None)
    acc16 = _digits_accuracy(torch.bfloat16)
    assert acc32 > 0.9  # the float32 run learned the task
    assert abs(acc16 - acc32) <= 0.01


def test_hand_written_float16_loop_with_loss_scaler_recovers_from_overflow_and_learns(
    one_thread,
):
    torch.manual_seed(0)
    (Xtr, ytr), (Xva, yva) = ft.load_digits(split=0.2, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    opt_state = ft.setup(ft.Adam(1e-2), model)
    scaler = ft.LossScaler(init_scale=2.0**40, growth_interval=20)  # far too large at first
    loader = ft.DataLoader((Xtr, ytr), batchsize=64, shuffle=True, rng=0)

    def lossfn(m, x, y):
        return torch.nn.functional.cross_entropy(m(x).float(), y)

    for _ in range(4):
        for x, y in loader:
            with ft.autocast("f16", "cpu"):
                _, grads = ft.withgradient(lambda m: scaler.scale(lossfn(m, x, y)), model)  # noqa: B023
            scaler.step_(opt_state, model, grads[0])
    # 2^40 overflows float16 (max 65504): the scale backed off until gradients were finite.
    assert scaler.skipped >= 20 and scaler.scale_value <= 2.0**20
    assert scaler.steps + scaler.skipped == 4 * len(loader)
    with torch.no_grad():
        acc = float((model(Xva).argmax(1) == yva).float().mean())
    assert acc > 0.9


def test_mixed_precision_inside_a_chain_is_refused_pointing_to_wrapping_the_chain():
    with pytest.raises(TypeError, match=r"MixedPrecision\(OptimiserChain"):
        ft.OptimiserChain(ft.MixedPrecision(ft.Descent(0.1)), ft.ClipGrad(1.0))
    # wrapping the chain is the way
    ft.MixedPrecision(ft.OptimiserChain(ft.ClipGrad(1.0), ft.Descent(0.1)))
