"""Tests for fnn.core: the Layer type, layer_type metadata, naming, error paths and helpers."""

from __future__ import annotations

import pickle

import inspect

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
    # params of another network: the Dense inside "block" gets a kernel for 6 features
    params = {**params, "block": {"dense_0": {"w": jnp.zeros((3, 6)), "b": jnp.zeros((6,))}}}
    x = jnp.ones((2, 5))
    with pytest.raises(LayerError) as info:
        net.apply(params, state, x)
    err = info.value
    assert err.kind == "Dense" and err.path == ("block", "dense_0")
    assert str(err).startswith("Dense layer 'block/dense_0'") and "(3, 6)" in str(err)
    # the same under jit: shapes are static, so the error is raised while tracing
    with pytest.raises(LayerError, match=r"Dense layer 'block/dense_0'.*\(3, 6\)"):
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
    layers = [fnn.Dense(3), fnn.Relu(), fnn.Dense(4), fnn.Relu(), fnn.Dense(2, name="head"),
              fnn.LeakyRelu(), fnn.PRelu(), fnn.RRelu()]
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
    with pytest.raises(TypeError, match="serial: layers: expected a fnn Layer or a layer constructor"):
        fnn.serial(fnn.Dense(3), lambda x: x)
    with pytest.raises(TypeError, match="Dense.*call the constructor with its arguments"):
        fnn.serial(fnn.Dense)


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


def test_ready_made_kinds_are_constructors_accepted_bare_or_called():
    net = fnn.serial(fnn.Dense(3), fnn.BatchNorm, fnn.Relu, fnn.Flatten(), fnn.Dense(2))
    assert [c.kind for c in net.children] == ["Dense", "BatchNorm", "Relu", "Flatten", "Dense"]
    assert net.init(jax.random.key(0), (-1, 4))[0] == (-1, 2)
    assert net.spec == {"serial": {"layers": [{"Dense": {"features": 3}}, "BatchNorm", "Relu",
                                              "Flatten", {"Dense": {"features": 2}}]}}


@pytest.mark.parametrize("kind", sorted(registered_layers()))
def test_help_shows_each_kinds_own_arguments(kind):
    constructor = registered_layers()[kind]
    params = inspect.signature(constructor).parameters
    assert "name" in params and params["name"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(params) != ["args", "kwargs"]
    assert constructor.__doc__ and "Layer(init, apply)" not in constructor.__doc__.splitlines()[0]


def test_prelu_help_names_its_arguments():
    assert list(inspect.signature(fnn.PRelu).parameters) == ["init_alpha", "per_channel", "name"]
    assert "per_channel" in (fnn.PRelu.__doc__ or "")


def test_calling_a_built_layer_with_data_is_a_clear_error():
    with pytest.raises(TypeError, match=r"a Dense layer is already built.*layer\.apply\(params, state, x\)"):
        fnn.Dense(3)(jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="already built"):
        fnn.Dense(3)(1)


def test_replace_rebuilds_with_changed_arguments():
    leaky = fnn.LeakyRelu(alpha=0.2)
    assert leaky.kind == "LeakyRelu" and leaky.spec == {"LeakyRelu": {"alpha": 0.2}}
    y, _ = leaky.apply({}, {}, jnp.asarray([-1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(y), [-0.2, 2.0], rtol=1e-6)
    dense = fnn.Dense(3)
    assert dense.replace(use_bias=False).spec == {"Dense": {"features": 3, "use_bias": False}}
    assert dense.replace(features=5).spec == {"Dense": {"features": 5}}
    assert dense.replace(name="head").name == "head"
    assert dense.replace(name="head").spec == {"Dense": {"features": 3, "name": "head"}}
    assert dense.spec == {"Dense": {"features": 3}}  # unchanged
    with pytest.raises(TypeError, match="unknown argument.*featurs"):
        dense.replace(featurs=4)
    net = fnn.serial(fnn.Dense(3), fnn.Relu, name="block").replace(name="other")
    assert net.name == "other" and [c.kind for c in net.children] == ["Dense", "Relu"]


def test_layers_are_immutable():
    with pytest.raises(AttributeError, match="immutable"):
        fnn.Dense(3).record = None


def test_hand_made_layer_trains_but_has_no_record():
    layer = Layer(lambda rng, s: (s, {}, {}), lambda p, s, x, *, rng=None, train=False: (x, s))
    assert layer.record is None and layer.kind == "Layer" and layer.name is None
    assert repr(layer) == "Layer(<hand-made>)"
    net = fnn.serial(fnn.Dense(2), layer)
    assert net.init(jax.random.key(0), (-1, 3))[0] == (-1, 2)
    with pytest.raises(TypeError, match="hand-made"):
        layer.replace(name="p")
    with pytest.raises(core.SpecError, match=r"model\.serial\.layers\[1\]: a hand-made Layer"):
        net.spec


def test_layer_identity_equality_hash_and_repr():
    a, b = fnn.Dense(3), fnn.Dense(3)
    assert a == a and a != b
    assert len({a, b}) == 2
    assert repr(a) == "Dense(3)" and repr(fnn.Dense(3, name="h")) == "Dense(3, name='h')"
    assert repr(fnn.Conv2D(8, 3, padding="VALID")) == "Conv2D(8, 3, padding='VALID')"
    net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.residual(fnn.Dense(8), shortcut=fnn.Dense(8)),
                     name="net")
    assert repr(net) == (
        "serial(\n"
        "  Dense(8),\n"
        "  Relu(),\n"
        "  residual(\n"
        "    Dense(8),\n"
        "    shortcut=Dense(8),\n"
        "  ),\n"
        "  name='net',\n"
        ")")


def test_map_layers_rewrites_bottom_up_and_keeps_keys():
    net = fnn.serial(fnn.Dense(4), fnn.BatchNorm, fnn.residual(fnn.BatchNorm(), fnn.Relu))
    seen = []
    synced = core.map_layers(
        lambda l: seen.append(l.kind) or (l.replace(axis_name="b") if l.kind == "BatchNorm" else l),
        net)
    assert seen == ["Dense", "BatchNorm", "BatchNorm", "Relu", "residual", "serial"]
    assert synced.spec == {"serial": {"layers": [
        {"Dense": {"features": 4}}, {"BatchNorm": {"axis_name": "b"}},
        {"residual": {"layers": [{"BatchNorm": {"axis_name": "b"}}, "Relu"]}}]}}
    a = net.init(jax.random.key(0), (-1, 4))
    b = synced.init(jax.random.key(0), (-1, 4))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    unchanged = core.map_layers(lambda l: l, net)
    assert unchanged is net


# --------------------------------------------------------------------------- layer_type

@pytest.fixture
def private_registry(monkeypatch):
    """Register test-only kinds in a copy of the registry, restored after the test."""
    monkeypatch.setattr(core, "_KINDS", dict(core._KINDS))


def test_layer_type_metadata_registry_and_error_kind(private_registry):
    @layer_type("ScaleForTest")
    def scale(factor: float = 2.0) -> Layer:
        """Multiply by ``factor``."""
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
    assert layer.record == core.BuildRecord("ScaleForTest", {"factor": 3.0}, "s")
    assert scale().spec == "ScaleForTest"
    assert scale.__doc__ == "Multiply by ``factor``."
    y, _ = layer.apply({}, {}, jnp.ones((2, 2)))
    np.testing.assert_array_equal(np.asarray(y), np.full((2, 2), 3.0))
    with pytest.raises(LayerError, match=r"^ScaleForTest layer: expects a batch, got shape \(4,\)"):
        layer.apply({}, {}, jnp.ones((4,)))
    with pytest.raises(LayerError, match=r"^ScaleForTest layer: expects an input of rank >= 2"):
        layer.init(None, (4,))
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        scale(name="a/b")


def test_registering_a_kind_again_from_the_same_module_replaces_it(private_registry):
    @layer_type("NotebookCell")
    def first() -> Layer:
        return Layer(lambda r, s: (s, {}, {}), lambda p, s, x, **k: (x, s))

    @layer_type("NotebookCell")
    def second() -> Layer:
        return Layer(lambda r, s: (s, {}, {}), lambda p, s, x, **k: (2 * x, s))

    assert registered_layers()["NotebookCell"] is second
    assert fnn.from_spec("NotebookCell").apply({}, {}, 3.0)[0] == 6.0


def test_a_kind_registered_by_another_module_is_not_replaced():
    with pytest.raises(ValueError, match=r"'Dense' is already registered by module 'fnn.layers.dense'"):
        layer_type("Dense")(lambda: None)
    assert registered_layers()["Dense"] is fnn.Dense


def test_a_constructor_may_not_declare_name(private_registry):
    with pytest.raises(TypeError, match="the registration adds name="):
        @layer_type("WithName")
        def with_name(*, name=None):
            return None


def test_constructor_argument_errors_name_the_kind():
    with pytest.raises(TypeError, match=r"^Dense: "):
        fnn.Dense(3, 4)
    with pytest.raises(TypeError, match=r"^Dense: "):
        fnn.Dense(3, bias=False)
    with pytest.raises(TypeError, match=r"^Dense: "):
        fnn.Dense()


def test_spec_keeps_only_non_default_arguments_and_nests_sub_layers():
    assert fnn.Dense(3, use_bias=True, w_init="glorot_uniform").spec == {"Dense": {"features": 3}}
    assert fnn.Relu().spec == "Relu"
    relu = fnn.Relu()
    net = fnn.serial(fnn.Dense(3), relu, name="block")
    assert net.spec == {"serial": {"layers": [{"Dense": {"features": 3}}, "Relu"],
                                   "name": "block"}}
    assert net.children[1] is relu


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


def test_a_kind_with_an_argument_before_star_layers_builds_replaces_and_round_trips(
        private_registry):
    @layer_type("WidthThenLayers", sublayers="layers", layout=fnn.core.numbered("layers"))
    def block(width: int, *layers: Layer) -> Layer:
        return fnn.serial(fnn.Dense(width), *layers)

    made = block(4, fnn.Relu, fnn.LeakyRelu)
    assert made.spec == {"WidthThenLayers": {"width": 4, "layers": ["Relu", "LeakyRelu"]}}
    assert made.replace(width=3).spec["WidthThenLayers"]["width"] == 3
    swapped = core.map_layers(
        lambda l: l.replace(alpha=0.2) if l.kind == "LeakyRelu" else l, made)
    assert swapped.spec["WidthThenLayers"]["layers"][1] == {"LeakyRelu": {"alpha": 0.2}}
    assert fnn.from_spec(made.spec).spec == made.spec
    assert fnn.from_spec(made.spec).init(jax.random.key(0), (-1, 2))[0] == (-1, 4)
