"""onehot / onecold: Flux's OneHotArrays with the class dimension just after the batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fluxtrain as ft


def test_onehot_of_integer_labels_matches_torch_one_hot():
    labels = torch.tensor([3, 0, 2, 2, 1])
    assert torch.equal(ft.onehot(labels, 4), F.one_hot(labels, 4).float())
    assert ft.onehot(labels, 4).dtype == torch.float32
    assert ft.onehot(labels, 4, dtype=torch.int64).dtype == torch.int64


def test_onehot_puts_classes_at_dimension_one_for_spatial_labels():
    labels = torch.tensor([[0, 2, 1], [1, 1, 0]])  # (N, L)
    out = ft.onehot(labels, 3)
    assert out.shape == (2, 3, 3)
    assert torch.equal(out, F.one_hot(labels, 3).float().permute(0, 2, 1))


def test_onehot_of_one_label_is_a_vector():
    assert torch.equal(ft.onehot(2, 4), torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_onehot_with_class_values_like_flux_onehotbatch():
    # Flux: onehotbatch([1, 1, 0, 0], 0:1); onehotbatch(collect("abcabaa"), 'a':'c')
    assert torch.equal(
        ft.onehot([1, 1, 0, 0], range(2)), torch.tensor([[0.0, 1], [0, 1], [1, 0], [1, 0]])
    )
    out = ft.onehot("abcabaa", "abc")
    assert out.shape == (7, 3)
    assert ft.onecold(out, "abc") == list("abcabaa")
    assert torch.equal(
        ft.onehot(torch.tensor([10, 30]), [10, 20, 30]), torch.tensor([[1.0, 0, 0], [0, 0, 1]])
    )
    assert torch.equal(
        ft.onehot(np.array(["dog", "cat"]), ["cat", "dog"]), torch.tensor([[0.0, 1], [1, 0]])
    )


def test_onehot_unknown_label_is_an_error_naming_it_or_uses_default():
    with pytest.raises(ValueError, match=r"label 7 at position \(1,\)"):
        ft.onehot(torch.tensor([1, 7]), 5)
    with pytest.raises(ValueError, match="label 'z' at position 2"):
        ft.onehot("abz", "abc")
    assert torch.equal(
        ft.onehot(torch.tensor([1, 7]), 3, default=0), torch.tensor([[0.0, 1, 0], [1, 0, 0]])
    )
    assert torch.equal(ft.onehot("az", "abc", default="c")[1], torch.tensor([0.0, 0, 1]))


def test_onehot_rejects_float_labels_for_a_count():
    with pytest.raises(TypeError, match="integers"):
        ft.onehot(torch.tensor([0.0, 1.0]), 2)


def test_onecold_is_argmax_along_classes_and_inverts_onehot():
    labels = torch.tensor([[0, 2, 1], [1, 1, 0]])
    assert torch.equal(ft.onecold(ft.onehot(labels, 3)), labels)
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    assert torch.equal(ft.onecold(scores), torch.tensor([1, 0]))
    assert torch.equal(ft.onecold(scores, range(10, 13)), torch.tensor([11, 10]))
    assert ft.onecold(torch.tensor([0.2, 0.8])) == 1
    assert ft.onecold(torch.tensor([0.2, 0.8]), ["no", "yes"]) == "yes"
    assert ft.onecold(scores.T, dims=0).tolist() == [1, 0]


def test_onecold_checks_the_number_of_classes():
    with pytest.raises(ValueError, match="3 entries along the class dimension 1 but 2 classes"):
        ft.onecold(torch.rand(4, 3), "ab")
