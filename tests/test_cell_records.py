"""Cells carry one build record, as layers do: their spec, repr and rebuilding derive from it.

Also: the recurrent modules' public names stay importable from ``fnn.layers.recurrent`` (fnn 0.1
paths) and from ``fnn``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core import BuildRecord, SpecError, constructor_signature, record_spec
from fnn.layers import bidirectional, cells, recurrent, sequences
from fnn.layers.cells import Cell, GRUCell, LSTMCell, SimpleRNNCell, cell_from_spec


def test_a_cell_carries_an_immutable_build_record():
    cell = LSTMCell(8, forget_bias=0.0)
    assert isinstance(cell.record, BuildRecord)
    assert cell.record.kind == cell.kind == "LSTMCell"
    assert cell.record.args["units"] == 8 and cell.record.args["forget_bias"] == 0.0
    with pytest.raises(TypeError):
        cell.record.args["units"] = 9
    with pytest.raises(AttributeError, match="immutable"):
        cell.units = 9


def test_spec_and_repr_list_the_non_default_arguments():
    assert SimpleRNNCell(3, "relu").spec == {"SimpleRNNCell": {"units": 3, "activation": "relu"}}
    assert GRUCell(2, reset_after=False).spec == {"GRUCell": {"units": 2, "reset_after": False}}
    assert repr(LSTMCell(4, w_h_init="he_normal")) == "LSTMCell(units=4, w_h_init='he_normal')"
    # the cell a layer builds for itself has the same record as the cell built alone
    assert fnn.LSTM(4, forget_bias=0.5).spec["LSTM"] == {"units": 4, "forget_bias": 0.5}


def test_rnn_with_a_cell_object_has_a_plain_spec_that_rebuilds_it():
    layer = fnn.RNN(LSTMCell(3, w_h_init="he_normal"), return_sequences=False)
    spec = layer.spec
    assert spec == {"RNN": {"cell": {"LSTMCell": {"units": 3, "w_h_init": "he_normal"}},
                            "return_sequences": False}}
    again = fnn.from_spec(spec)
    assert again.spec == spec
    _, params, state = layer.init(jax.random.key(0), (-1, 5, 2))
    x = jnp.asarray(np.random.RandomState(0).normal(size=(2, 5, 2)), jnp.float32)
    np.testing.assert_array_equal(layer.apply(params, state, x)[0], again.apply(params, state, x)[0])


def test_cell_from_spec_rebuilds_every_kind_and_names_bad_specs():
    for kind in cells.CELL_KINDS:
        cell = cell_from_spec({kind: {"units": 2}})
        assert isinstance(cell, Cell) and cell.kind == kind and cell.spec == {kind: {"units": 2}}
    with pytest.raises(TypeError, match="GRUCell: .*forget_bias"):
        cell_from_spec({"GRUCell": {"units": 2, "forget_bias": 1.0}})
    with pytest.raises(ValueError, match="unknown cell kind 'Dense'; known: GRUCell, LSTMCell"):
        cell_from_spec({"Dense": {"units": 2}})


def test_a_cell_that_cannot_be_plain_data_is_refused_when_the_spec_is_asked():
    with pytest.raises(SpecError, match=r"cell\.SimpleRNNCell\.activation: .* not plain data"):
        _ = fnn.RNN(SimpleRNNCell(3, activation=jnp.tanh)).spec
    lstm = LSTMCell(2)
    hand_made = Cell(units=2, init=lstm.init, initial_carry=lstm.initial_carry,
                     project=lstm.project, recur=lstm.recur)
    assert hand_made.kind == "Cell" and repr(hand_made) == "Cell(<hand-made>)"
    with pytest.raises(SpecError, match="hand-made Cell cannot be saved"):
        _ = fnn.RNN(hand_made).spec


def test_record_spec_is_what_a_layer_spec_is_made_of():
    record = BuildRecord("Dense", {"features": 3, "use_bias": True}, "head")
    assert record_spec(record, constructor_signature("Dense")) == fnn.Dense(3, name="head").spec


def test_public_names_stay_importable_from_the_old_module_and_from_fnn():
    old_names = ["Cell", "SimpleRNNCell", "LSTMCell", "GRUCell", "cell_from_spec", "RNN",
                 "SimpleRNN", "LSTM", "GRU", "Bidirectional", "StripMask"]
    for name in old_names:
        assert getattr(recurrent, name) is getattr(fnn, name)
    exported = (cells.__all__ + recurrent.__all__ + bidirectional.__all__ + sequences.__all__)
    assert sorted(exported) == sorted(old_names)
    assert set(exported) <= set(fnn.layers.__all__)
