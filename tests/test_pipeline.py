"""Tests for fnn.data.pipeline: batching, per-epoch shuffling, map, repeat, prefetch."""

from __future__ import annotations

import threading

import chex
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fnn.data.pipeline import (Loader, batches, epoch_permutation, num_batches,
                               prefetch_to_device, repeat)


def data(n=23):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    y = np.arange(n, dtype=np.int32)
    return x, y


def order_of(stream):
    """The example ids (the y values) in the order the batches gave them."""
    return np.concatenate([np.asarray(b[1] if isinstance(b, tuple) else b["y"]) for b in stream])


@pytest.mark.parametrize("n,bs,drop,expected", [(10, 4, False, 3), (10, 4, True, 2),
                                                (12, 4, False, 3), (12, 4, True, 3),
                                                (3, 5, False, 1), (3, 5, True, 0),
                                                (0, 4, False, 0)])
def test_num_batches(n, bs, drop, expected):
    assert num_batches(n, bs, drop) == expected
    sizes = [len(b) for b in batches(np.zeros(n), bs, drop_remainder=drop)] if n else []
    assert len(sizes) == expected


def test_every_example_once_per_epoch_and_aligned():
    x, y = data()
    for epoch in range(3):
        seen = []
        for xb, yb in batches((x, y), 5, seed=7, epoch=epoch):
            np.testing.assert_array_equal(xb, x[yb])  # features stay with their labels
            seen.append(yb)
        seen = np.concatenate(seen)
        assert sorted(seen.tolist()) == list(range(23))


def test_order_changes_per_epoch_and_repeats_per_seed():
    x, y = data(50)
    orders = [order_of(batches((x, y), 8, seed=3, epoch=e)) for e in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.array_equal(orders[a], orders[b])
    again = order_of(batches((x, y), 8, seed=3, epoch=2))
    np.testing.assert_array_equal(again, orders[2])
    assert not np.array_equal(order_of(batches((x, y), 8, seed=4, epoch=2)), orders[2])
    # the order is that of numpy's Generator seeded with (seed, epoch), as documented
    expected = np.random.default_rng([3, 2]).permutation(50)
    np.testing.assert_array_equal(orders[2], expected)
    np.testing.assert_array_equal(epoch_permutation(50, seed=3, epoch=2), expected)


def test_no_shuffle_keeps_order():
    x, y = data()
    np.testing.assert_array_equal(order_of(batches((x, y), 4, shuffle=False)), y)


def test_remainder_handling():
    x, y = data(10)
    assert [len(yb) for _, yb in batches((x, y), 4)] == [4, 4, 2]
    kept = [yb for _, yb in batches((x, y), 4, drop_remainder=True, seed=1)]
    assert [len(b) for b in kept] == [4, 4]
    full = order_of(batches((x, y), 4, seed=1))
    np.testing.assert_array_equal(np.concatenate(kept), full[:8])


def test_start_batch_resumes_mid_epoch():
    x, y = data()
    full = list(batches((x, y), 4, seed=2, epoch=5))
    tail = list(batches((x, y), 4, seed=2, epoch=5, start_batch=3))
    assert len(tail) == len(full) - 3
    for (a, b), (c, d) in zip(full[3:], tail):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_structures_are_preserved():
    x, y = data()
    b = next(batches({"x": x, "y": y}, 4))
    assert set(b) == {"x", "y"}
    chex.assert_shape(b["x"], (4, 3))
    single = next(batches(x, 4, shuffle=False))
    np.testing.assert_array_equal(single, x[:4])


def test_bad_inputs_are_named():
    x, y = data()
    with pytest.raises(ValueError, match=r"\['x'\]: \(23, 3\), \['y'\]: \(22,\)"):
        batches({"x": x, "y": y[:-1]}, 4)
    with pytest.raises(ValueError, match="batch_size"):
        batches((x, y), 0)
    with pytest.raises(ValueError, match="start_batch"):
        batches((x, y), 4, start_batch=10)


def test_memory_mapped_arrays_give_the_same_batches(tmp_path):
    x, y = data(40)
    np.save(tmp_path / "x.npy", x)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    for (a, ya), (b, yb) in zip(batches((x, y), 7, seed=1, epoch=3),
                                batches((xm, y), 7, seed=1, epoch=3)):
        assert type(b) is np.ndarray
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, x[yb])
    first = next(batches((xm, y), 7, shuffle=False))
    np.testing.assert_array_equal(first[0], x[:7])


def test_loader_map_chain_and_len():
    x, y = data()
    loader = Loader({"x": x, "y": y}, 5, seed=9)
    scaled = loader.map(lambda b: {**b, "x": b["x"] * 2}).map(lambda b: {**b, "x": b["x"] + 1})
    assert len(loader) == 5 and loader.num_examples == 23
    for plain, mapped in zip(loader.epoch(2), scaled.epoch(2)):
        np.testing.assert_array_equal(mapped["x"], plain["x"] * 2 + 1)
        np.testing.assert_array_equal(mapped["y"], plain["y"])
    # the original loader is unchanged (Loader is immutable)
    np.testing.assert_array_equal(next(iter(loader))["x"], next(loader.epoch(0))["x"])


def test_repeat_chains_epochs():
    x, y = data(12)
    loader = Loader((x, y), 5, seed=1)
    got = order_of(loader.repeat(3, start_epoch=2))
    want = np.concatenate([order_of(batches((x, y), 5, seed=1, epoch=e)) for e in (2, 3, 4)])
    np.testing.assert_array_equal(got, want)
    forever = repeat(lambda e: batches((x, y), 5, seed=1, epoch=e))
    first_ten = [next(forever) for _ in range(10)]  # 3 batches an epoch: into epoch 3
    np.testing.assert_array_equal(first_ten[9][1], next(batches((x, y), 5, seed=1, epoch=3))[1])


def test_prefetch_gives_identical_batches_on_device():
    x, y = data()
    host = list(batches((x, y), 4, seed=5, epoch=1))
    dev = list(prefetch_to_device(batches((x, y), 4, seed=5, epoch=1), size=2))
    assert len(dev) == len(host)
    for (hx, hy), (dx, dy) in zip(host, dev):
        assert isinstance(dx, jax.Array) and isinstance(dy, jax.Array)
        np.testing.assert_array_equal(np.asarray(dx), hx)
        np.testing.assert_array_equal(np.asarray(dy), hy)
    via_loader = list(Loader((x, y), 4, seed=5).prefetch(3).epoch(1))
    for (hx, _), (dx, _) in zip(host, via_loader):
        np.testing.assert_array_equal(np.asarray(dx), hx)


def test_prefetch_with_sharding():
    x, y = data(16)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    loader = Loader({"x": x, "y": y}, 4, seed=0, drop_remainder=True).prefetch(2, sharding=sharding)
    for host, dev in zip(Loader({"x": x, "y": y}, 4, seed=0, drop_remainder=True).epoch(0),
                         loader.epoch(0)):
        assert dev["x"].sharding == sharding
        np.testing.assert_array_equal(np.asarray(dev["x"]), host["x"])


def test_prefetch_raises_producer_errors_and_stops_early():
    def broken():
        yield np.zeros(2)
        raise RuntimeError("bad batch 2")

    stream = prefetch_to_device(broken())
    next(stream)
    with pytest.raises(RuntimeError, match="bad batch 2"):
        next(stream)

    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield np.full(3, i)
            i += 1

    before = threading.active_count()
    stream = prefetch_to_device(endless(), size=2)
    assert int(next(stream)[0]) == 0
    stream.close()  # leaving the loop early stops the producer thread
    for t in threading.enumerate():
        if t.name == "fnn-prefetch":
            t.join(timeout=5)
    assert threading.active_count() <= before
    assert len(pulled) <= 5  # it ran at most `size` (+ one in hand) ahead
