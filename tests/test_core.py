"""Tests for fnn.core: the Layer type, layer_type metadata, naming, error paths and helpers."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import core
from fnn.core import (Layer, LayerError, check_shape, child_keys, layer_type, num_params,
                      registered_layers, require_rng, snake_case, split_rng, tree_size)


# --------------------------------------------------------------------------- LayerError

def test_layer_error_message_kind_and_path():
    assert str(LayerError("bad")) == "layer: bad"
    assert str(LayerError("bad", kind="Dense")) == "Dense layer: bad"
    err = LayerError("got shape (2, 3)", kind="Dense", path=("block", "dense_1"))
    assert str(err) == "Dense layer 'block/dense_1': got shape (2, 3)"
    outer = err.within("net")
    assert outer.path == ("net", "block", "dense_1") and outer.kind == "Dense"
    assert str(outer) == "Dense layer 'net/block/dense_1': got shape (2, 3)"
    assert isinstance(err, ValueError)


def test_layer_error_pickles():
    err = LayerError("got shape (5,)", kind="Dense", path=("a", "b"))
    back = pickle.loads(pickle.dumps(err))
    assert (back.detail, back.kind, back.path, str(back)) == (err.detail, err.kind, err.path,
                                                              str(err))


def test_apply_error_names_the_path_through_nested_combinators():
    net = fnn.serial(fnn.Dense(3), fnn.serial(fnn.Dense(4), name="block"))
    out_shape, params, state = net.init(jax.random.key(0), (-1, 5))
    assert out_shape == (-1, 4)
    # the first Dense now makes 6 features, which the Dense inside "block" (3 inputs) rejects
    params = {**params, "dense_0": {"w": jnp.zeros((5, 6)), "b": jnp.zeros((6,))}}
    x = jnp.ones((2, 5))
    with pytest.raises(LayerError) as info:
        net.apply(params, state, x)
    err = info.value
    assert err.kind == "Dense" and err.path == ("block", "dense_0")
    assert str(err).startswith("Dense layer 'block/dense_0'") and "(2, 6)" in str(err)
    # the same under jit: shapes are static, so the error is raised while tracing
    with pytest.raises(LayerError, match=r"Dense layer 'block/dense_0'.*\(2, 6\)"):
        jax.jit(lambda p, x: net.apply(p, state, x))(params, x)


def test_apply_error_in_first_layer_names_it():
    net = fnn.serial(fnn.Dense(3), fnn.serial(fnn.Dense(4), name="block"))
    _, params, state = net.init(jax.random.key(0), (-1, 5))
    with pytest.raises(LayerError, match=r"^Dense layer 'dense_0': .*\(2, 7\)"):
        net.apply(params, state, jnp.ones((2, 7)))


def test_init_error_names_the_path_and_shape():
    net = fnn.serial(fnn.Relu, fnn.serial(fnn.Tanh, fnn.Dense(4), name="block"))
    with pytest.raises(LayerError) as info:
        net.init(jax.random.key(0), (5,))
    assert info.value.path == ("block", "dense_0")
    assert str(info.value).startswith("Dense layer 'block/dense_0'")
    assert "(5,)" in str(info.value)


def test_deeply_nested_path():
    branch = fnn.serial(fnn.Tanh, fnn.residual(fnn.Dense(4)), name="b")
    net = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Relu, branch))
    with pytest.raises(LayerError) as info:
        net.init(jax.random.key(0), (-1, 3))
    assert info.value.kind == "residual"
    assert str(info.value).startswith("residual layer 'parallel_0/b/residual_0': ")
    assert "(-1, 4)" in str(info.value) and "(-1, 3)" in str(info.value)


# --------------------------------------------------------------------------- naming

def test_child_keys_number_by_kind_and_keep_explicit_names():
    layers = [fnn.Dense(3), fnn.Relu, fnn.Dense(4), fnn.Relu, fnn.Dense(2, name="head"),
              fnn.LeakyRelu, fnn.PRelu, fnn.RRelu]
    assert child_keys(layers) == ["dense_0", "relu_0", "dense_1", "relu_1", "head",
                                  "leaky_relu_0", "prelu_0", "rrelu_0"]


def test_params_are_keyed_by_child_names():
    net = fnn.serial(fnn.Dense(3), fnn.Relu, fnn.Dense(4, name="hidden"), fnn.Relu, fnn.Dense(2))
    _, params, _ = net.init(jax.random.key(0), (-1, 5))
    assert sorted(params) == ["dense_0", "dense_1", "hidden"]
    assert params["hidden"]["w"].shape == (3, 4) and params["dense_1"]["w"].shape == (4, 2)


def test_duplicate_explicit_names_are_an_error():
    with pytest.raises(LayerError, match=r"^serial layer: two children are named 'x'"):
        fnn.serial(fnn.Dense(3, name="x"), fnn.Relu(name="x"))
    # an explicit name equal to a generated one collides too (either order)
    with pytest.raises(LayerError, match=r"'dense_0'"):
        fnn.serial(fnn.Dense(3), fnn.Dense(3, name="dense_0"))
    with pytest.raises(LayerError, match=r"'dense_0'"):
        fnn.serial(fnn.Dense(3, name="dense_0"), fnn.Dense(3))
    with pytest.raises(LayerError, match=r"^parallel layer: two children are named 'x'"):
        fnn.parallel(fnn.Dense(3, name="x"), fnn.Dense(3, name="x"))


def test_child_keys_reject_non_layers():
    with pytest.raises(TypeError, match="expected a fnn Layer"):
        fnn.serial(fnn.Dense(3), lambda x: x)


@pytest.mark.parametrize("kind,expected", [
    ("Dense", "dense"), ("BatchNorm", "batch_norm"), ("Conv2D", "conv2d"), ("PRelu", "prelu"),
    ("RRelu", "rrelu"), ("LeakyRelu", "leaky_relu"), ("MaxPool2D", "max_pool2d"),
    ("LSTM", "lstm"), ("GRUCell", "gru_cell"), ("SimpleRNN", "simple_rnn"),
    ("fan_in_concat", "fan_in_concat"),
])
def test_snake_case(kind, expected):
    assert snake_case(kind) == expected


# --------------------------------------------------------------------------- Layer

def test_layer_unpacks_as_init_apply_pair():
    init, apply = fnn.Dense(3)
    out_shape, params, state = init(jax.random.key(0), (-1, 5))
    y, new_state = apply(params, state, jnp.ones((2, 5)))
    assert out_shape == (-1, 3) and y.shape == (2, 3) and new_state == {}
    layer = fnn.Dense(3)
    assert isinstance(layer, tuple) and len(layer) == 2
    assert layer[0] is layer.init and layer[1] is layer.apply


def test_calling_a_layer_rebuilds_it_with_changed_arguments():
    leaky = fnn.LeakyRelu(alpha=0.2)
    assert leaky.kind == "LeakyRelu" and leaky.spec == {"LeakyRelu": {"alpha": 0.2}}
    y, _ = leaky.apply({}, {}, jnp.asarray([-1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(y), [-0.2, 2.0], rtol=1e-6)
    assert fnn.LeakyRelu.spec == "LeakyRelu"  # the ready-made layer is unchanged

    renamed = fnn.Relu(name="a")
    assert renamed.name == "a" and renamed.default_name == "a" and renamed.kind == "Relu"
    assert fnn.Relu.name is None and fnn.Relu.default_name == "relu"

    dense = fnn.Dense(3)
    assert dense(use_bias=False).spec == {"Dense": {"features": 3, "use_bias": False}}
    assert dense(5).spec == {"Dense": {"features": 5}}
    assert dense.named("head").name == "head"
    assert dense.named("head").spec == {"Dense": {"features": 3, "name": "head"}}


def test_calling_a_plain_layer():
    layer = Layer(lambda rng, s: (s, {}, {}), lambda p, s, x, *, rng=None, train=False: (x, s),
                  kind="Probe")
    renamed = layer(name="p")
    assert renamed.name == "p" and renamed.kind == "Probe" and renamed.init is layer.init
    with pytest.raises(TypeError, match="Probe layer takes no arguments"):
        layer(3)


def test_layer_identity_equality_hash_and_repr():
    a, b = fnn.Dense(3), fnn.Dense(3)
    assert a == a and a != b
    assert len({a, b}) == 2
    assert repr(a) == "Layer(Dense)" and repr(fnn.Dense(3, name="h")) == "Layer(Dense, name='h')"


# --------------------------------------------------------------------------- layer_type

@pytest.fixture
def private_registry(monkeypatch):
    """Register test-only kinds in a copy of the registry, restored after the test."""
    monkeypatch.setattr(core, "_REGISTRY", dict(core._REGISTRY))


def test_layer_type_metadata_registry_and_error_kind(private_registry):
    @layer_type("ScaleForTest")
    def scale(factor: float = 2.0, *, name: str | None = None) -> Layer:
        def init(rng, input_shape):
            return check_shape(input_shape, min_rank=2), {}, {}

        def apply(params, state, x, *, rng=None, train=False):
            if x.ndim < 2:
                raise LayerError(f"expects a batch, got shape {x.shape}")
            return x * factor, state

        return Layer(init, apply)

    assert registered_layers()["ScaleForTest"] is scale
    layer = scale(3.0, name="s")
    assert (layer.kind, layer.name, layer.spec) == (
        "ScaleForTest", "s", {"ScaleForTest": {"factor": 3.0, "name": "s"}})
    assert scale().spec == "ScaleForTest"
    y, _ = layer.apply({}, {}, jnp.ones((2, 2)))
    np.testing.assert_array_equal(np.asarray(y), np.full((2, 2), 3.0))
    with pytest.raises(LayerError, match=r"^ScaleForTest layer: expects a batch, got shape \(4,\)"):
        layer.apply({}, {}, jnp.ones((4,)))
    with pytest.raises(LayerError, match=r"^ScaleForTest layer: expects an input of rank >= 2"):
        layer.init(None, (4,))
    with pytest.raises(ValueError, match="registered twice"):
        layer_type("ScaleForTest")(scale)


def test_layer_type_rejects_a_second_registration_of_a_kind():
    with pytest.raises(ValueError, match=r"'Dense' is registered twice"):
        layer_type("Dense")(lambda *, name=None: None)
    assert registered_layers()["Dense"] is fnn.Dense


def test_constructor_argument_errors_name_the_kind():
    with pytest.raises(TypeError, match=r"^Dense: "):
        fnn.Dense(3, 4)
    with pytest.raises(TypeError, match=r"^Dense: "):
        fnn.Dense(3, bias=False)
    with pytest.raises(TypeError, match=r"^Dense: "):
        fnn.Dense()


def test_spec_keeps_only_non_default_arguments_and_nests_sub_layers():
    assert fnn.Dense(3, use_bias=True, w_init="glorot_uniform").spec == {"Dense": {"features": 3}}
    assert fnn.Relu.spec == "Relu"
    net = fnn.serial(fnn.Dense(3), fnn.Relu, name="block")
    assert net.spec == {"serial": {"layers": [{"Dense": {"features": 3}}, "Relu"],
                                   "name": "block"}}
    assert net.children[1] is fnn.Relu


# --------------------------------------------------------------------------- helpers

def test_require_rng():
    key = jax.random.key(0)
    assert require_rng(key) is key
    with pytest.raises(LayerError, match=r"needs an rng because it is noisy"):
        require_rng(None, "it is noisy")


def test_split_rng():
    assert split_rng(None, 3) == [None, None, None]
    keys = split_rng(jax.random.key(0), 3)
    assert len(keys) == 3
    data = {tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in keys}
    assert len(data) == 3


def test_num_params_and_tree_size():
    _, params, _ = fnn.Dense(3).init(jax.random.key(0), (-1, 5))
    assert num_params(params) == 5 * 3 + 3
    assert tree_size(params) == (5 * 3 + 3) * 4
    abstract = {"a": jax.ShapeDtypeStruct((2, 3), jnp.float32),
                "b": [jax.ShapeDtypeStruct((4,), jnp.int8)]}
    assert num_params(abstract) == 10 and tree_size(abstract) == 24 + 4
    assert num_params({}) == 0 and fnn.num_params is num_params


def test_check_shape():
    assert check_shape([-1, np.int64(3)]) == (-1, 3)
    with pytest.raises(LayerError, match="tuple of ints"):
        check_shape(3)
    with pytest.raises(LayerError, match="tuple of ints"):
        check_shape((-1, 2.5))
    with pytest.raises(LayerError, match=r"rank >= 3.*\(-1, 2\)"):
        check_shape((-1, 2), min_rank=3)
