"""The model-building and gradient/update code blocks of seeds 000 and 002 (Flux's training
guides) and the model of seed 001, translated to Python with fluxtrain's layers.

Each test names the block it translates.  Data blocks (DataLoader) and ``train!`` loops are
tested with their own modules; here every block that builds a model, takes its gradient or
updates it runs as written, with fluxtrain layers in the model.  Julia's batch-last arrays
become batch-first tensors.
"""

import torch
from tests.test_layers_basic import grad_at

import fluxtrain as ft

N_IN, N_OUT = 784, 10


def seed001_model():
    # seed 001: m = Chain(Dense(784, 32, σ), Dense(32, 10), softmax)
    return ft.Chain(ft.Dense(784, 32, ft.σ), ft.Dense(32, 10), ft.softmax)


def loss(y_hat, y):
    # seeds 000/002: loss(y_hat, y) = sum((y_hat .- y).^2)
    return ((y_hat - y) ** 2).sum()


my_loss = loss


def batch(n=8):
    x = torch.rand(n, N_IN)
    y = torch.nn.functional.one_hot(torch.randint(0, N_OUT, (n,)), N_OUT).float()
    return x, y


def params_of(model):
    return [p.detach().clone() for p in ft.trainables(model)]


def changed(before, model):
    return [not torch.equal(a, b) for a, b in zip(before, ft.trainables(model))]


def test_seed001_model_builds_and_prints_like_flux():
    m = seed001_model()
    assert m(torch.rand(5, 784)).shape == (5, 10)
    torch.testing.assert_close(m(torch.rand(5, 784)).sum(dim=1), torch.ones(5))
    assert repr(m).splitlines()[1].startswith("  Dense(784 => 32, σ),")
    # loss(x, y) = Flux.Losses.mse(m(x), y); ps = Flux.params(m)
    x, y = batch()
    ps = ft.params(m)
    grads = ft.gradient(lambda: ((m(x) - y) ** 2).mean(), ps)
    assert all(grads[p] is not None for p in ps)


def test_seed000_first_loop_setup_gradient_update():
    model = seed001_model()
    rule = ft.Descent(0.1)
    train_set = [batch() for _ in range(3)]
    # opt_state = Flux.setup(rule, model)
    opt_state = ft.setup(rule, model)
    before = params_of(model)
    first_loss = None
    for data in train_set * 5:
        # input, label = data
        input, label = data
        # grads = Flux.gradient(model) do m ... loss(result, label) end
        grads = ft.gradient(lambda m: loss(m(input), label), model)  # noqa: B023
        if first_loss is None:
            first_loss = loss(model(input), label).item()
        # Flux.update!(opt_state, model, grads[1])
        ft.update_(opt_state, model, grads[0])
    assert all(changed(before, model))
    assert loss(model(train_set[0][0]), train_set[0][1]).item() < first_loss


def test_seed000_gradient_of_anonymous_function_mirrors_the_model():
    model = seed001_model()
    input, label = batch()
    # grads = Flux.gradient(m -> loss(m(input), label), model)
    grads = ft.gradient(lambda m: loss(m(input), label), model)
    assert isinstance(grads, tuple) and len(grads) == 1
    # θ = model.layers[1].weight[2,3]; ∂f_∂θ = grads[1].layers[1].weight[2,3]
    theta = model.layers[0].weight
    assert grads[0].layers[0].weight.shape == theta.shape
    # the entry matches a finite difference
    i, j, h = 2, 3, 1e-2
    with torch.no_grad():
        theta[i, j] += h
        up = loss(model(input), label).item()
        theta[i, j] -= 2 * h
        down = loss(model(input), label).item()
        theta[i, j] += h
    fd = (up - down) / (2 * h)
    assert abs(grads[0].layers[0].weight[i, j].item() - fd) < 1e-2 * max(1.0, abs(fd))
    assert grads[0].layers[2] is None  # softmax has no parameters


def test_seed000_fmap_update_with_learning_rate():
    model = seed001_model()
    input, label = batch()
    grads = ft.gradient(lambda m: loss(m(input), label), model)
    η = 0.01
    before = params_of(model)
    # fmap(model, grads[1]) do p, g; p .= p .- η .* g; end
    with torch.no_grad():
        ft.fmap(lambda p, g: p.sub_(η * g), model, grads[0])
    paths = [path for path, _ in ft.trainables(model, path=True)]
    expected = [b - η * grad_at(grads[0], path) for b, path in zip(before, paths)]
    for p, e in zip(ft.trainables(model), expected):
        torch.testing.assert_close(p.detach(), e)


def test_seed000_momentum_setup_and_update():
    model = seed001_model()
    train_set = [batch() for _ in range(2)]
    # opt_state = Flux.setup(Momentum(0.01, 0.9), model)
    opt_state = ft.setup(ft.Momentum(0.01, 0.9), model)
    assert opt_state.layers[0].weight.rule.rho == 0.9
    before = params_of(model)
    for input, label in train_set:
        grads = ft.gradient(lambda m: loss(m(input), label), model)  # noqa: B023
        # Flux.update!(opt_state, model, grads[1])
        ft.update_(opt_state, model, grads[0])
    assert all(changed(before, model))
    assert opt_state.layers[0].weight.state.abs().sum() > 0  # momentum stored


def test_seed000_custom_loop_with_withgradient_and_dropout():
    # a model with Dropout: "It should switch automatically"
    model = ft.Chain(ft.Dense(784, 32, ft.relu), ft.Dropout(0.2), ft.Dense(32, 10), ft.softmax)
    train_set = [batch() for _ in range(3)]
    opt_state = ft.setup(ft.Adam(), model)
    my_log = []
    for epoch in range(1, 3):
        losses = []
        for i, data in enumerate(train_set, start=1):
            input, label = data
            # val, grads = Flux.withgradient(model) do m ... end
            val, grads = ft.withgradient(lambda m: my_loss(m(input), label), model)  # noqa: B023
            losses.append(val)
            if not torch.isfinite(torch.tensor(val)):
                print(f"loss is {val} on item {i}", epoch)
                continue
            ft.update_(opt_state, model, grads[0])
        # outside gradient Dropout is off: the model is deterministic
        x = train_set[0][0]
        assert torch.equal(model(x), model(x))
        acc = float((model(x).argmax(1) == train_set[0][1].argmax(1)).float().mean())
        my_log.append({"acc": acc, "losses": losses})
    assert len(my_log) == 2 and all(isinstance(v, float) for v in my_log[0]["losses"])
    # returning (loss, result) gives val as the tuple
    input, label = train_set[0]
    (val, result), _ = ft.withgradient(
        lambda m: (my_loss(r := m(input), label), r), model
    )  # fmt: skip
    assert isinstance(val, float) and result.shape == (8, 10)


def test_seed000_l2_penalty_on_a_dense_model():
    densemodel = ft.Dense(5, 3)
    input, label = torch.randn(4, 5), torch.randn(4, 3)

    # grads = Flux.gradient(densemodel) do m ... my_loss(result, label) + 0.42f0 * penalty end
    def objective(m):
        result = m(input)
        penalty = (m.weight**2).sum() / 2 + (m.bias**2).sum() / 2
        return my_loss(result, label) + 0.42 * penalty

    (g,) = ft.gradient(objective, densemodel)
    (g0,) = ft.gradient(lambda m: my_loss(m(input), label), densemodel)
    torch.testing.assert_close(g.weight, g0.weight + 0.42 * densemodel.weight.detach())
    torch.testing.assert_close(g.bias, g0.bias + 0.42 * densemodel.bias.detach())


def test_seed000_penalty_over_trainables_equals_weightdecay_in_the_optimiser():
    def pen_l2(x):
        return (x**2).sum() / 2

    model = seed001_model()
    input, label = batch()

    # grads = Flux.gradient(model) do m ... sum(pen_l2, Flux.trainables(m)) ... end
    def objective(m):
        result = m(input)
        penalty = sum(pen_l2(p) for p in ft.trainables(m))
        return my_loss(result, label) + 0.42 * penalty

    (g_pen,) = ft.gradient(objective, model)
    (g_plain,) = ft.gradient(lambda m: my_loss(m(input), label), model)

    # opt_state = Flux.setup(Adam(0.1), model) vs
    # decay_opt_state = Flux.setup(OptimiserChain(WeightDecay(0.42), Adam(0.1)), model)
    a, b = seed001_model(), seed001_model()
    b.load_state_dict(model.state_dict())
    a.load_state_dict(model.state_dict())
    opt_state = ft.setup(ft.Adam(0.1), a)
    decay_opt_state = ft.setup(ft.OptimiserChain(ft.WeightDecay(0.42), ft.Adam(0.1)), b)
    ft.update_(opt_state, a, g_pen)
    ft.update_(decay_opt_state, b, g_plain)
    for pa, pb in zip(ft.trainables(a), ft.trainables(b)):
        torch.testing.assert_close(pa, pb)


def test_seed002_implicit_params_and_penalty_over_params():
    model = seed001_model()
    input, label = batch()
    # pars = Flux.params(model); grad = gradient(() -> loss(model(input), label), pars)
    pars = ft.params(model)
    grad = ft.gradient(lambda: loss(model(input), label), pars)
    (explicit,) = ft.gradient(lambda m: loss(m(input), label), model)
    torch.testing.assert_close(grad[model.layers[0].weight], explicit.layers[0].weight)

    # implicit-style loss closing over the model: loss(x, y) = sum((model(x) .- y).^2)
    def closure_loss(x, y):
        return ((model(x) - y) ** 2).sum()

    grad2 = ft.gradient(lambda: closure_loss(input, label), ft.params(model))
    torch.testing.assert_close(grad2[model.layers[1].weight], explicit.layers[1].weight)

    # penalty = sum(pen_l2, Flux.params(m))
    def pen_l2(x):
        return (x**2).sum() / 2

    (g,) = ft.gradient(
        lambda m: loss(m(input), label) + 0.42 * sum(pen_l2(p) for p in ft.params(m)), model
    )
    torch.testing.assert_close(
        g.layers[1].bias, explicit.layers[1].bias + 0.42 * model.layers[1].bias.detach()
    )


def bimodel_and_data():
    # bimodel = Chain(enc = [...], dec = [...])
    bimodel = ft.Chain(
        enc=ft.Chain(ft.Dense(6, 4, ft.relu), ft.Dense(4, 2)),
        dec=ft.Chain(ft.Dense(2, 4, ft.relu), ft.Dense(4, 6)),
    )
    x = torch.randn(16, 6)
    return bimodel, x


def test_seed000_bimodel_setup_and_adjust_encoder_learning_rate():
    bimodel, x = bimodel_and_data()
    # opt_state = Flux.setup(Adam(0.02), bimodel)
    opt_state = ft.setup(ft.Adam(0.02), bimodel)
    # Flux.adjust!(opt_state.layers.enc, 0.03)
    ft.adjust_(opt_state.layers.enc, 0.03)
    assert opt_state.layers.enc.layers[0].weight.rule.eta == 0.03
    assert opt_state.layers.enc.layers[1].bias.rule.eta == 0.03
    assert opt_state.layers.dec.layers[0].weight.rule.eta == 0.02
    # Flux.adjust!(opt_state, beta = (0.8, 0.99))
    ft.adjust_(opt_state, beta=(0.8, 0.99))
    assert opt_state.layers.dec.layers[1].weight.rule.beta == (0.8, 0.99)
    (g,) = ft.gradient(lambda m: ((m(x) - x) ** 2).mean(), bimodel)
    ft.update_(opt_state, bimodel, g)


def test_seed000_freeze_encoder_then_thaw():
    bimodel, x = bimodel_and_data()
    opt_state = ft.setup(ft.Adam(0.02), bimodel)
    # Flux.freeze!(opt_state.layers.enc)
    ft.freeze_(opt_state.layers.enc)
    enc_before = [p.detach().clone() for p in ft.trainables(bimodel.enc)]
    dec_before = [p.detach().clone() for p in ft.trainables(bimodel.dec)]
    (g,) = ft.gradient(lambda m: ((m(x) - x) ** 2).mean(), bimodel)
    ft.update_(opt_state, bimodel, g)
    assert all(torch.equal(a, b) for a, b in zip(enc_before, ft.trainables(bimodel.enc)))
    assert any(not torch.equal(a, b) for a, b in zip(dec_before, ft.trainables(bimodel.dec)))
    # Flux.thaw!(opt_state)
    ft.thaw_(opt_state)
    (g,) = ft.gradient(lambda m: ((m(x) - x) ** 2).mean(), bimodel)
    ft.update_(opt_state, bimodel, g)
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, ft.trainables(bimodel.enc)))


def test_seed000_schedule_adjusts_a_models_momentum_optimiser():
    model = seed001_model()
    # opt_state = Flux.setup(Momentum(), model); schedule = Cos(λ0=1e-4, λ1=1e-2, period=10)
    opt_state = ft.setup(ft.Momentum(), model)
    schedule = ft.Cos(l0=1e-4, l1=1e-2, period=10)
    etas = []
    for eta, _epoch in zip(schedule, range(1, 21)):
        ft.adjust_(opt_state, eta)
        etas.append(opt_state.layers[0].weight.rule.eta)
    assert etas[0] == schedule(1) and max(etas) <= 1e-2 + 1e-12 and min(etas) >= 1e-4 - 1e-12


def test_seed000_layer_with_narrowed_trainables():
    # `@layer NewLayer trainable=(weight,)`
    @ft.layer(trainable=("weight",))
    class NewLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(3))
            self.shift = torch.nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return x * self.weight + self.shift

    model = ft.Chain(NewLayer(), ft.Dense(3, 1))
    st = ft.setup(ft.Descent(0.1), model)
    assert st.layers[0].shift is None and st.layers[0].weight is not None
    shift = model.layers[0].shift.detach().clone()
    (g,) = ft.gradient(lambda m: m(torch.ones(2, 3)).sum(), model)
    ft.update_(st, model, g)
    assert torch.equal(model.layers[0].shift, shift)
