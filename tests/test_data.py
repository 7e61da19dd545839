"""DataLoader: batch-first batches, shuffling with its own rng, partial batches, datasets of
samples, prefetch, exact resume (state_dict) and distributed sharding with fake ranks."""

import collections
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fluxtrain as ft
from fluxtrain import DataLoader


def test_batches_are_batch_first_slices_in_order():
    X = torch.arange(10 * 3).reshape(10, 3)
    Y = torch.arange(10)
    batches = list(DataLoader((X, Y), batchsize=4))
    assert len(batches) == 3
    assert [x.shape for x, _ in batches] == [(4, 3), (4, 3), (2, 3)]
    assert torch.equal(torch.cat([x for x, _ in batches]), X)
    assert torch.equal(torch.cat([y for _, y in batches]), Y)


def test_unshuffled_batches_are_views_of_the_data():
    X = torch.rand(8, 2)
    x = next(iter(DataLoader(X, batchsize=4)))
    assert x.data_ptr() == X.data_ptr()


def test_len_counts_batches_and_partial_false_drops_the_short_batch():
    X = torch.rand(10, 2)
    assert len(DataLoader(X, batchsize=4)) == 3
    assert len(DataLoader(X, batchsize=4, partial=False)) == 2
    assert [b.shape[0] for b in DataLoader(X, batchsize=4, partial=False)] == [4, 4]
    assert len(DataLoader(X, batchsize=5, partial=False)) == 2
    assert len(DataLoader(X)) == 10  # batchsize=1 by default, as Flux


def test_shuffle_gives_a_new_permutation_each_epoch_covering_every_observation():
    X = torch.arange(50)
    loader = DataLoader(X, batchsize=7, shuffle=True, rng=3)
    e1 = torch.cat(list(loader))
    e2 = torch.cat(list(loader))
    assert sorted(e1.tolist()) == list(range(50)) == sorted(e2.tolist())
    assert not torch.equal(e1, e2)
    assert not torch.equal(e1, X)


def test_shuffled_tuple_keeps_observations_paired():
    X = torch.arange(40).reshape(20, 2)
    Y = torch.arange(20)
    for x, y in DataLoader((X, Y), batchsize=6, shuffle=True, rng=0):
        assert torch.equal(x, X[y])


def test_same_seed_same_order_and_rng_kinds():
    X = torch.arange(30)
    a = torch.cat(list(DataLoader(X, batchsize=4, shuffle=True, rng=11)))
    b = torch.cat(list(DataLoader(X, batchsize=4, shuffle=True, rng=11)))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(11)
    c = torch.cat(list(DataLoader(X, batchsize=4, shuffle=True, rng=g)))
    assert torch.equal(a, c)
    n1 = torch.cat(list(DataLoader(X, batchsize=4, shuffle=True, rng=np.random.default_rng(5))))
    n2 = torch.cat(list(DataLoader(X, batchsize=4, shuffle=True, rng=np.random.default_rng(5))))
    assert torch.equal(n1, n2) and sorted(n1.tolist()) == list(range(30))


def test_default_rng_follows_torch_manual_seed():
    X = torch.arange(30)
    torch.manual_seed(123)
    a = torch.cat(list(DataLoader(X, batchsize=4, shuffle=True)))
    torch.manual_seed(123)
    b = torch.cat(list(DataLoader(X, batchsize=4, shuffle=True)))
    assert torch.equal(a, b)


def test_shuffled_batch_is_one_index_select_per_tensor(monkeypatch):
    X, Y = torch.rand(12, 3), torch.arange(12)
    calls = []
    real = torch.Tensor.index_select

    def counting(self, dim, index):
        calls.append(index.numel())
        return real(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", counting)
    batches = list(DataLoader((X, Y), batchsize=5, shuffle=True, rng=0))
    assert len(batches) == 3
    # one gather per tensor for a block of batches (all three here), no per-sample work
    assert calls == [12, 12]
    assert [len(x) for x, _ in batches] == [5, 5, 2]
    big = torch.rand(4000, 1000)  # 4 kB rows: blocks of ~128 rows, i.e. several calls
    calls.clear()
    assert len(list(DataLoader(big, batchsize=100, shuffle=True, rng=0))) == 40
    assert 1 < len(calls) <= 40 and sum(calls) == 4000


def test_numpy_arrays_come_out_as_tensors():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    x = next(iter(DataLoader(X, batchsize=3)))
    assert isinstance(x, torch.Tensor) and x.shape == (3, 2)
    ro = X.copy()
    ro.flags.writeable = False
    assert next(iter(DataLoader(ro, batchsize=2))).shape == (2, 2)


def test_dict_and_namedtuple_data_keep_their_structure():
    X, Y = torch.rand(9, 2), torch.arange(9)
    b = next(iter(DataLoader({"x": X, "y": Y}, batchsize=4, shuffle=True, rng=1)))
    assert set(b) == {"x", "y"} and torch.equal(b["x"], X[b["y"]])
    Pair = collections.namedtuple("Pair", "x y")
    b = next(iter(DataLoader(Pair(X, Y), batchsize=4)))
    assert isinstance(b, Pair) and b.x.shape == (4, 2)
    nested = next(iter(DataLoader((X, {"y": Y}), batchsize=2, shuffle=True, rng=2)))
    assert torch.equal(nested[0], X[nested[1]["y"]])


def test_a_list_inside_a_tuple_is_a_source_of_observations():
    X = torch.arange(10).reshape(5, 2)
    names = ["a", "b", "c", "d", "e"]
    x, n = next(iter(DataLoader((X, names), batchsize=3, shuffle=True, rng=0)))
    assert [names.index(v) for v in n] == (x[:, 0] // 2).tolist()
    assert list(DataLoader((X, names), batchsize=2))[2][1] == ["e"]


def test_two_positional_arrays_mean_a_tuple_as_in_old_flux():
    X, Y = torch.rand(7, 2), torch.arange(7)
    x, y = next(iter(DataLoader(X, Y, batchsize=3)))
    assert x.shape == (3, 2) and y.tolist() == [0, 1, 2]


def test_positional_batchsize_is_a_clear_error():
    with pytest.raises(TypeError, match="batchsize=32"):
        DataLoader(torch.rand(4), 32)


def test_mismatched_observation_counts_name_the_items_and_sizes():
    with pytest.raises(ValueError, match=r"data\[0\] has 10, data\[1\] has 9"):
        DataLoader((torch.rand(10, 2), torch.rand(9)))
    with pytest.raises(ValueError, match=r"data\['y'\] has 3"):
        DataLoader({"x": torch.rand(4), "y": torch.rand(3)})
    with pytest.raises(ValueError, match="a collection of samples goes in a list"):
        DataLoader(((torch.rand(3), torch.rand(2)), (torch.rand(3), torch.rand(2))))
    with pytest.raises(ValueError, match="0-d tensor"):
        DataLoader((torch.rand(4), torch.tensor(1.0)))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="batchsize must be at least 1"):
        DataLoader(torch.rand(4), batchsize=0)
    with pytest.raises(TypeError, match="rng must be"):
        DataLoader(torch.rand(4), shuffle=True, rng="seed")
    with pytest.raises(TypeError, match="rng must be"):
        DataLoader(torch.rand(4), shuffle=True, rng=True)
    with pytest.raises(TypeError, match="cannot load batches from generator"):
        DataLoader(x for x in range(3))
    with pytest.raises(ValueError, match="needs 0 <= rank < world_size"):
        DataLoader(torch.rand(4), shard=(2, 2))


def test_list_of_samples_is_collated_by_stacking():
    samples = [(torch.full((2,), float(i)), i) for i in range(5)]
    x, y = next(iter(DataLoader(samples, batchsize=3)))
    assert x.shape == (3, 2) and torch.equal(y, torch.tensor([0, 1, 2]))
    dicts = [{"a": np.ones(2) * i, "name": f"s{i}"} for i in range(4)]
    b = next(iter(DataLoader(dicts, batchsize=2)))
    assert b["a"].shape == (2, 2) and b["name"] == ["s0", "s1"]


def test_collate_false_and_custom_collate():
    samples = [(torch.rand(i + 1), i) for i in range(4)]
    batch = next(iter(DataLoader(samples, batchsize=2, collate=False)))
    assert isinstance(batch, list) and len(batch) == 2 and batch[1][1] == 1
    padded = next(
        iter(
            DataLoader(
                samples,
                batchsize=4,
                collate=lambda s: torch.nn.utils.rnn.pad_sequence([x for x, _ in s], True),
            )
        )
    )
    assert padded.shape == (4, 4)


def test_ragged_samples_error_names_the_dataset_indices_not_batch_positions():
    samples = [torch.rand(2)] * 5 + [torch.rand(3)]
    # Batch 1 holds dataset indices 4 and 5: the message names 4 and 5, not positions 0 and 1.
    with pytest.raises(
        ValueError,
        match=r"stack batch 1: the sample at dataset index 4 has shape \(2,\) but the sample "
        r"at dataset index 5 has \(3,\)",
    ):
        list(DataLoader(samples, batchsize=4))
    with pytest.raises(
        ValueError, match=r"batch 0\[0\]: .*index \d has shape \(2,\).*index 5 has \(3,\)"
    ):
        list(
            DataLoader(
                [(torch.rand(2), 0)] * 5 + [(torch.rand(3), 0)], batchsize=6, shuffle=True, rng=0
            )
        )


def test_a_field_with_mixed_types_is_an_error_naming_the_dataset_index():
    samples = [{"x": torch.rand(2), "label": i} for i in range(4)]
    samples[3]["label"] = "three"
    with pytest.raises(
        TypeError,
        match=r"batch 1\['label'\]: the sample at dataset index 2 has a int .* dataset index 3 "
        r"has a str",
    ):
        list(DataLoader(samples, batchsize=2))
    with pytest.raises(
        TypeError, match=r"batch 0\[1\]: .*index 0 has a Tensor .*index 1 has a NoneType"
    ):
        list(DataLoader([(1, torch.rand(2)), (2, None)], batchsize=2))
    # Samples that all have the same non-numeric type still make a list; mixed numbers a tensor.
    assert next(iter(DataLoader(["a", "b"], batchsize=2))) == ["a", "b"]
    assert next(iter(DataLoader([1, 2.5, np.float32(3)], batchsize=3))).tolist() == [1, 2.5, 3]


def test_getitems_errors_carry_a_note_naming_the_indices_and_batch():
    class Batched:
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return i

        def __getitems__(self, indices):
            if 5 in indices:
                raise OSError("unreadable shard")
            return list(indices)

    with pytest.raises(OSError) as info:
        list(DataLoader(Batched(), batchsize=2))
    assert "samples [4, 5] for batch 2 with Batched.__getitems__" in str(info.value.__notes__)

    class Short(Batched):
        def __getitems__(self, indices):
            return list(indices)[:1]

    with pytest.raises(ValueError, match=r"__getitems__ returned 1 samples for the 2 dataset"):
        list(DataLoader(Short(), batchsize=2))


def test_a_failing_collate_function_gets_a_note_naming_the_indices_and_batch():
    def pad(samples):
        raise RuntimeError("cannot pad")

    with pytest.raises(RuntimeError) as info:
        list(DataLoader([torch.rand(2)] * 5, batchsize=2, collate=pad))
    assert "dataset indices [0, 1] into batch 0 with pad" in str(info.value.__notes__)


def test_huge_rng_seed_is_a_clear_error_and_numpy_generators_take_any_seed():
    with pytest.raises(ValueError, match=r"rng seed 1180591620717411303424 is outside"):
        DataLoader(torch.rand(4), shuffle=True, rng=2**70)
    loader = DataLoader(torch.arange(4), shuffle=True, rng=np.random.default_rng(2**70))
    assert sorted(torch.cat(list(loader)).tolist()) == [0, 1, 2, 3]
    assert len(list(DataLoader(torch.arange(4), shuffle=True, rng=2**64 - 1))) == 4


def test_invalid_rng_is_an_error_even_without_shuffle():
    with pytest.raises(TypeError, match=r"rng must be an int seed.*got str 'seed'"):
        DataLoader(torch.rand(4), rng="seed")
    with pytest.raises(ValueError, match="outside the range"):
        DataLoader(torch.rand(4), rng=-(2**64))
    x = torch.rand(4)
    before = torch.random.get_rng_state()
    DataLoader(x)  # no shuffle: the global generator is not drawn from
    assert torch.equal(before, torch.random.get_rng_state())


def test_a_loader_with_no_batches_warns_at_construction_naming_the_data():
    with pytest.warns(
        UserWarning, match=r"DataLoader over Tensor\[0, 3\] float32 yields no batches"
    ):
        loader = DataLoader(torch.zeros(0, 3), batchsize=4)
    assert list(loader) == []
    with pytest.warns(UserWarning, match="over list of 0 yields no batches"):
        DataLoader([])
    with pytest.warns(UserWarning, match=r"3 observations are fewer than batchsize=4 with partial"):
        DataLoader(torch.rand(3), batchsize=4, partial=False)
    model = torch.nn.Linear(3, 1)
    with pytest.warns(UserWarning, match="yields no batches"):
        data = DataLoader((torch.zeros(0, 3), torch.zeros(0, 1)))
    assert (
        ft.train_(lambda m, x, y: ((m(x) - y) ** 2).mean(), model, data, ft.setup(ft.Adam(), model))
        == []
    )


def test_torch_dataset_and_tensordataset():
    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.tensor([float(i)]), i * i

    x, y = next(iter(DataLoader(Squares(), batchsize=4, shuffle=True, rng=0)))
    assert torch.equal(y, (x[:, 0] ** 2).long())
    td = torch.utils.data.TensorDataset(torch.rand(5, 2), torch.arange(5))
    x, y = next(iter(DataLoader(td, batchsize=5)))
    assert x.shape == (5, 2) and y.tolist() == list(range(5))


def test_dataset_errors_say_which_sample_failed():
    class Broken:
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 2:
                raise KeyError("missing file")
            return i

    with pytest.raises(KeyError) as info:
        list(DataLoader(Broken(), batchsize=2))
    assert "sample 2 for batch 1" in str(info.value.__notes__)


def test_prefetch_gives_the_same_batches_and_overlaps_loading():
    class Slow:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            time.sleep(0.01)
            return torch.tensor([i])

    plain = [b.tolist() for b in DataLoader(Slow(), batchsize=2, shuffle=True, rng=4)]
    pre = [b.tolist() for b in DataLoader(Slow(), batchsize=2, shuffle=True, rng=4, prefetch=2)]
    assert plain == pre
    threads_before = threading.active_count()
    it = iter(DataLoader(Slow(), batchsize=1, prefetch=2))
    next(it)
    it.close()  # leaving early stops the background thread
    time.sleep(0.2)
    assert threading.active_count() <= threads_before


def test_prefetch_reraises_dataset_errors_in_the_caller():
    class Bad:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise RuntimeError(f"cannot read {i}")

    with pytest.raises(RuntimeError, match="cannot read 0"):
        list(DataLoader(Bad(), prefetch=1))


# ---- resuming ---------------------------------------------------------------------------------


def epochs(loader, n):
    return [[b.tolist() for b in loader] for _ in range(n)]


def test_state_dict_mid_epoch_resumes_exactly():
    X = torch.arange(23)
    ref = DataLoader(X, batchsize=4, shuffle=True, rng=7)
    expected = epochs(ref, 3)

    run = DataLoader(X, batchsize=4, shuffle=True, rng=7)
    seen = [b.tolist() for b in run]  # epoch 0
    it = iter(run)
    seen1 = [next(it).tolist() for _ in range(2)]  # two batches of epoch 1
    state = run.state_dict()
    assert state["epoch"] == 1 and state["position"] == 2

    resumed = DataLoader(X, batchsize=4, shuffle=True, rng=999)
    resumed.load_state_dict(state)
    rest1 = [b.tolist() for b in resumed]
    epoch2 = [b.tolist() for b in resumed]
    assert seen == expected[0]
    assert seen1 + rest1 == expected[1]
    assert epoch2 == expected[2]


def test_state_dict_between_epochs_and_with_numpy_rng():
    X = torch.arange(11)
    ref = DataLoader(X, batchsize=3, shuffle=True, rng=np.random.default_rng(1))
    expected = epochs(ref, 2)
    run = DataLoader(X, batchsize=3, shuffle=True, rng=np.random.default_rng(1))
    assert [b.tolist() for b in run] == expected[0]
    state = run.state_dict()
    assert state["epoch"] == 1 and state["position"] == 0
    other = DataLoader(X, batchsize=3, shuffle=True, rng=np.random.default_rng(50))
    other.load_state_dict(state)
    assert [b.tolist() for b in other] == expected[1]


def test_state_dict_after_last_batch_inside_the_loop_points_to_next_epoch():
    X = torch.arange(6)
    loader = DataLoader(X, batchsize=3, shuffle=True, rng=0)
    expected = epochs(DataLoader(X, batchsize=3, shuffle=True, rng=0), 2)
    for _ in loader:
        state = loader.state_dict()
    again = DataLoader(X, batchsize=3, shuffle=True, rng=1)
    again.load_state_dict(state)
    assert state["position"] == 0 and [b.tolist() for b in again] == expected[1]


def test_unshuffled_resume_and_mismatch_errors():
    X = torch.arange(10)
    loader = DataLoader(X, batchsize=3)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    fresh = DataLoader(X, batchsize=3)
    fresh.load_state_dict(state)
    assert [b.tolist() for b in fresh] == [[3, 4, 5], [6, 7, 8], [9]]
    with pytest.raises(ValueError, match="saved batchsize=3 but this loader has batchsize=4"):
        DataLoader(X, batchsize=4).load_state_dict(state)
    with pytest.raises(ValueError, match="saved nobs=10"):
        DataLoader(torch.arange(12), batchsize=3).load_state_dict(state)


# ---- sharding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, world", [(20, 4), (23, 4), (7, 3)])
def test_shards_are_disjoint_and_cover_the_epoch(n, world):
    X = torch.arange(n)
    per_rank = [
        torch.cat(list(DataLoader(X, batchsize=2, shuffle=True, rng=5, shard=(r, world))))
        for r in range(world)
    ]
    lengths = {
        len(DataLoader(X, batchsize=2, shuffle=True, rng=5, shard=(r, world))) for r in range(world)
    }
    assert len(lengths) == 1  # every rank runs the same number of batches
    sizes = {len(p) for p in per_rank}
    assert sizes == {-(-n // world)}  # padded to ceil(n / world) each
    seen = torch.cat(per_rank).tolist()
    assert set(seen) == set(range(n))
    # exactly the padding is repeated: the first (world * ceil - n) of the order
    assert len(seen) - len(set(seen)) == world * (-(-n // world)) - n


def test_shards_with_partial_false_drop_the_remainder_and_never_overlap():
    X = torch.arange(23)
    parts = [
        torch.cat(
            list(DataLoader(X, batchsize=1, shuffle=True, rng=2, partial=False, shard=(r, 4)))
        )
        for r in range(4)
    ]
    flat = torch.cat(parts).tolist()
    assert len(flat) == 20 and len(set(flat)) == 20


def test_shards_follow_the_same_permutation_as_distributed_sampler():
    X = torch.arange(16)
    full = DataLoader(X, batchsize=16, shuffle=True, rng=9)
    order = next(iter(full))
    for r in range(4):
        part = torch.cat(list(DataLoader(X, batchsize=2, shuffle=True, rng=9, shard=(r, 4))))
        assert torch.equal(part, order[r::4])


def test_unshuffled_shards_interleave_and_auto_is_single_process_here():
    X = torch.arange(8)
    assert torch.cat(list(DataLoader(X, batchsize=2, shard=(1, 2)))).tolist() == [1, 3, 5, 7]
    auto = DataLoader(X, batchsize=2, shard="auto")
    assert auto.shard is None and len(auto) == 4  # one process: the whole data


def test_shards_reshuffle_in_step_across_epochs():
    X = torch.arange(12)
    loaders = [DataLoader(X, batchsize=3, shuffle=True, rng=1, shard=(r, 2)) for r in range(2)]
    for _ in range(3):
        parts = [torch.cat(list(ld)).tolist() for ld in loaders]
        assert sorted(parts[0] + parts[1]) == list(range(12))


def test_a_position_saved_on_rank_0_resumes_every_rank_of_the_same_world_size():
    # A single-file checkpoint is written by rank 0; every rank loads its loader state.
    X = torch.arange(40)
    rank0 = DataLoader(X, batchsize=2, shuffle=True, rng=4, shard=(0, 2))
    it = iter(rank0)
    for _ in range(3):
        next(it)
    state = rank0.state_dict()
    uninterrupted = DataLoader(X, batchsize=2, shuffle=True, rng=4, shard=(1, 2))
    expected = list(uninterrupted)[3:] + list(uninterrupted)  # the rest, then the next epoch
    resumed = DataLoader(X, batchsize=2, shuffle=True, rng=4, shard=(1, 2))
    resumed.load_state_dict(state)
    got = list(resumed) + list(resumed)
    assert [b.tolist() for b in got] == [b.tolist() for b in expected]
    with pytest.raises(ValueError, match="world_size=2"):
        DataLoader(X, batchsize=2, shuffle=True, rng=4, shard=(1, 4)).load_state_dict(state)


# ---- display and training -----------------------------------------------------------------------


def test_repr_shows_data_options_and_batch_count():
    r = repr(
        DataLoader(
            (torch.rand(60, 28, 28), torch.zeros(60, dtype=torch.int64)), batchsize=32, shuffle=True
        )
    )
    assert r == (
        "DataLoader((Tensor[60, 28, 28] float32, Tensor[60] int64), batchsize=32, shuffle=True)"
        "  # 2 batches"
    )
    assert "list of 3" in repr(DataLoader([1, 2, 3]))


def test_train_consumes_a_dataloader_of_tuples():
    model = torch.nn.Linear(3, 1)
    X, Y = torch.rand(16, 3), torch.rand(16, 1)
    state = ft.setup(ft.Descent(0.1), model)
    losses = ft.train_(
        lambda m, x, y: ft.losses.mse(m(x), y),
        model,
        DataLoader((X, Y), batchsize=4),
        state,
        progress=False,
    )
    assert len(losses) == 4


def test_resume_through_a_checkpoint_file(tmp_path):
    X = torch.arange(23)
    expected = epochs(DataLoader(X, batchsize=4, shuffle=True, rng=np.random.default_rng(3)), 2)
    run = DataLoader(X, batchsize=4, shuffle=True, rng=np.random.default_rng(3))
    list(run)
    it = iter(run)
    first_two = [next(it).tolist() for _ in range(2)]
    model = torch.nn.Linear(2, 1)
    ft.save(tmp_path / "ckpt.safetensors", model=model, data=run)
    resumed = DataLoader(X, batchsize=4, shuffle=True, rng=np.random.default_rng(99))
    ft.load(tmp_path / "ckpt.safetensors", model=model, data=resumed)
    assert first_two + [b.tolist() for b in resumed] == expected[1]


def test_shard_auto_reads_rank_and_world_size_from_fluxtrain_distributed(monkeypatch):
    import fluxtrain.distributed as distributed

    X = torch.arange(12)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        loader = DataLoader(X, batchsize=2, shuffle=True, shard="auto")
        assert loader.shard == (r, 3) and len(loader) == 2
        parts.append(torch.cat(list(loader)).tolist())
        assert repr(loader).endswith(f"shard=({r}, 3))  # 2 batches")
    # rng=None: the same seed on every rank, so the parts are disjoint
    assert sorted(parts[0] + parts[1] + parts[2]) == list(range(12))


@pytest.mark.filterwarnings("ignore:DataLoader over .* yields no batches")
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    b=st.integers(1, 12),
    shuffle=st.booleans(),
    partial=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_any_size_batches_partition_the_epoch(n, b, shuffle, partial, seed):
    X = torch.arange(n)
    loader = DataLoader((X, -X), batchsize=b, shuffle=shuffle, partial=partial, rng=seed)
    batches = list(loader)
    assert len(batches) == len(loader) == (-(-n // b) if partial else n // b)
    assert all(len(x) == b for x, _ in batches[: n // b])
    assert all(torch.equal(y, -x) for x, y in batches)
    seen = torch.cat([x for x, _ in batches]).tolist() if batches else []
    assert len(set(seen)) == len(seen)
    if partial:
        assert sorted(seen) == list(range(n))
    if not shuffle:
        assert seen == list(range(len(seen)))
