"""Tests for fnn.summary: parameter counts, row shapes and nesting, the printed table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn.core import Layer, num_params
from fnn.layers.dropout import Dropout
from fnn.summary import Summary, SummaryRow, summary


def _issue_net():
    """The network of the issue: 784 -> 800 -> 800 -> 10 with ReLU and dropout 0.2."""
    return fnn.serial(Dropout(0.2), fnn.Dense(800), fnn.Relu, Dropout(0.2), fnn.Dense(800),
                      fnn.Relu, Dropout(0.2), fnn.Dense(10))


def test_issue_network_parameter_count():
    s = summary(_issue_net(), (-1, 784))
    expected = (784 * 800 + 800) + (800 * 800 + 800) + (800 * 10 + 10)
    assert expected == 1_276_810
    assert isinstance(s, Summary)
    assert s.trainable_params == expected
    assert s.state_size == 0
    assert s.input_shape == (-1, 784) and s.output_shape == (-1, 10)
    text = str(s)
    assert "1,276,810" in text
    assert repr(s) == text


def test_issue_network_rows():
    s = summary(_issue_net(), (-1, 784))
    root, *rows = s.rows
    assert root.path == ("serial",) and root.kind == "serial" and root.params == 1_276_810
    assert [r.path[-1] for r in rows] == ["dropout_0", "dense_0", "relu_0", "dropout_1",
                                          "dense_1", "relu_1", "dropout_2", "dense_2"]
    assert all(r.path[:-1] == ("serial",) for r in rows)
    assert [r.kind for r in rows] == ["Dropout", "Dense", "Relu", "Dropout", "Dense", "Relu",
                                      "Dropout", "Dense"]
    assert [r.output_shape for r in rows] == [(-1, 784), (-1, 800), (-1, 800), (-1, 800),
                                              (-1, 800), (-1, 800), (-1, 800), (-1, 10)]
    assert [r.params for r in rows] == [0, 784 * 800 + 800, 0, 0, 800 * 800 + 800, 0, 0,
                                        800 * 10 + 10]
    assert rows[1].name == "serial/dense_0"
    # the printed table has one line per layer, with its shape and count
    lines = str(s).splitlines()
    dense_1 = next(line for line in lines if line.split()[:1] == ["dense_1"])
    assert dense_1.split() == ["dense_1", "Dense", "(N,", "800)", "640,800"]


def test_count_matches_real_init():
    net = fnn.serial(fnn.Dense(16), fnn.PRelu(per_channel=True),
                     fnn.residual(fnn.Dense(16), fnn.Tanh, shortcut=fnn.Dense(16)),
                     fnn.Swish(learnable=True), fnn.Dense(3))
    _, params, _ = net.init(jax.random.key(0), (-1, 7))
    s = summary(net, (-1, 7))
    assert s.trainable_params == num_params(params)
    expected = (7 * 16 + 16) + 16 + 2 * (16 * 16 + 16) + 1 + (16 * 3 + 3)
    assert s.trainable_params == expected


def test_nested_rows_appear_under_their_parent():
    block = fnn.serial(fnn.Dense(8), fnn.Relu, name="block")
    net = fnn.serial(fnn.Dense(4), block, fnn.residual(fnn.Dense(8), fnn.Tanh), fnn.Dense(2))
    s = summary(net, (-1, 3, 5))
    paths = [r.path for r in s.rows]
    assert paths == [
        ("serial",),
        ("serial", "dense_0"),
        ("serial", "block"),
        ("serial", "block", "dense_0"),
        ("serial", "block", "relu_0"),
        ("serial", "residual_0"),
        ("serial", "residual_0", "body"),
        ("serial", "residual_0", "body", "dense_0"),
        ("serial", "residual_0", "body", "tanh_0"),
        ("serial", "residual_0", "shortcut"),
        ("serial", "dense_1"),
    ]
    by_path = {r.path: r for r in s.rows}
    assert by_path[("serial", "block")].output_shape == (-1, 3, 8)
    assert by_path[("serial", "block")].params == 4 * 8 + 8
    assert by_path[("serial", "block", "dense_0")].params == 4 * 8 + 8
    assert by_path[("serial", "residual_0", "shortcut")].kind == "Identity"
    assert s.output_shape == (-1, 3, 2)
    # a parent's count is the sum of its children's
    for row in s.rows:
        children = [r for r in s.rows if r.path[:-1] == row.path]
        if children:
            assert row.params == sum(c.params for c in children), row.path
    # printed: children indented under their parent, in order
    lines = str(s).splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("block "))
    assert lines[i + 1].startswith("  dense_0 ") and lines[i + 2].startswith("  relu_0 ")


def test_multi_output_shapes_and_row_type():
    net = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(3), fnn.Dense(5)))
    s = summary(net, (-1, 4))
    assert all(isinstance(r, SummaryRow) for r in s.rows)
    assert s.output_shape == ((-1, 3), (-1, 5))
    assert s.rows[1].output_shape == ((-1, 4), (-1, 4))
    assert "(N, 3), (N, 5)" in str(s)


def test_summary_allocates_nothing():
    # 10^9 parameters would need 4 GB; the summary only traces shapes.
    net = fnn.serial(fnn.Dense(100_000), fnn.Dense(10_000))
    s = summary(net, (-1, 10))
    assert s.trainable_params == (10 * 100_000 + 100_000) + (100_000 * 10_000 + 10_000)
    assert f"{s.trainable_params:,}" in str(s)


def test_state_is_counted_apart_from_params():
    def init(rng, input_shape):
        return input_shape, {}, {"mean": jnp.zeros(input_shape[-1]), "count": jnp.zeros(())}

    running = Layer(init, lambda p, s, x, *, rng=None, train=False: (x, s))  # hand-made
    s = summary(fnn.serial(fnn.Dense(6), running), (-1, 3))
    assert s.trainable_params == 3 * 6 + 6 and s.state_size == 6 + 1
    assert s.rows[-1].kind == "Layer" and s.rows[-1].state == 7 and s.rows[-1].params == 0
    assert "State (non-trainable) size: 7" in str(s)


def test_summary_is_deterministic_text():
    a = str(summary(_issue_net(), (-1, 784)))
    b = str(summary(_issue_net(), (-1, 784)))
    assert a == b
    assert np.all([len(line) > 0 for line in a.splitlines()])


def test_single_layer_network_shows_its_row():
    s = summary(fnn.Dense(10), (-1, 5))
    assert [r.path for r in s.rows] == [("dense",)]
    assert s.rows[0].params == 60 and s.trainable_params == 60
    row = next(line for line in str(s).splitlines() if line.startswith("dense"))
    assert row.split() == ["dense", "Dense", "(N,", "10)", "60"]
