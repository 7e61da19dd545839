"""fluxtrain.losses against torch.nn.functional and hand-computed values (Flux 0.16's maths).

Layout: batch first, classes along dims=1. Flux's own test vectors (FluxML/Flux.jl
test/losses.jl) are reused with the matrices transposed into our batch-first layout.
"""

import builtins
import math

import pytest
import torch
import torch.nn.functional as F

import fluxtrain as ft
from fluxtrain import losses as L

TOL = dict(atol=1e-6, rtol=1e-6)


def close(a, b, tol=1e-6):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a, b)


@pytest.fixture
def regression():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(
        8, 5, generator=g, dtype=torch.float64
    )


def test_every_api_loss_is_exported_under_losses_and_top_level():
    names = [
        "mae", "mse", "msle", "huber_loss", "label_smoothing", "crossentropy",
        "logitcrossentropy", "binarycrossentropy", "logitbinarycrossentropy", "kldivergence",
        "poisson_loss", "hinge_loss", "squared_hinge_loss", "dice_coeff_loss", "tversky_loss",
        "binary_focal_loss", "focal_loss", "siamese_contrastive_loss", "ctc_loss",
    ]  # fmt: skip
    assert sorted(L.__all__) == sorted(names)
    for n in names:
        assert getattr(ft.losses, n) is getattr(L, n)


# ---- regression losses ------------------------------------------------------------------------


def test_mse_and_mae_match_torch_with_mean_sum_and_none(regression):
    ŷ, y = regression
    close(L.mse(ŷ, y), F.mse_loss(ŷ, y))
    close(L.mse(ŷ, y, agg=torch.sum), F.mse_loss(ŷ, y, reduction="sum"))
    close(L.mse(ŷ, y, agg=builtins.sum), F.mse_loss(ŷ, y, reduction="sum"))
    close(L.mse(ŷ, y, agg="none"), F.mse_loss(ŷ, y, reduction="none"))
    close(L.mae(ŷ, y), F.l1_loss(ŷ, y))
    close(L.mae(ŷ, y, agg="sum"), F.l1_loss(ŷ, y, reduction="sum"))


def test_agg_accepts_any_function():
    ŷ, y = torch.tensor([1.0, 2.0, 4.0]), torch.zeros(3)
    close(L.mae(ŷ, y, agg=lambda x: x.max()), 4.0)
    close(L.mse(ŷ, y, agg=torch.median), 4.0)


def test_agg_rejects_unknown_strings():
    with pytest.raises(ValueError, match="agg='avg'"):
        L.mse(torch.ones(2), torch.ones(2), agg="avg")


def test_flux_regression_vectors():
    # Flux test/losses.jl: y = [1, 1, 0, 0], ŷ = [.9, .1, .1, .9]
    ŷ = torch.tensor([0.9, 0.1, 0.1, 0.9], dtype=torch.float64)
    y = torch.tensor([1, 1, 0, 0])
    close(L.mse(ŷ, y), (0.1**2 + 0.9**2) / 2)
    close(L.mae(ŷ, y), 0.5)
    close(L.huber_loss(ŷ, y), 0.20500000000000002)
    ŷ2 = torch.tensor([345.0, 332.0, 789.0], dtype=torch.float64)
    close(L.msle(ŷ2, torch.tensor([123.0, 456.0, 789.0])), 0.38813985859136585)


def test_msle_uses_eps_of_the_prediction_dtype():
    ŷ, y = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0])
    ε = torch.finfo(torch.float32).eps
    expected = (math.log(ε / (1 + ε)) ** 2 + 0.0) / 2
    close(L.msle(ŷ, y), expected, tol=1e-5)
    close(L.msle(ŷ, y, eps=0.5), (math.log(0.5 / 1.5) ** 2) / 2)


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_loss_matches_torch(regression, delta):
    ŷ, y = regression
    close(L.huber_loss(ŷ, y, delta=delta), F.huber_loss(ŷ, y, delta=delta))
    close(
        L.huber_loss(ŷ, y, delta=delta, agg=sum), F.huber_loss(ŷ, y, delta=delta, reduction="sum")
    )
    # smooth_l1 with beta=1 is huber with delta=1
    if delta == 1.0:
        close(L.huber_loss(ŷ, y), F.smooth_l1_loss(ŷ, y))


def test_poisson_loss_matches_torch_and_flux():
    g = torch.Generator().manual_seed(2)
    ŷ = torch.rand(6, 4, generator=g, dtype=torch.float64) + 0.1
    y = torch.poisson(torch.full((6, 4), 3.0, dtype=torch.float64), generator=g)
    ref = F.poisson_nll_loss(ŷ, y, log_input=False, full=False, eps=0.0)
    close(L.poisson_loss(ŷ, y), ref)
    close(
        L.poisson_loss(ŷ, y, agg="sum"),
        F.poisson_nll_loss(ŷ, y, log_input=False, eps=0.0, reduction="sum"),
    )
    # Flux test vectors
    y1 = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    close(
        L.poisson_loss(torch.tensor([[0.4, 0.5, 0.6]], dtype=torch.float64), y1), 0.6278353988097339
    )
    close(L.poisson_loss(y1, y1), 0.5044459776946685)


def test_hinge_and_squared_hinge_by_hand():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    ŷ = torch.tensor([5.0, 6.0, 7.0, 8.0], dtype=torch.float64)
    close(L.hinge_loss(ŷ, y), 0.0)
    close(L.hinge_loss(y, 0.5 * y), 0.125)  # max(0, 1 - 0.5 y²) = [.5, 0, 0, 0]
    close(L.squared_hinge_loss(ŷ, y), 0.0)
    close(L.squared_hinge_loss(y, 0.5 * y), 0.0625)
    ŷ, y = torch.tensor([0.3, -0.2, 2.0]), torch.tensor([1.0, 1.0, -1.0])
    close(L.hinge_loss(ŷ, y, agg=sum), 0.7 + 1.2 + 3.0)
    close(L.squared_hinge_loss(ŷ, y, agg=sum), 0.49 + 1.44 + 9.0, tol=1e-5)


# ---- classification losses --------------------------------------------------------------------


@pytest.fixture
def logits_and_labels():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (7,), generator=g)
    soft = torch.softmax(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1)
    return logits, labels, soft


def test_logitcrossentropy_matches_torch_cross_entropy(logits_and_labels):
    logits, labels, soft = logits_and_labels
    onehot = ft.onehot(labels, 4, dtype=torch.float64)
    close(L.logitcrossentropy(logits, onehot), F.cross_entropy(logits, labels))
    close(L.logitcrossentropy(logits, labels), F.cross_entropy(logits, labels))
    close(L.logitcrossentropy(logits, soft), F.cross_entropy(logits, soft))
    close(
        L.logitcrossentropy(logits, soft, agg=torch.sum),
        F.cross_entropy(logits, soft, reduction="sum"),
    )
    close(
        L.logitcrossentropy(logits, soft, agg="none"),
        F.cross_entropy(logits, soft, reduction="none"),
    )


def test_crossentropy_on_probabilities_matches_torch(logits_and_labels):
    logits, labels, soft = logits_and_labels
    probs = torch.softmax(logits, dim=1)
    close(L.crossentropy(probs, soft, eps=0), F.cross_entropy(logits, soft))
    close(L.crossentropy(probs, labels, eps=0), F.nll_loss(torch.log(probs), labels))
    # default eps: machine epsilon of float64, inside the log
    by_hand = -(soft * torch.log(probs + torch.finfo(torch.float64).eps)).sum(1).mean()
    close(L.crossentropy(probs, soft), by_hand)


def test_label_smoothing_matches_torch_cross_entropy_option(logits_and_labels):
    logits, labels, _ = logits_and_labels
    smoothed = L.label_smoothing(ft.onehot(labels, 4, dtype=torch.float64), 0.1)
    close(
        L.logitcrossentropy(logits, smoothed), F.cross_entropy(logits, labels, label_smoothing=0.1)
    )


def test_label_smoothing_formula_and_flux_vectors():
    y = ft.onehot(torch.tensor([1]), 2, dtype=torch.float64)  # [[0, 1]]
    close(L.label_smoothing(y, 0.2), [[0.1, 0.9]])
    close(L.label_smoothing(torch.tensor([1.0, 0.0]), 0.2, dims=0), [0.9, 0.1])
    y3 = ft.onehot(torch.tensor([0, 2]), 3, dtype=torch.float64)
    close(L.label_smoothing(y3, 0.3), y3 * 0.7 + 0.1)
    # classes along another dimension: C is that dimension's size
    spatial = ft.onehot(torch.tensor([[0, 1, 1, 1]]), 2, dtype=torch.float64)  # (1, 2, 4)
    close(L.label_smoothing(spatial, 0.4, dims=-1), spatial * 0.6 + 0.1)
    close(L.label_smoothing(spatial, 0.4), spatial * 0.6 + 0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        L.label_smoothing(y, 1.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        L.label_smoothing(y, 0.0)
    with pytest.raises(ValueError, match="dims=0 for binary"):
        L.label_smoothing(torch.tensor([0.0, 1.0]), 0.1)


def test_flux_crossentropy_vectors_transposed_to_batch_first():
    # Flux: y = onehotbatch([1, 1, 0, 0], 0:1), ŷ = [.1 .9; .9 .1; .9 .1; .1 .9]'
    y = ft.onehot(torch.tensor([1, 1, 0, 0]), 2, dtype=torch.float64)
    ŷ = torch.tensor([[0.1, 0.9], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]], dtype=torch.float64)
    close(L.crossentropy(ŷ, y), 1.203972804325936)
    close(L.crossentropy(ŷ, L.label_smoothing(y, 0.1)), 1.2039728043259348)
    v = math.log(0.1 / 0.9)
    logŷ = torch.tensor([[v, 0.0], [0.0, v], [0.0, v], [v, 0.0]], dtype=torch.float64)
    close(L.logitcrossentropy(logŷ, y), 1.203972804325936)
    ya = ft.onehot(torch.tensor([1, 1, 1, 0, 0]), 2)
    assert L.crossentropy(ya, ya, eps=0) == 0


def test_crossentropy_agg_sum_is_batch_times_mean():
    ŷ = torch.softmax(torch.arange(-7.0, 8.0, dtype=torch.float64).reshape(5, 3), dim=1)
    y = ft.onehot(torch.tensor([0, 1, 2, 1, 0]), 3, dtype=torch.float64)
    close(L.crossentropy(ŷ, y), 1.6076053, tol=1e-6)
    close(L.crossentropy(ŷ, y, agg=sum), 5 * L.crossentropy(ŷ, y))


def test_class_dims_other_than_one_match_torch_on_spatial_data():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)  # (N, C, L)
    target = torch.randint(0, 5, (3, 6), generator=g)
    close(L.logitcrossentropy(logits, target), F.cross_entropy(logits, target))
    # classes last (N, L, C) with dims=-1 or dims=2
    last = logits.movedim(1, -1).contiguous()
    close(L.logitcrossentropy(last, target, dims=-1), F.cross_entropy(logits, target))
    close(L.logitcrossentropy(last, target, dims=2), F.cross_entropy(logits, target))
    # a single distribution: dims=0
    p, q = torch.tensor([0.2, 0.8]), torch.tensor([0.0, 1.0])
    close(L.crossentropy(p, q, dims=0, eps=0), -math.log(0.8))


def test_class_dims_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="dims=1 is out of range"):
        L.crossentropy(torch.tensor([0.2, 0.8]), torch.tensor([0.0, 1.0]))


def test_binarycrossentropy_matches_torch():
    g = torch.Generator().manual_seed(5)
    p = torch.rand(10, 3, generator=g, dtype=torch.float64) * 0.98 + 0.01
    y = torch.rand(10, 3, generator=g, dtype=torch.float64)
    close(L.binarycrossentropy(p, y, eps=0), F.binary_cross_entropy(p, y))
    close(L.binarycrossentropy(p, y, eps=0, agg=sum), F.binary_cross_entropy(p, y, reduction="sum"))
    ε = torch.finfo(torch.float64).eps
    by_hand = (-y * torch.log(p + ε) - (1 - y) * torch.log(1 - p + ε)).mean()
    close(L.binarycrossentropy(p, y), by_hand)
    # Flux: constant label
    pp = torch.tensor([0.1, 0.2, 0.9], dtype=torch.float64)
    close(L.binarycrossentropy(pp, 1), -torch.log(pp).mean())


def test_binarycrossentropy_with_hard_labels_is_finite_at_the_edges():
    # xlogy: 0 * log(0) terms vanish instead of giving NaN
    out = L.binarycrossentropy(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(out) and out.item() < 1e-6


def test_logitbinarycrossentropy_matches_torch_and_label_smoothing():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(9, generator=g, dtype=torch.float64) * 3
    y = torch.rand(9, generator=g, dtype=torch.float64)
    close(L.logitbinarycrossentropy(z, y), F.binary_cross_entropy_with_logits(z, y))
    close(
        L.logitbinarycrossentropy(z, y, agg="none"),
        F.binary_cross_entropy_with_logits(z, y, reduction="none"),
    )
    ys = L.label_smoothing(y, 0.2, dims=0)
    close(L.logitbinarycrossentropy(z, ys), F.binary_cross_entropy_with_logits(z, y * 0.8 + 0.1))
    close(L.logitbinarycrossentropy(z, y), L.binarycrossentropy(torch.sigmoid(z), y, eps=0))


def test_kldivergence_matches_torch_kl_div():
    g = torch.Generator().manual_seed(7)
    p = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    q = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    ref = F.kl_div(torch.log(q), p, reduction="batchmean")
    close(L.kldivergence(q, p, eps=0), ref)
    close(L.kldivergence(q, p, eps=0, agg=sum), F.kl_div(torch.log(q), p, reduction="sum"))
    # Flux: kldivergence(p2, p1) == log(2), agg=sum gives 2 log 2; of a distribution with itself 0
    p1 = torch.eye(2, dtype=torch.float64)
    p2 = torch.full((2, 2), 0.5, dtype=torch.float64)
    close(L.kldivergence(p2, p1), math.log(2))
    close(L.kldivergence(p2, p1, agg=sum), 2 * math.log(2))
    close(L.kldivergence(p2, p2, eps=0), 0.0)
    assert math.isinf(L.kldivergence(p1, p2, eps=0).item())


def test_dice_and_tversky_match_flux_vectors():
    y = torch.tensor([[1.0, 0.5, 0.3, 2.4]], dtype=torch.float64)
    ŷ = torch.tensor([[0.0, 1.4, 0.5, 1.2]], dtype=torch.float64)
    close(L.dice_coeff_loss(ŷ, y), 0.2799999999999999)
    close(L.dice_coeff_loss(y, y), 0.0)
    close(L.tversky_loss(ŷ, y), -0.06772009029345383)
    close(L.tversky_loss(ŷ, y, beta=0.8), -0.09490740740740744)
    close(L.tversky_loss(y, y), -0.5576923076923075)


def test_dice_with_agg_gives_per_sample_losses():
    ŷ = torch.tensor([[0.9, 0.1], [0.2, 0.7]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    per = [1 - (2 * 0.9 + 1) / (1 + 0.82 + 1), 1 - (2 * 0.7 + 1) / (1 + 0.53 + 1)]
    close(L.dice_coeff_loss(ŷ, y, agg="none"), per)
    close(L.dice_coeff_loss(ŷ, y, agg=torch.mean), sum(per) / 2)


def test_focal_losses_match_flux_vectors_and_reduce_to_crossentropy():
    # Flux: ŷ = [0.268941 0.5 0.268941; 0.731059 0.5 0.731059], y = [0 1 0; 1 0 1] (transposed)
    ŷ = torch.tensor([[0.268941, 0.731059], [0.5, 0.5], [0.268941, 0.731059]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    close(L.binary_focal_loss(ŷ, y), 0.0728675615927385)
    ŷ1 = torch.tensor([[0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    close(L.binary_focal_loss(ŷ1, torch.eye(2, dtype=torch.float64)), 0.05691642237852222)
    close(L.binary_focal_loss(ŷ, y, gamma=0.0), L.binarycrossentropy(ŷ, y))

    probs = torch.softmax(torch.arange(-7.0, 8.0, dtype=torch.float64).reshape(5, 3), dim=1)
    hot = ft.onehot(torch.tensor([0, 1, 2, 1, 0]), 3, dtype=torch.float64)
    close(L.focal_loss(probs, hot), 1.1277571935622628, tol=1e-6)
    ŷ2 = torch.tensor([[0.4, 0.5, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
    y2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    close(L.focal_loss(ŷ2, y2), 0.45990566879720157)
    close(L.focal_loss(probs, hot, gamma=0), L.crossentropy(probs, hot))


def test_siamese_contrastive_loss_matches_flux_vectors():
    ŷ = torch.tensor([[0.4, 0.5, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    close(L.siamese_contrastive_loss(ŷ, y), 0.2333333333333333)
    close(L.siamese_contrastive_loss(ŷ, y, margin=0.5), 0.10000000000000002)
    close(L.siamese_contrastive_loss(ŷ, y, margin=1.5), 0.5333333333333333)
    close(L.siamese_contrastive_loss(ŷ, y, margin=0), 0.09166666666666667)
    ŷ2 = torch.tensor([0.6, 0.4, 0.1, 0.2, 0.7], dtype=torch.float64)
    close(L.siamese_contrastive_loss(ŷ2, torch.tensor([1.0, 0, 0, 1, 1])), 0.21200000000000005)
    close(L.siamese_contrastive_loss(ŷ2, ŷ2), 0.18800000000000003)
    with pytest.raises(ValueError, match="margin must be non-negative"):
        L.siamese_contrastive_loss(ŷ, y, margin=-0.5)


# ---- shape checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [
        L.mae, L.mse, L.msle, L.huber_loss, L.crossentropy, L.logitcrossentropy,
        L.binarycrossentropy, L.logitbinarycrossentropy, L.kldivergence, L.poisson_loss,
        L.hinge_loss, L.squared_hinge_loss, L.dice_coeff_loss, L.tversky_loss,
        L.binary_focal_loss, L.focal_loss, L.siamese_contrastive_loss,
    ],
)  # fmt: skip
def test_mismatched_shapes_raise_naming_both_shapes(loss):
    ŷ = torch.rand(4, 1)
    y = torch.rand(4)
    with pytest.raises(ValueError, match=r"ŷ\.shape = \(4, 1\) to match y\.shape = \(4,\)"):
        loss(ŷ, y)


def test_shape_error_names_the_loss():
    with pytest.raises(ValueError, match=r"^mse expects"):
        L.mse(torch.rand(3, 2), torch.rand(2, 3))


def test_losses_are_differentiable_and_keep_float32():
    ŷ = torch.rand(4, 3, requires_grad=True)
    y = ft.onehot(torch.tensor([0, 1, 2, 0]), 3)
    for loss in (L.mse, L.crossentropy, L.logitcrossentropy, L.focal_loss, L.kldivergence):
        out = loss(ŷ, y)
        assert out.dtype == torch.float32 and out.dim() == 0
        (g,) = torch.autograd.grad(out, ŷ)
        assert torch.isfinite(g).all()


def test_ft_gradient_through_a_loss_matches_the_formula():
    ŷ = torch.tensor([1.0, 2.0, 4.0])
    (g,) = ft.gradient(lambda p: L.mse(p, torch.zeros(3)), ŷ)
    close(g, 2 * ŷ / 3)


# ---- CTC --------------------------------------------------------------------------------------


def torch_ctc(scores, targets, in_len, tgt_len, blank):
    """Reference: F.ctc_loss wants (T, N, C) log-probabilities, per sequence losses."""
    logp = torch.log_softmax(scores, dim=1).permute(2, 0, 1)
    return F.ctc_loss(logp, targets, in_len, tgt_len, blank=blank, reduction="none")


def test_ctc_loss_single_sequence_matches_torch_and_hand_value():
    scores = torch.zeros(3, 2, dtype=torch.float64)
    # uniform over 3 classes, 2 steps, label [0]: alignments "0-", "-0", "00" -> 3/9
    close(L.ctc_loss(scores, [0]), -math.log(3 / 9))
    g = torch.Generator().manual_seed(8)
    s = torch.randn(5, 12, generator=g, dtype=torch.float64)
    label = torch.tensor([1, 3, 3, 0])
    ref = torch_ctc(s[None], label[None], torch.tensor([12]), torch.tensor([4]), blank=4)
    close(L.ctc_loss(s, label), ref[0])


def test_ctc_loss_batch_with_lengths_matches_torch_values_and_gradients():
    g = torch.Generator().manual_seed(9)
    n, c, t = 4, 6, 15
    scores = torch.randn(n, c, t, generator=g, dtype=torch.float64, requires_grad=True)
    seqs = [[0, 1, 1, 2], [3], [4, 4, 0, 2, 1, 3], []]
    in_len = torch.tensor([15, 9, 15, 4])
    tgt_len = torch.tensor([len(s) for s in seqs])
    padded = torch.zeros(n, 6, dtype=torch.long)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    ref = torch_ctc(scores, padded, in_len, tgt_len, blank=5)
    ours = L.ctc_loss(scores, seqs, in_len, agg="none")
    close(ours, ref)
    close(L.ctc_loss(scores, padded, in_len, tgt_len), ref.mean())
    close(L.ctc_loss(scores, seqs, in_len, agg=sum), ref.sum())
    (g_ours,) = torch.autograd.grad(L.ctc_loss(scores, seqs, in_len, agg=sum), scores)
    (g_ref,) = torch.autograd.grad(ref.sum(), scores)
    close(g_ours, g_ref)


def test_ctc_loss_with_blank_zero_matches_torch_default():
    g = torch.Generator().manual_seed(10)
    scores = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    targets = torch.tensor([[1, 2, 3], [3, 3, 1]])
    ref = torch_ctc(scores, targets, torch.tensor([7, 7]), torch.tensor([3, 3]), blank=0)
    close(L.ctc_loss(scores, targets, blank=0, agg="none"), ref)


def test_ctc_loss_impossible_alignment_is_inf_with_finite_gradient():
    scores = torch.zeros(3, 2, requires_grad=True)
    out = L.ctc_loss(scores, [0, 0])  # needs "0 - 0": 3 steps, only 2 given
    assert math.isinf(out.item())
    (g,) = torch.autograd.grad(out, scores)
    assert not torch.isnan(g).any()


def test_ctc_loss_rejects_blank_labels_and_bad_shapes():
    with pytest.raises(ValueError, match="blank class 2"):
        L.ctc_loss(torch.zeros(3, 4), [2])
    with pytest.raises(ValueError, match=r"class indices in 0\.\.2"):
        L.ctc_loss(torch.zeros(3, 4), [5])
    with pytest.raises(ValueError, match=r"\(C, T\) or \(N, C, T\)"):
        L.ctc_loss(torch.zeros(3), [0])
