"""The training loops of the seed documents, written in Python as a user would, run as tests.

Each test holds one seed code block translated to fluxtrain (between the ``# --- seed`` and
``# --- end`` comments: these blocks are meant to be copied to the docs as they are), followed by
checks against independent references.
"""

import math
import warnings

import pytest
import torch

import fluxtrain as ft
from fluxtrain.losses import logitcrossentropy, mse


def _blobs(n_per_class: int = 32, batchsize: int = 16):
    """Three well-separated classes in 2-d: (x, onehot y) batches."""
    torch.manual_seed(7)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    labels = torch.arange(3).repeat_interleave(n_per_class)
    X = centres[labels] + torch.randn(len(labels), 2)
    Y = ft.onehot(labels, range(3))
    return list(ft.DataLoader((X, Y), batchsize=batchsize, shuffle=True, rng=0))


# --- seed 000: the loop of the first section, and train_ ---------------------------------------


def test_seed_000_first_loop_equals_train_():
    train_set = _blobs()
    torch.manual_seed(0)
    model = ft.Chain(ft.Dense(2, 8, ft.relu), ft.Dense(8, 3))
    twin = ft.Chain(ft.Dense(2, 8, ft.relu), ft.Dense(8, 3))
    twin.load_state_dict(model.state_dict())
    loss = logitcrossentropy

    # --- seed 000 "Training a Flux Model" (the loop written out)
    opt_state = ft.setup(ft.Momentum(0.01, 0.9), model)

    for data in train_set:
        input, label = data

        grads = ft.gradient(lambda m: loss(m(input), label), model)  # noqa: B023

        ft.update_(opt_state, model, grads[0])
    # --- end

    # --- seed 000 (the same loop as train_)
    twin_state = ft.setup(ft.Momentum(0.01, 0.9), twin)
    ft.train_(lambda m, x, y: loss(m(x), y), twin, train_set, twin_state)
    # --- end

    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# --- seed 000 "Training Loops": the custom loop -------------------------------------------------


def test_seed_000_custom_loop_skips_non_finite_losses_and_stops_early(capsys):
    train_set = _blobs()
    # One corrupt item: its loss is NaN and the loop must skip it with a warning.
    bad_x = torch.tensor([[float("nan"), 0.0]])
    train_set.insert(2, (bad_x, ft.onehot(torch.tensor([0]), range(3))))
    torch.manual_seed(0)
    model = ft.Chain(ft.Dense(2, 16, ft.relu), ft.Dense(16, 3))
    my_loss = logitcrossentropy

    def my_accuracy(model, data):
        right = sum(int((ft.onecold(model(x)) == ft.onecold(y)).sum()) for x, y in data)
        return right / sum(len(x) for x, _ in data)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        # --- seed 000 "Training Loops"
        opt_state = ft.setup(ft.Adam(), model)

        my_log = []
        for epoch in range(1, 101):
            losses = []
            for i, data in enumerate(train_set, start=1):
                input, label = data

                def objective(m):
                    # Any code inside here is differentiated.
                    # Evaluation of the model and loss must be inside!
                    result = m(input)  # noqa: B023
                    return my_loss(result, label)  # noqa: B023

                val, grads = ft.withgradient(objective, model)

                # Save the loss from the forward pass. (Done outside of gradient.)
                losses.append(val)

                # Detect loss of Inf or NaN. Print a warning, and then skip update_!
                if not math.isfinite(val):
                    warnings.warn(f"loss is {val} on item {i} (epoch {epoch})", stacklevel=1)
                    continue

                ft.update_(opt_state, model, grads[0])

            # Compute some accuracy, and save details
            acc = my_accuracy(model, train_set)
            my_log.append(dict(acc=acc, losses=losses))

            # Stop training when some criterion is reached
            if acc > 0.95:
                print(f"stopping after {epoch} epochs")
                break
        # --- end

    n_epochs = len(my_log)
    assert 1 <= n_epochs < 100
    assert capsys.readouterr().out == f"stopping after {n_epochs} epochs\n"
    assert my_log[-1]["acc"] > 0.95 and all(e["acc"] <= 0.95 for e in my_log[:-1])
    messages = [str(w.message) for w in caught]
    assert messages == [f"loss is nan on item 3 (epoch {e})" for e in range(1, n_epochs + 1)]
    for entry in my_log:
        assert len(entry["losses"]) == len(train_set)
        assert math.isnan(entry["losses"][2])
        assert all(math.isfinite(v) for k, v in enumerate(entry["losses"]) if k != 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- seed 000 "Regularisation" ------------------------------------------------------------------


def _dense_problem():
    torch.manual_seed(11)
    densemodel = ft.f64(ft.Dense(3, 2, ft.tanh))
    data = [
        (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
        for _ in range(10)
    ]
    return densemodel, data


def test_seed_000_l2_penalty_gradient_is_the_weight_decay_gradient():
    densemodel, data = _dense_problem()
    input, label = data[0]
    my_loss = mse

    # --- seed 000 "Regularisation" (penalty written by hand)
    def objective(m):
        result = m(input)
        penalty = (m.weight**2).sum() / 2 + (m.bias**2).sum() / 2
        return my_loss(result, label) + 0.42 * penalty

    grads = ft.gradient(objective, densemodel)
    # --- end

    # --- seed 000 "Regularisation" (penalty over ft.trainables)
    def pen_l2(x):
        return (x**2).sum() / 2

    def penalised(m):
        result = m(input)
        penalty = sum(pen_l2(p) for p in ft.trainables(m))
        return my_loss(result, label) + 0.42 * penalty

    grads_all = ft.gradient(penalised, densemodel)
    # --- end

    plain = ft.gradient(lambda m: my_loss(m(input), label), densemodel)[0]
    for name in ("weight", "bias"):
        p = getattr(densemodel, name)
        expected = plain[name] + 0.42 * p.detach()  # what WeightDecay(0.42) adds to a gradient
        torch.testing.assert_close(grads[0][name], expected)
        torch.testing.assert_close(grads_all[0][name], expected)
        # and WeightDecay's own maths gives the same modified gradient:
        _, decayed = ft.WeightDecay(0.42).apply(None, p.detach(), plain[name])
        torch.testing.assert_close(decayed, expected)


def test_seed_000_weight_decay_chain_trains_like_the_l2_penalty():
    model, data = _dense_problem()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    my_loss = mse

    def pen_l2(x):
        return (x**2).sum() / 2

    # --- seed 000 "Regularisation": penalty in the loss, with Adam(0.1)
    opt_state = ft.setup(ft.Adam(0.1), model)
    ft.train_(
        lambda m, x, y: my_loss(m(x), y) + 0.42 * sum(pen_l2(p) for p in ft.trainables(m)),
        model,
        data,
        opt_state,
    )
    # --- end
    with_penalty = [p.detach().clone() for p in model.parameters()]

    model.load_state_dict(init)
    # --- seed 000 "Regularisation": the same, by modifying the optimiser
    decay_opt_state = ft.setup(ft.OptimiserChain(ft.WeightDecay(0.42), ft.Adam(0.1)), model)
    ft.train_(lambda m, x, y: my_loss(m(x), y), model, data, decay_opt_state)
    # --- end
    for p, q in zip(model.parameters(), with_penalty):
        assert not torch.equal(q, init["weight"])
        torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


# --- seed 000 "Learning Rate Schedules": adjust_ mid-training -----------------------------------


def test_seed_000_adjust_mid_training_matches_torch_adam_with_a_changed_lr():
    model, data = _dense_problem()
    reference, _ = _dense_problem()
    reference.load_state_dict(model.state_dict())

    def loss(m, x, y):
        return mse(m(x), y)

    # --- seed 000 "Learning Rate Schedules" (100 epochs shortened to 6, switch after 3)
    opt_state = ft.setup(ft.Adam(0.1), model)  # initialise once

    for epoch in range(1, 7):
        ft.train_(loss, model, data, opt_state)  # Train with eta = 0.1 for the first 3,
        if epoch == 3:  # then change to use eta = 0.01 for the rest.
            ft.adjust_(opt_state, 0.01)
    # --- end

    # Independent reference: torch.optim.Adam has the same formula (epsilon outside the sqrt).
    opt = torch.optim.Adam(reference.parameters(), lr=0.1, eps=1e-8)
    for epoch in range(1, 7):
        for x, y in data:
            opt.zero_grad()
            loss(reference, x, y).backward()
            opt.step()
        if epoch == 3:
            for group in opt.param_groups:
                group["lr"] = 0.01
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)
    assert opt_state.weight.rule.eta == 0.01


def _bimodel():
    torch.manual_seed(12)
    # --- seed 000: a model with two parts
    bimodel = ft.Chain(
        enc=ft.Chain(ft.Dense(4, 6, ft.relu), ft.Dense(6, 3)),
        dec=ft.Chain(ft.Dense(3, 6, ft.relu), ft.Dense(6, 4)),
    )
    # --- end
    data = [(torch.randn(8, 4),) for _ in range(4)]
    return bimodel, data


def _autoencoder_loss(m, x):
    return mse(m(x), x)


def test_seed_000_adjust_one_part_of_the_model_keeps_momenta():
    bimodel, data = _bimodel()

    # --- seed 000 "Learning Rate Schedules": a different learning rate per part
    # This returns a tree whose structure matches the model:
    opt_state = ft.setup(ft.Adam(0.02), bimodel)

    # Adjust the learning rate to be used for bimodel.layers.enc
    ft.adjust_(opt_state.layers.enc, 0.03)
    # --- end

    leaves = list(ft.leaves(opt_state))
    enc = list(ft.leaves(opt_state.layers.enc))
    assert len(enc) == 4 and len(leaves) == 8
    assert all(leaf.rule.eta == 0.03 for leaf in enc)
    assert all(leaf.rule.eta == 0.02 for leaf in leaves if all(leaf is not e for e in enc))

    # adjust_ mid-training keeps the stored momenta: train, adjust, compare moments.
    ft.train_(_autoencoder_loss, bimodel, data, opt_state)
    moments = [leaf.state[0].clone() for leaf in enc]
    ft.adjust_(opt_state.layers.enc, 0.001)
    for leaf, m in zip(enc, moments):
        torch.testing.assert_close(leaf.state[0], m, rtol=0, atol=0)
        assert leaf.rule.eta == 0.001


def test_seed_000_freeze_one_part_then_thaw():
    bimodel, data = _bimodel()
    opt_state = ft.setup(ft.Adam(0.02), bimodel)
    enc_before = [p.detach().clone() for p in bimodel.layers.enc.parameters()]
    dec_before = [p.detach().clone() for p in bimodel.layers.dec.parameters()]
    loss = _autoencoder_loss

    # --- seed 000 "Freezing layer parameters"
    ft.freeze_(opt_state.layers.enc)

    # Now training won't update parameters in bimodel.layers.enc
    ft.train_(loss, bimodel, data, opt_state)

    # Un-freeze the entire model:
    ft.thaw_(opt_state)
    # --- end

    for p, q in zip(bimodel.layers.enc.parameters(), enc_before):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    assert all(
        not torch.equal(p.detach(), q) for p, q in zip(bimodel.layers.dec.parameters(), dec_before)
    )
    assert not any(leaf.frozen for leaf in ft.leaves(opt_state))
    ft.train_(loss, bimodel, data, opt_state)
    assert all(
        not torch.equal(p.detach(), q) for p, q in zip(bimodel.layers.enc.parameters(), enc_before)
    )


# --- seed 003: the train! example with printed numbers ------------------------------------------


def test_seed_003_train_example_with_flux_layers():
    # --- seed 003 "setup" / "train!"
    model = ft.f64(ft.Dense(2, 1, ft.leakyrelu, init=torch.ones))

    opt_state = ft.setup(ft.Momentum(0.1), model)  # this encodes the optimiser and its state

    x1, y1 = (
        torch.tensor([0.2, -0.3], dtype=torch.float64),
        torch.tensor([0.4], dtype=torch.float64),
    )

    ft.train_(lambda m, x, y: (m(x) - y).abs().sum() * 100, model, [(x1, y1), (x1, y1)], opt_state)
    # --- end

    torch.testing.assert_close(model.bias.detach(), torch.tensor([10.19], dtype=torch.float64))
    torch.testing.assert_close(
        opt_state.weight.state, torch.tensor([[-2.018, 3.027]], dtype=torch.float64)
    )
    torch.testing.assert_close(opt_state.bias.state, torch.tensor([-10.09], dtype=torch.float64))


# --- seeds 001 / 002 / 003: the implicit style --------------------------------------------------


def _digits_like(n: int = 64, features: int = 20, classes: int = 10):
    torch.manual_seed(13)
    X = torch.rand(n, features)
    Y = ft.onehot(torch.randint(0, classes, (n,)), range(classes))
    return X, Y


def test_seed_001_train_with_params_and_a_list_of_tuples():
    X, Y = _digits_like()
    x, y = X[:1], Y[:1]
    torch.manual_seed(0)

    # --- seed 001 "Training" (784 inputs shortened to 20)
    m = ft.Chain(ft.Dense(20, 32, ft.sigmoid), ft.Dense(32, 10), ft.softmax)

    def loss(x, y):
        return mse(m(x), y)

    ps = ft.params(m)

    data = [(x, y), (x, y), (x, y)]  # the same point three times
    losses = ft.train_(loss, ps, data, ft.Descent(0.5))
    # --- end

    assert len(ps) == 4
    assert losses[0] > losses[1] > losses[2]
    # zip of inputs and outputs works the same way:
    xs, ys = list(X[:3]), list(Y[:3])
    assert len(ft.train_(loss, ps, zip(xs, ys), ft.Descent(0.5))) == 3


def test_seed_002_implicit_train_one_liner_equals_explicit_train():
    X, Y = _digits_like()
    train_set = ft.DataLoader((X, Y), batchsize=16)
    torch.manual_seed(0)
    model = ft.Chain(ft.Dense(20, 16, ft.relu), ft.Dense(16, 10))
    twin = ft.Chain(ft.Dense(20, 16, ft.relu), ft.Dense(16, 10))
    twin.load_state_dict(model.state_dict())
    loss = logitcrossentropy

    # --- seed 002 "Implicit-style train!"
    ft.train_(lambda x, y: loss(model(x), y), ft.params(model), train_set, ft.Adam())
    # --- end

    ft.train_(lambda m, x, y: loss(m(x), y), twin, train_set, ft.setup(ft.Adam(), twin))
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_seed_001_callbacks_throttle_and_stop():
    X, Y = _digits_like()
    data = ft.DataLoader((X, Y), batchsize=8)
    torch.manual_seed(0)
    m = ft.Chain(ft.Dense(20, 10))
    test_x, test_y = X[:16], Y[:16]
    ticks = iter(range(0, 1000, 2))  # a fake clock: 2 seconds per call

    def objective(x, y):
        return logitcrossentropy(m(x), y)

    shown = []

    # --- seed 001 "Callbacks"
    def evalcb():
        shown.append(objective(test_x, test_y).item())

    throttled_cb = ft.throttle(evalcb, 5, clock=lambda: next(ticks))
    for epoch in ft.epochs(2):  # noqa: B007
        ft.train_(objective, ft.params(m), data, ft.Descent(0.1), cb=throttled_cb)
    # --- end

    # 16 calls at 0, 2, ..., 30 seconds; runs at 0, 6, 12, 18, 24, 30.
    assert len(shown) == 6

    def accuracy():
        return (ft.onecold(m(test_x)) == ft.onecold(test_y)).float().mean().item()

    calls = []

    # --- seed 001 "Calling ft.stop() in a callback will exit the training loop early"
    def cb():
        calls.append(1)
        if accuracy() > -1:  # always true here: stop after the first item
            ft.stop()

    # --- end
    losses = ft.train_(objective, ft.params(m), data, ft.Descent(0.1), cb=cb)
    assert len(calls) == 1 and len(losses) == 1


def _custom_problem():
    X, Y = _digits_like()
    data = list(ft.DataLoader((X, Y), batchsize=16))
    torch.manual_seed(0)
    model = ft.Chain(ft.Dense(20, 12, ft.tanh), ft.Dense(12, 10))
    return model, data


def test_seed_001_custom_implicit_loop_with_gradient():
    model, data = _custom_problem()
    twin, _ = _custom_problem()
    logged = []

    def logging_callback(v):
        logged.append(v)

    # --- seed 001 "Custom Training loops" (with gradient)
    def my_custom_train_(loss, ps, data, opt):
        ps = ft.Params(ps)
        for d in data:
            training_loss = None

            def objective():
                nonlocal training_loss
                training_loss = loss(*d)  # noqa: B023
                # Code inserted here will be differentiated, unless you need that gradient
                # information it is better to do the work outside this block.
                return training_loss

            gs = ft.gradient(objective, ps)
            # Insert whatever code you want here that needs training_loss, e.g. logging.
            logging_callback(training_loss.item())
            # Insert whatever code you want here that needs the gradient.
            ft.update_(opt, ps, gs)
            # Here you might like to check validation set accuracy, and break out to do early
            # stopping.

    # --- end

    my_custom_train_(
        lambda x, y: logitcrossentropy(model(x), y), ft.params(model), data, ft.Adam(0.01)
    )
    expected = ft.train_(
        lambda x, y: logitcrossentropy(twin(x), y), ft.params(twin), data, ft.Adam(0.01)
    )
    assert logged == pytest.approx(expected, rel=0, abs=0)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_seed_001_custom_implicit_loop_with_pullback():
    model, data = _custom_problem()
    twin, _ = _custom_problem()
    logged = []

    def logging_callback(v):
        logged.append(v)

    # --- seed 001 "Custom Training loops" (with pullback)
    def my_custom_train_(loss, ps, data, opt):
        ps = ft.Params(ps)
        for d in data:
            # back is a function that computes the product of the gradient so far with its
            # argument.
            train_loss, back = ft.pullback(lambda: loss(*d), ps)  # noqa: B023
            # Insert whatever code you want here that needs training_loss, e.g. logging.
            logging_callback(train_loss)
            # Apply back() to 1.0 to get the gradient of the loss.
            gs = back(1.0)
            # Insert whatever code you want here that needs the gradient.
            ft.update_(opt, ps, gs)
            # Here you might like to check validation set accuracy, and break out to do early
            # stopping.

    # --- end

    my_custom_train_(
        lambda x, y: logitcrossentropy(model(x), y), ft.params(model), data, ft.Adam(0.01)
    )
    expected = ft.train_(
        lambda x, y: logitcrossentropy(twin(x), y), ft.params(twin), data, ft.Adam(0.01)
    )
    assert logged == expected
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_seed_003_implicit_update_with_params_and_grads():
    torch.manual_seed(14)
    m = ft.Chain(ft.Dense(2, 3, ft.tanh), ft.Dense(3, 1))
    x = torch.rand(1, 2)
    y1 = m(x).item()

    # --- seed 003 "update!(opt, ps::Params, gs)"
    opt = ft.Adam()
    ps = ft.params(m)
    gs = ft.gradient(lambda: m(x).sum(), ps)
    ft.update_(opt, ps, gs)
    # --- end

    assert isinstance(gs, ft.Grads)
    assert m(x).item() < y1
