"""Flux-style reprs of layers and models, and ft.summary's counts."""

import operator

import torch
from torch import nn

import fluxtrain as ft


def test_dense_repr_reads_like_flux():
    assert repr(ft.Dense(784, 32, ft.σ)) == "Dense(784 => 32, σ)  # 25_120 parameters"
    assert repr(ft.Dense(2, 3)) == "Dense(2 => 3)       # 9 parameters"


def test_chain_repr_lists_layers_indented_with_counts_and_a_total():
    m = ft.Chain(ft.Dense(784, 32, ft.σ), ft.Dense(32, 10), ft.softmax)
    assert repr(m) == (
        "Chain(\n"
        "  Dense(784 => 32, σ),                  # 25_120 parameters\n"
        "  Dense(32 => 10),                      # 330 parameters\n"
        "  softmax,\n"
        ")                   # Total: 4 arrays, 25_450 parameters, 99.414 KiB."
    )


def test_named_chain_repr_shows_names_and_non_trainable_totals():
    m = ft.Chain(enc=ft.Chain(ft.Dense(2, 3), ft.BatchNorm(3)), dec=ft.Dense(3, 2))
    assert repr(m) == (
        "Chain(\n"
        "  enc = Chain(\n"
        "    Dense(2 => 3),                      # 9 parameters\n"
        "    BatchNorm(3),                       # 6 parameters, plus 6\n"
        "  ),\n"
        "  dec = Dense(3 => 2),                  # 8 parameters\n"
        ")         # Total: 6 trainable arrays, 23 parameters,\n"
        "          # plus 2 non-trainable, 6 parameters, 116 bytes."
    )


def test_small_chain_has_no_total_line_like_flux():
    assert repr(ft.Chain(ft.Dense(2, 3), ft.relu)) == (
        "Chain(\n  Dense(2 => 3),                        # 9 parameters\n  relu,\n)"
    )


def test_one_line_forms_of_layers():
    cases = {
        ft.Conv((3, 3), (1, 16), ft.relu, pad=1, stride=2): (
            "Conv((3, 3), 1 => 16, relu, pad=1, stride=2)"
        ),
        ft.Conv((3, 3), (4, 8), dilation=2, groups=2, bias=False): (
            "Conv((3, 3), 4 => 8, dilation=2, groups=2, bias=False)"
        ),
        ft.Conv((3, 3), (1, 1), pad=(1, 0, 2, 2)): "Conv((3, 3), 1 => 1, pad=(1, 0, 2, 2))",
        ft.ConvTranspose((2, 2), (4, 1), stride=2): "ConvTranspose((2, 2), 4 => 1, stride=2)",
        ft.MaxPool((2, 2)): "MaxPool((2, 2))",
        ft.MeanPool((3, 3), pad=1, stride=2): "MeanPool((3, 3), pad=1, stride=2)",
        ft.AdaptiveMeanPool((5, 5)): "AdaptiveMeanPool((5, 5))",
        ft.GlobalMeanPool(): "GlobalMeanPool()",
        ft.Dropout(0.5): "Dropout(0.5)",
        ft.AlphaDropout(0.2): "AlphaDropout(0.2)",
        ft.BatchNorm(64, ft.relu): "BatchNorm(64, relu)",
        ft.BatchNorm(3, affine=False): "BatchNorm(3, affine=False)",
        ft.LayerNorm(5, ft.relu): "LayerNorm(5, relu)",
        ft.GroupNorm(4, 2): "GroupNorm(4, 2)",
        ft.InstanceNorm(3): "InstanceNorm(3, affine=False)",
        ft.Embedding(26, 5): "Embedding(26 => 5)",
        ft.SkipConnection(ft.Dense(3, 3), operator.add): "SkipConnection(Dense(3 => 3), +)",
        ft.Chain(ft.Dense(2, 3), ft.relu): "Chain(Dense(2 => 3), relu)",
    }
    for layer, line in cases.items():
        assert layer._flux_line() == line


def test_containers_expand_functions_and_plain_torch_modules():
    s = ft.SkipConnection(ft.Dense(3, 3), operator.add)
    assert repr(s) == (
        "SkipConnection(\n  Dense(3 => 3),                        # 12 parameters\n  +,\n)"
    )
    p = ft.Parallel(None, a=ft.Dense(2, 3), b=nn.Linear(2, 3))
    assert repr(p) == (
        "Parallel(\n"
        "  None,\n"
        "  a = Dense(2 => 3),                    # 9 parameters\n"
        "  b = Linear(in_features=2, out_features=3, bias=True),  # 9 parameters\n"
        ")                   # Total: 4 arrays, 18 parameters, 72 bytes."
    )


def test_repr_flags_all_zero_parameters():
    assert repr(ft.Dense(2, 3, init=ft.zeros32)).endswith("# 9 parameters  (all zero)")


def test_summary_counts_trainable_and_non_trainable():
    s = ft.summary(ft.Chain(ft.Dense(2, 3), ft.BatchNorm(3)))
    assert (s.trainable_arrays, s.trainable_params) == (4, 15)
    assert (s.nontrainable_arrays, s.nontrainable_params) == (2, 6)
    assert s.nbytes == 4 * 21
    assert str(s).endswith(
        "# Total: 4 trainable arrays, 15 parameters,\n"
        "          # plus 2 non-trainable, 6 parameters, 84 bytes."
    )


def test_summary_of_a_single_layer_and_of_a_plain_tree():
    s = ft.summary(ft.BatchNorm(2))
    assert (s.trainable_arrays, s.trainable_params, s.nontrainable_arrays) == (2, 4, 2)
    assert str(s).startswith("BatchNorm(2)        # 4 parameters, plus 4 non-trainable\n")
    tree = {"w": torch.ones(3, 2), "labels": torch.arange(5), "f": len}
    t = ft.summary(tree)
    assert (t.trainable_arrays, t.trainable_params) == (1, 6)
    assert (t.nontrainable_arrays, t.nontrainable_params) == (1, 5)


def test_summary_counts_frozen_parameters_as_non_trainable_and_ties_once():
    a = ft.Dense(3, 3)
    b = ft.Dense(3, 3)
    b.weight = a.weight
    b.bias.requires_grad_(False)
    s = ft.summary(ft.Chain(a, b))
    assert (s.trainable_arrays, s.trainable_params) == (2, 12)
    assert (s.nontrainable_arrays, s.nontrainable_params) == (1, 3)
