"""Tests for fnn.layers.spec: from_spec round trips, shorthand forms and errors with key paths."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.layers.dropout import Dropout
from fnn.layers.spec import SpecError, from_spec


def _nets():
    """(id, net, input shape) for the round-trip tests."""
    deep = fnn.serial(
        fnn.Dense(8, use_bias=False), fnn.LeakyRelu(alpha=0.2),
        fnn.serial(fnn.Dense(6, w_init="he_normal"), fnn.PRelu(per_channel=True), name="block"),
        fnn.residual(fnn.Dense(6), fnn.Tanh),
        fnn.residual(fnn.Dense(4), fnn.Gelu(approximate=True),
                     shortcut=fnn.Dense(4, use_bias=False)),
        fnn.Swish(learnable=True), Dropout(0.3), fnn.Dense(3), fnn.LogSoftmax(axis=-2))
    branches = fnn.serial(
        fnn.fan_out(2),
        fnn.parallel(fnn.Dense(3), fnn.serial(fnn.Dense(2), fnn.Activation("elu"), name="right")),
        fnn.fan_in_concat(), fnn.RRelu(lower=0.1, upper=0.2), fnn.fan_out(3), fnn.fan_in_sum())
    twin = fnn.shared(fnn.serial(fnn.Dense(4), fnn.Sigmoid), name="tower")
    return [("deep", deep, (-1, 2, 5)), ("branches", branches, (-1, 5)),
            ("shared", twin, ((-1, 5), (-1, 5)))]


NETS = [pytest.param(net, shape, id=name) for name, net, shape in _nets()]


def _input(shape, seed=0):
    if all(isinstance(d, int) for d in shape):
        size = tuple(2 if d == -1 else d for d in shape)
        return jnp.asarray(np.random.default_rng(seed).normal(size=size), jnp.float32)
    return tuple(_input(s, seed + 1 + i) for i, s in enumerate(shape))


@pytest.mark.parametrize("net,input_shape", NETS)
def test_round_trip_rebuilds_the_same_network(net, input_shape):
    spec = json.loads(json.dumps(net.spec))  # a spec is plain data (YAML/JSON)
    rebuilt = from_spec(spec)
    assert rebuilt.spec == net.spec
    assert rebuilt.kind == net.kind and rebuilt.name == net.name
    out, params, state = net.init(jax.random.key(0), input_shape)
    out2, params2, state2 = rebuilt.init(jax.random.key(0), input_shape)
    assert out2 == out
    chex.assert_trees_all_equal_structs(params2, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(params2, params)
    chex.assert_trees_all_equal(params2, params)  # same key, same structure: same values
    chex.assert_trees_all_equal_structs(state2, state)
    x = _input(input_shape)
    y, _ = jax.jit(net.apply)(params, state, x)
    y2, _ = jax.jit(rebuilt.apply)(params2, state2, x)
    chex.assert_trees_all_close(y2, y, rtol=1e-6, atol=1e-6)


def test_spec_of_a_nested_net_is_readable_data():
    net = fnn.serial(fnn.Dense(4), fnn.Relu,
                     fnn.residual(fnn.Dense(4), shortcut=fnn.Dense(4, use_bias=False)))
    assert net.spec == {"serial": {"layers": [
        {"Dense": {"features": 4}}, "Relu",
        {"residual": {"layers": [{"Dense": {"features": 4}}],
                      "shortcut": {"Dense": {"features": 4, "use_bias": False}}}},
    ]}}


# --------------------------------------------------------------------------- shorthand forms

def test_name_only():
    layer = from_spec("Relu")
    assert layer.kind == "Relu" and layer.spec == "Relu"


def test_one_positional_argument():
    layer = from_spec({"Dense": 800})
    assert layer.spec == {"Dense": {"features": 800}}
    assert layer.init(jax.random.key(0), (-1, 784))[0] == (-1, 800)
    assert from_spec({"Dropout": 0.2}).spec == {"Dropout": {"rate": 0.2}}


def test_keyword_arguments():
    layer = from_spec({"Dense": {"features": 8, "use_bias": False, "name": "head"}})
    assert layer.name == "head"
    _, params, _ = layer.init(jax.random.key(0), (-1, 3))
    assert list(params) == ["w"] and params["w"].shape == (3, 8)


def test_serial_mapping_and_list_are_the_same():
    as_mapping = from_spec({"serial": [{"Dense": 8}, "Relu", {"Dense": 2}]})
    as_list = from_spec([{"Dense": 8}, "Relu", {"Dense": 2}])
    assert as_mapping.kind == as_list.kind == "serial"
    assert as_mapping.spec == as_list.spec == fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(2)).spec
    _, params, _ = as_list.init(jax.random.key(0), (-1, 5))
    assert sorted(params) == ["dense_0", "dense_1"]


def test_nested_lists_and_named_blocks():
    net = from_spec([{"Dense": 4}, {"serial": {"layers": ["Tanh", {"Dense": 3}], "name": "block"}},
                     ["Relu", {"Dense": 2}]])
    out, params, _ = net.init(jax.random.key(0), (-1, 5))
    assert out == (-1, 2)
    assert sorted(params) == ["block", "dense_0", "serial_0"]
    assert sorted(params["block"]) == ["dense_0"] and sorted(params["serial_0"]) == ["dense_0"]


def test_residual_with_layers_and_shortcut():
    block = from_spec({"residual": {"layers": [{"Dense": 4}, "Relu"],
                                    "shortcut": {"Dense": {"features": 4, "use_bias": False}}}})
    assert block.kind == "residual"
    out, params, _ = block.init(jax.random.key(0), (-1, 6))
    assert out == (-1, 4)
    assert sorted(params) == ["body", "shortcut"] and list(params["shortcut"]) == ["w"]


def test_combinators_with_layer_arguments():
    twin = from_spec({"shared": {"layer": [{"Dense": 3}, "Sigmoid"], "num_inputs": 3}})
    out, _, _ = twin.init(jax.random.key(0), ((-1, 2),) * 3)
    assert out == ((-1, 3),) * 3
    branches = from_spec([{"fan_out": 2}, {"parallel": [{"Dense": 3}, "Identity"]},
                          "fan_in_concat"])
    assert branches.init(jax.random.key(0), (-1, 4))[0] == (-1, 7)


def test_kind_names_are_case_and_underscore_insensitive():
    assert from_spec("relu").kind == "Relu"
    assert from_spec({"dense": 3}).kind == "Dense"
    assert from_spec("leaky_relu").kind == "LeakyRelu"
    assert from_spec({"FanOut": 2}).kind == "fan_out"


def test_a_layer_passes_through():
    relu = fnn.Relu()
    assert from_spec(relu) is relu
    assert from_spec(fnn.Relu).spec == "Relu"
    net = from_spec([fnn.Dense(3), "Relu"])
    assert net.spec == {"serial": {"layers": [{"Dense": {"features": 3}}, "Relu"]}}


# --------------------------------------------------------------------------- errors

def test_unknown_layer_names_the_path_and_suggests():
    with pytest.raises(SpecError) as info:
        from_spec(["Relu", {"Dense": 3}, "Rlu"])
    err = info.value
    assert err.path == "model[2]"
    assert str(err).startswith("model[2]: unknown layer 'Rlu'; did you mean 'Relu'")
    assert isinstance(err, ValueError)


def test_unknown_layer_without_close_match_lists_known_layers():
    with pytest.raises(SpecError, match=r"^model: unknown layer 'Zzzz' \(known layers: .*Dense"):
        from_spec("Zzzz")


def test_unknown_layer_deep_inside_combinators():
    with pytest.raises(SpecError) as info:
        from_spec({"serial": [{"Dense": 2}, {"residual": {"layers": ["Relu", "Dnse"]}}]})
    assert info.value.path == "model.serial[1].residual.layers[1]"
    assert "did you mean 'Dense'" in str(info.value)


def test_unknown_argument_suggests_close_name():
    with pytest.raises(SpecError) as info:
        from_spec([{"Dense": {"featurs": 3}}])
    assert info.value.path == "model[0].Dense.featurs"
    message = str(info.value)
    assert "unknown argument; did you mean 'features'?" in message
    assert "Dense takes: features, use_bias" in message


@pytest.mark.parametrize("spec,path,detail", [
    ({"Dense": -3}, "model.Dense", "features must be a positive int, got -3"),
    ([{"Dense": {"features": 2.5}}], "model[0].Dense", "features must be a positive int, got 2.5"),
    ({"RRelu": {"lower": 0.5, "upper": 0.1}}, "model.RRelu", "need 0 <= lower <= upper"),
    ({"fan_out": 0}, "model.fan_out", "num must be a positive int"),
    ({"Dense": {"features": 3, "w_init": "he_normel"}}, "model.Dense", "did you mean he_normal"),
    ({"Activation": "rleu"}, "model.Activation", "did you mean relu"),
    ({"Dense": {"use_bias": False}}, "model.Dense", "missing a required argument: 'features'"),
])
def test_invalid_values_name_the_path(spec, path, detail):
    with pytest.raises(SpecError) as info:
        from_spec(spec)
    assert info.value.path == path
    assert detail in str(info.value)


@pytest.mark.parametrize("spec,detail", [
    (42, "a layer is a name"),
    ({"Dense": 3, "Relu": None}, "one-key mapping"),
    ({3: 4}, "a layer's name must be a string"),
    ({"Relu": 3}, "takes keyword arguments only"),
    ({"serial": "Relu"}, "expected a list of layers"),
])
def test_malformed_specs(spec, detail):
    with pytest.raises(SpecError, match=detail):
        from_spec(spec)
