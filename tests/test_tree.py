"""Trees (Functors.jl for PyTorch): children, trainables, @layer, fmap, Node and KeyPath."""

import dataclasses
import math
import pickle
from collections import namedtuple

import pytest
import torch
from torch import nn

import fluxtrain as ft
from fluxtrain.tree import Node, children, trainable_children


@dataclasses.dataclass
class Pair:
    left: object
    right: object = None


Point = namedtuple("Point", ["x", "y"])


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 2)
        self.dec = nn.Linear(2, 3, bias=False)
        self.register_buffer("count", torch.zeros(1))
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)


def _paths(model) -> list[str]:
    return [str(p) for p, _ in ft.trainables(model, path=True)]


# --- children -------------------------------------------------------------------------------


def test_children_of_module_lists_parameters_buffers_then_submodules():
    ch = children(Block())
    assert list(ch) == ["frozen", "count", "enc", "dec"]


def test_children_of_containers_use_their_own_keys():
    assert list(children([1, 2])) == [0, 1]
    assert list(children((1, 2, 3))) == [0, 1, 2]
    assert children({"b": 1, "a": 2}) == {"b": 1, "a": 2}
    assert children(Point(1, 2)) == {"x": 1, "y": 2}
    assert children(Pair(1, 2)) == {"left": 1, "right": 2}
    assert children(torch.ones(2)) is None
    assert children("text") is None and children(math.sin) is None and children(3) is None


def test_trainable_children_of_module_hide_buffers_and_frozen_parameters():
    ch = trainable_children(Block())
    assert ch["count"] is None and ch["frozen"] is None
    assert isinstance(ch["enc"], nn.Linear)


# --- trainables -----------------------------------------------------------------------------


def test_trainables_of_nested_containers_in_tree_order():
    model = {
        "t": (torch.ones(1), "name", 3, math.sin),
        "p": Pair(torch.ones(2), [torch.ones(3)]),
        "n": Point(x=torch.ones(4), y=torch.arange(3)),  # integer tensors are not trainable
    }
    assert _paths(model) == ["t.0", "p.left", "p.right.0", "n.x"]
    assert [t.shape[0] for t in ft.trainables(model)] == [1, 2, 3, 4]


def test_trainables_of_sequential():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert _paths(seq) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(a is b for a, b in zip(ft.trainables(seq), seq.parameters()))


def test_trainables_of_custom_module_skip_buffers_and_frozen_parameters():
    assert _paths(Block()) == ["enc.weight", "enc.bias", "dec.weight"]


def test_trainables_of_batchnorm_exclude_running_statistics():
    bn = nn.BatchNorm1d(4)
    assert _paths(bn) == ["weight", "bias"]


def test_tied_tensor_is_one_trainable_reported_at_first_path():
    shared = torch.ones(2)
    model = {"a": shared, "b": [shared, torch.zeros(2)]}
    found = ft.trainables(model, path=True)
    assert [str(p) for p, _ in found] == ["a", "b.1"]
    assert found[0][1] is shared


def test_tied_module_weights_are_one_trainable():
    enc, dec = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    dec.weight = enc.weight
    model = nn.Sequential(enc, dec)
    assert _paths(model) == ["0.weight"]


def test_trainables_without_path_returns_plain_tensors():
    out = ft.trainables({"a": torch.ones(1)})
    assert isinstance(out, list) and isinstance(out[0], torch.Tensor)


def test_keypath_prints_dotted_and_root():
    assert str(ft.KeyPath(("layers", 0, "weight"))) == "layers.0.weight"
    assert str(ft.KeyPath()) == "<root>"
    assert ft.KeyPath(("a",)) + ("b",) == ft.KeyPath(("a", "b"))


# --- @layer ---------------------------------------------------------------------------------


@ft.layer(trainable=("weight",))
class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.shift = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x * self.weight + self.shift


def test_layer_decorator_narrows_trainables():
    assert _paths(Scale()) == ["weight"]
    assert _paths({"s": Scale(), "w": torch.ones(1)}) == ["s.weight", "w"]


def test_layer_decorator_gives_no_leaf_and_no_update_to_untrainable_child():
    m = Scale()
    st = ft.setup(ft.Descent(0.5), m)
    assert st.shift is None and isinstance(st.weight, ft.Leaf)
    ft.update_(st, m, {"weight": torch.ones(2), "shift": torch.ones(2)})
    assert torch.equal(m.weight.detach(), torch.full((2,), 0.5))
    assert torch.equal(m.shift.detach(), torch.zeros(2))


def test_layer_decorator_on_dataclass():
    @ft.layer(trainable=("a",))
    @dataclasses.dataclass
    class Two:
        a: torch.Tensor
        b: torch.Tensor

    assert _paths(Two(torch.ones(1), torch.ones(1))) == ["a"]


def test_layer_decorator_without_arguments_changes_nothing():
    @ft.layer
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

    assert _paths(Plain()) == ["w"]


# --- fmap -----------------------------------------------------------------------------------


def test_fmap_applies_to_tensor_leaves_and_keeps_other_leaves():
    model = {"a": torch.ones(2), "f": math.sin, "n": 3, "s": (torch.zeros(1), "x")}
    out = ft.fmap(lambda t: t + 1, model)
    assert torch.equal(out["a"], torch.full((2,), 2.0))
    assert torch.equal(out["s"][0], torch.ones(1))
    assert out["f"] is math.sin and out["n"] == 3 and out["s"][1] == "x"
    assert isinstance(out["s"], tuple)
    assert torch.equal(model["a"], torch.ones(2))  # the original is not changed


def test_fmap_rebuilds_namedtuples_and_dataclasses_as_their_type():
    model = Point(x=torch.ones(1), y=Pair(torch.ones(1)))
    out = ft.fmap(lambda t: t * 3, model)
    assert type(out) is Point and type(out.y) is Pair
    assert out.y.left.item() == 3.0 and out.y.right is None
    assert model.y.left.item() == 1.0


def test_fmap_keeps_ties():
    shared = torch.ones(2)
    calls = []

    def f(t):
        calls.append(t)
        return t * 2

    out = ft.fmap(f, {"a": shared, "b": [shared]})
    assert out["a"] is out["b"][0]
    assert len(calls) == 1


def test_fmap_keeps_tied_module_weights_as_one_parameter():
    enc, dec = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    dec.weight = enc.weight
    out = ft.fmap(lambda t: t.double(), nn.Sequential(enc, dec))
    assert out[0].weight is out[1].weight
    assert isinstance(out[0].weight, nn.Parameter) and out[0].weight.dtype == torch.float64
    assert ft.trainables(out) == [out[0].weight]


def test_fmap_keeps_a_shared_submodule_as_one_module():
    block = nn.Linear(2, 2)
    out = ft.fmap(lambda t: t.double(), nn.Sequential(block, nn.ReLU(), block))
    assert out[0] is out[2]
    assert out[0] is not block and block.weight.dtype == torch.float32


def test_fmap_on_module_returns_new_module_and_leaves_original():
    lin = nn.Linear(2, 2)
    out = ft.fmap(lambda t: torch.zeros_like(t), lin)
    assert isinstance(out, nn.Linear) and out is not lin
    assert torch.equal(out.weight, torch.zeros(2, 2))
    assert not torch.equal(lin.weight, torch.zeros(2, 2))
    assert torch.equal(out(torch.ones(1, 2)), torch.zeros(1, 2))


def test_fmap_walks_parallel_trees_with_none_branches():
    model = {"a": torch.ones(2), "b": {"c": torch.ones(1)}}
    other = {"a": torch.full((2,), 5.0), "b": None}
    out = ft.fmap(lambda x, y: x if y is None else x + y, model, other)
    assert torch.equal(out["a"], torch.full((2,), 6.0))
    assert torch.equal(out["b"]["c"], torch.ones(1))


# --- Node -----------------------------------------------------------------------------------


def test_node_attribute_and_index_access_mirror_the_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 1)])

    st = ft.setup(ft.Adam(), Net())
    assert isinstance(st.layers[0].weight, ft.Leaf)
    assert st.layers[1] is st["layers"]["1"]
    assert st.layers[0] is getattr(st.layers, "0")

    g = ft.gradient(lambda m: m["a"].sum(), {"a": torch.ones(2), "b": torch.ones(1)})[0]
    assert torch.equal(g["a"], torch.ones(2)) and torch.equal(g.a, torch.ones(2))
    assert g["b"] is None

    nt = Node("namedtuple", {"x": 1, "y": 2})
    assert nt[0] == 1 and nt.y == 2


def test_node_negative_index_counts_from_the_end():
    seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    st = ft.setup(ft.Descent(), seq)
    assert st[-1] is st[2] and st[-1].weight is st["2"].weight
    assert st[-3] is st[0]
    nt = Node("namedtuple", {"x": 1, "y": 2})
    assert nt[-1] == 2 and nt[-2] == 1
    assert Node("tuple", {0: "a", 1: "b"})[-1] == "b"
    with pytest.raises(KeyError):
        _ = st[-4]


def test_node_missing_child_errors_name_what_exists():
    n = Node("dict", {"a": 1})
    with pytest.raises(AttributeError, match="'a'"):
        _ = n.zzz
    with pytest.raises(KeyError, match="'a'"):
        _ = n["zzz"]


def test_node_is_read_only():
    n = Node("dict", {"a": 1})
    with pytest.raises(AttributeError, match="read-only"):
        n.a = 2


def test_node_iterates_like_its_container():
    assert list(Node("dict", {"a": 1, "b": 2})) == ["a", "b"]
    first, second = Node("tuple", {0: "x", 1: "y"})
    assert (first, second) == ("x", "y")
    assert len(Node("list", {0: 1})) == 1 and 0 in Node("list", {0: 1})


def test_node_equality_compares_tensors_by_value():
    a = Node("dict", {"w": torch.ones(2), "n": None})
    b = Node("dict", {"w": torch.ones(2), "n": None})
    c = Node("dict", {"w": torch.zeros(2), "n": None})
    assert a == b and a != c
    assert Node("tuple", {0: 1}) != Node("list", {0: 1})


def test_node_repr_reads_like_the_container():
    assert repr(Node("dict", {"a": 1})) == "{'a': 1}"
    assert repr(Node("tuple", {0: 1})) == "(1,)"
    assert repr(Node("list", {0: 1, 1: None})) == "[1, None]"
    assert repr(Node("module", {"weight": 1.5})) == "(weight=1.5)"


def test_node_pickles():
    n = Node("dict", {"a": torch.ones(1), "b": Node("tuple", {0: None})})
    assert pickle.loads(pickle.dumps(n)) == n
