"""Frozen means frozen: a frozen layer's params are bit-identical after training, under every
optimizer (weight decay included), regularizer, constraint, dtype policy, ``repeat``, ``shared``
and config path, with no optimizer state and unchanged batch-norm statistics (issue 19)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.finetune import frozen_mask, frozen_paths
from fnn.losses import softmax_cross_entropy
from fnn.train import fit
from tests.blobs import blobs

X, Y = blobs(96, d=6)
DATA = {"x": X, "y": Y}


def _train(net, optimizer, *, regularizer=None, constraint=None, epochs=3):
    result = fit(net, softmax_cross_entropy, optimizer, DATA, epochs=epochs, batch_size=32,
                 regularizer=regularizer, constraint=constraint, log=None)
    return result.train_state


def _leaves_under(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _assert_frozen(net, before, after, path):
    """The leaves under ``path`` equal ``before`` bit for bit; some other leaf moved."""
    chex.assert_trees_all_equal(_leaves_under(after, path), _leaves_under(before, path))
    moved = [not np.array_equal(a, b) for a, b, f in zip(
        jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before),
        jax.tree_util.tree_leaves(frozen_mask(net, before))) if not f]
    assert any(moved), "nothing trained"


def _l2(params):
    return 1e-2 * fnn.regularizers.l2(params)


def _max_norm(params):
    return fnn.regularizers.max_norm(params, 0.05)  # small enough to project every kernel


CASES = {
    # a frozen Dense inside a repeated block: vmap'ed init made the old identity match miss it
    "repeat": (lambda: fnn.serial(fnn.Dense(8), fnn.repeat(fnn.serial(fnn.Dense(8), fnn.Tanh), 3),
                                  fnn.Dense(3)),
               "repeat_0/dense_0", ("repeat_0", "dense_0")),
    # under a dtype policy that casts the params: the cast made new arrays
    "dtype_policy": (lambda: fnn.DtypePolicy(fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3)),
                                             params="bfloat16"),
                     "dense_0", ("dense_0",)),
    "shared": (lambda: fnn.serial(fnn.fan_out(2), fnn.shared(fnn.serial(fnn.Dense(8), fnn.Relu,
                                                                         name="tower")),
                                  fnn.fan_in_concat(), fnn.Dense(3)),
               "shared_0/dense_0", ("shared_0", "dense_0")),
    "nested": (lambda: fnn.serial(fnn.serial(fnn.Dense(8), fnn.Relu, name="encoder"),
                                  fnn.Dense(3, name="head")),
               "encoder", ("encoder",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("how", ["adamw", "l2", "max_norm"])
def test_frozen_leaves_are_bit_identical(case, how):
    make, name, path = CASES[case]
    net = fnn.freeze(make(), name)
    assert frozen_paths(net) == [path]
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    optimizer = optax.adamw(1e-2, weight_decay=0.5) if how == "adamw" else optax.sgd(0.1)
    ts = fit(net, softmax_cross_entropy, optimizer, DATA, epochs=3, batch_size=32, log=None,
             init=(params, state),
             regularizer=_l2 if how == "l2" else None,
             constraint=_max_norm if how == "max_norm" else None).train_state
    _assert_frozen(net, params, ts.params, path)


def test_frozen_params_have_no_optimizer_state():
    net = fnn.freeze(CASES["repeat"][0](), "repeat_0/dense_0")
    ts = _train(net, optax.adam(1e-2), epochs=1)
    # multi_transform keeps the trainable moments only: count the adam moment scalars
    inner = ts.opt_state.inner_states["trainable"].inner_state[0]
    counted = fnn.core.num_params(inner.mu)
    frozen_count = fnn.core.num_params(_leaves_under(ts.params, ("repeat_0", "dense_0")))
    assert counted == fnn.core.num_params(ts.params) - frozen_count


def test_frozen_batch_norm_keeps_its_statistics_inside_a_repeat():
    net = fnn.serial(fnn.Dense(8), fnn.repeat(fnn.serial(fnn.Dense(8), fnn.BatchNorm(), fnn.Tanh), 2),
                     fnn.Dense(3))
    frozen = fnn.freeze(net, "repeat_0/batch_norm_0")
    _, params, state = frozen.init(jax.random.key(0), (-1, 6))
    ts = fit(frozen, softmax_cross_entropy, optax.adam(1e-2), DATA, epochs=2, batch_size=32,
             log=None, init=(params, state)).train_state
    chex.assert_trees_all_equal(ts.model_state, state)
    chex.assert_trees_all_equal(ts.params["repeat_0"]["batch_norm_0"],
                                params["repeat_0"]["batch_norm_0"])


def test_freeze_takes_the_paths_summary_prints():
    net = CASES["repeat"][0]()
    printed = [row.name.split("/", 1)[1] for row in fnn.summary(net, (-1, 6)).rows
               if row.kind == "Dense"]
    assert printed == ["dense_0", "repeat_0/dense_0", "dense_1"]
    for name in printed:  # each path summary prints is a path freeze takes
        assert tuple(name.split("/")) in frozen_paths(fnn.freeze(net, name))
    # a name selects every layer whose path holds its keys (as optimizer.freeze does)
    assert frozen_paths(fnn.freeze(net, "dense_0")) == [("dense_0",), ("repeat_0", "dense_0")]
    assert frozen_paths(fnn.freeze(net, "repeat_0/dense_0")) == [("repeat_0", "dense_0")]
    # the optimizer's freeze list takes the same paths, with the same matcher
    from fnn.optim.masks import frozen_labels
    _, params, _ = net.init(jax.random.key(0), (-1, 6))
    labels = frozen_labels(params, (("repeat_0", "dense_0"),), "optimizer.freeze")
    assert labels["repeat_0"]["dense_0"] == {"b": "frozen", "w": "frozen"}
    assert labels["dense_0"] == {"b": "trainable", "w": "trainable"}


def test_summary_counts_frozen_params_apart():
    net = fnn.freeze(CASES["nested"][0](), "encoder")
    s = fnn.summary(net, (-1, 6))
    assert s.frozen_params == 6 * 8 + 8
    assert s.trainable_params == 8 * 3 + 3
    assert "Frozen params: 56" in str(s)


def test_freeze_keeps_every_key_and_unfreeze_undoes_it():
    net = fnn.serial(fnn.Dense(4), fnn.Dense(4), fnn.Relu, fnn.Dense(2))
    frozen = fnn.freeze(net, "dense_1")
    keys = lambda n: sorted(n.init(jax.random.key(0), (-1, 3))[1])
    assert keys(frozen) == keys(net) == ["dense_0", "dense_1", "dense_2"]
    assert [c.kind for c in frozen.children] == ["Dense", "Frozen", "Relu", "Dense"]
    back = fnn.unfreeze(frozen)
    assert [c.kind for c in back.children] == ["Dense", "Dense", "Relu", "Dense"]
    assert keys(back) == keys(net)


def test_a_name_that_matches_nothing_is_one_line_with_the_closest_keys():
    net = CASES["repeat"][0]()
    with pytest.raises(fnn.core.LayerNameError,
                       match=r"^freeze: no layer 'repeat_0/dens_0' in the network; did you mean"):
        fnn.freeze(net, "repeat_0/dens_0")


def test_config_freeze_inside_a_repeat_with_adamw_and_l2_and_resume(tmp_path):
    from fnn.run import train as train_run
    raw = {"name": "frz", "seed": 0,
           "model": [{"Dense": 8},
                     {"Repeat": {"times": 2, "layer": [{"Dense": 8}, "Tanh"]}},
                     {"Dense": 3}],
           "model_dtype": {"params": "float32", "compute": "float32"},
           "optimizer": {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.5},
           "regularizers": {"l2": 0.01},
           "data": {"name": "circles", "options": {"n": 120, "n_test": 40}, "validation": 0.25},
           "training": {"epochs": 2, "batch_size": 30, "freeze": ["repeat_0/dense_0"]},
           "output": {"plots": False, "progress": False}}
    cfg = fnn.config.parse_config(raw, [f"output.dir={tmp_path / 'run'}"])
    run = train_run(cfg, log=None)
    net = fnn.run.build(cfg).net
    params, _ = fnn.load_weights(run / "checkpoints" / "latest.safetensors")
    first = params["repeat_0"]["dense_0"]
    # resume for two more epochs: nothing changed, so the optimizer state is kept (no reset note)
    lines = []
    longer = fnn.config.parse_config(raw, [f"output.dir={tmp_path / 'run'}", "training.epochs=4"])
    train_run(longer, resume=True, log=lines.append)
    assert not any("optimizer" in line and "reset" in line for line in lines), lines
    params, _ = fnn.load_weights(run / "checkpoints" / "latest.safetensors")
    chex.assert_trees_all_equal(params["repeat_0"]["dense_0"], first)
    assert fnn.summary(net, (-1, 2)).frozen_params == 2 * (8 * 8 + 8)


@pytest.mark.parametrize("command", ["validate", "train"])
def test_an_unknown_layer_in_training_freeze_is_one_line_before_anything(capsys, tmp_path, command):
    from fnn.cli import main
    from tests.test_engine import REPO
    out = tmp_path / "run"
    args = [command, str(REPO / "configs" / "xor.yaml"), "training.freeze=[dense_9]"]
    assert main(args + (["--out", str(out)] if command == "train" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fnn {command}: error: training.freeze: no layer 'dense_9' in the network; "
                   f"did you mean dense_1, dense_0?"]
    assert not out.exists()


_PARALLEL_WORKER = r"""
import sys, chex, jax, optax, numpy as np, fnn
from fnn.train import fit
from tests.blobs import blobs
assert jax.device_count() == 2, jax.devices()
x, y = blobs(96, d=6)
net = fnn.freeze(fnn.serial(fnn.Dense(8), fnn.repeat(fnn.serial(fnn.Dense(8), fnn.Tanh), 2),
                            fnn.Dense(3)), "repeat_0/dense_0")
_, params, state = net.init(jax.random.key(0), (-1, 6))
for mode in ("pmap", "mesh", "fsdp"):
    ts = fit(net, fnn.losses.softmax_cross_entropy, optax.adamw(1e-2, weight_decay=0.5),
             {"x": x, "y": y}, epochs=2, batch_size=32, log=None, init=(params, state),
             parallel=mode).train_state
    chex.assert_trees_all_equal(ts.params["repeat_0"]["dense_0"], params["repeat_0"]["dense_0"])
    assert not np.array_equal(ts.params["dense_1"]["w"], params["dense_1"]["w"]), mode
print("ok")
"""


def test_frozen_leaves_stay_bit_identical_under_pmap_mesh_and_fsdp():
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", _PARALLEL_WORKER], env=env, cwd=root, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# --------------------------------------------------------------------------- EMA with frozen layers

def test_ema_averages_the_trained_layers_and_takes_frozen_ones_as_they_are(tmp_path):
    """One step an epoch, so the callbacks see the params after every step: the trained leaves'
    average equals a NumPy EMA of them (float64), the frozen leaves are the initial params bit
    for bit in what validation, ``best`` and ``fnn.load_weights`` use, and the optimizer state
    holds no average of the frozen leaves at all."""
    from fnn.train import checkpoint as ckpt
    from fnn.train.ema import ema_weights
    decay = 0.8
    net = fnn.freeze(fnn.serial(fnn.Dense(8), fnn.Tanh, fnn.Dense(3)), "dense_0")
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    seen = []
    val = {"x": X[:32], "y": Y[:32]}
    result = fit(net, softmax_cross_entropy, optax.sgd(0.5), DATA, val, epochs=4, batch_size=96,
                 ema=decay, init=(params, state), run=tmp_path, log=None,
                 callbacks=[lambda record, ts: seen.append(jax.device_get(ts.params))])
    average = {k: np.asarray(v, np.float64) for k, v in params["dense_1"].items()}
    for p in seen:
        average = {k: decay * average[k] + (1 - decay) * np.asarray(p["dense_1"][k], np.float64)
                   for k in average}
    ts = result.train_state
    weights = ema_weights(ts.params, ts.opt_state)
    for k in average:
        np.testing.assert_allclose(weights["dense_1"][k], average[k], rtol=1e-5, atol=1e-7)
    assert not np.allclose(weights["dense_1"]["w"], ts.params["dense_1"]["w"])  # an average
    for name in ("latest", "best"):
        path = tmp_path / "checkpoints" / f"{name}.safetensors"
        loaded, _ = fnn.load_weights(path, net, input_shape=(-1, 6))
        chex.assert_trees_all_equal(loaded["dense_0"], params["dense_0"])  # bit-identical
        stored = [k for k in ckpt.load_tree(path) if k.startswith("opt_state")]
        assert not any("dense_0" in k for k in stored), stored  # no average, no state
    chex.assert_trees_all_equal(weights["dense_0"], params["dense_0"])
    scores = fnn.train.evaluate(fnn.train.make_eval_step(net, softmax_cross_entropy), weights,
                                ts.model_state, val)
    assert result.history[-1]["val_loss"] == pytest.approx(scores["loss"], rel=1e-6)


def test_config_ema_with_freeze_trains_and_loads_the_frozen_layer_unchanged(tmp_path):
    from fnn.run import train as train_run
    from fnn.train import checkpoint as ckpt
    raw = {"name": "ema_frz", "seed": 0, "model": [{"Dense": 8}, "Tanh", {"Dense": 3}],
           "optimizer": {"name": "sgd", "learning_rate": 0.5},
           "data": {"name": "circles", "options": {"n": 120, "n_test": 40}, "validation": 0.25},
           "training": {"epochs": 3, "batch_size": 30, "freeze": ["dense_0"],
                        "ema": {"decay": 0.5}},
           "output": {"plots": False, "progress": False}}
    run = train_run(fnn.config.parse_config(raw, [f"output.dir={tmp_path / 'run'}"]), log=None)
    path = run / "checkpoints" / "latest.safetensors"
    arrays, weights_key = ckpt.load_tree(path), ckpt.read_metadata(path)["weights"]
    weights, _ = fnn.load_weights(path)
    for leaf in ("w", "b"):
        assert np.array_equal(weights["dense_0"][leaf], arrays[f"params/dense_0/{leaf}"])
        assert f"{weights_key}/dense_0/{leaf}" not in arrays
        assert np.array_equal(weights["dense_1"][leaf], arrays[f"{weights_key}/dense_1/{leaf}"])
    assert not np.array_equal(weights["dense_1"]["w"], arrays["params/dense_1/w"])


# --------------------------------------------------------------------------- TransformerBlock

SEQ = {"x": X.reshape(len(X), 3, 2), "y": Y}  # the blobs as 3 tokens of 2 features


def _block_net(**kwargs):
    return fnn.serial(fnn.Dense(8), fnn.TransformerBlock(2, 16, **kwargs), fnn.GlobalAvgPool(),
                      fnn.Dense(3))


def test_transformer_block_lists_its_layers_under_the_names_summary_prints():
    net = _block_net()
    printed = [row.name.split("/", 1)[1] for row in fnn.summary(net, (-1, 3, 2)).rows
               if len(row.path) == 3]
    names = ["attention", "norm1", "norm2", "mlp_in", "mlp_out"]
    assert printed == [f"transformer_block_0/{n}" for n in names]
    found = [(p, layer.kind) for p, layer in fnn.core.layer_paths(net) if len(p) == 2]
    assert found == [(("transformer_block_0", n), k) for n, k in zip(
        names, ["MultiHeadAttention", "LayerNorm", "LayerNorm", "Dense", "Dense"])]
    for name in printed:
        assert frozen_paths(fnn.freeze(net, name)) == [tuple(name.split("/"))]


@pytest.mark.parametrize("name", ["attention", "norm2", "mlp_out"])
def test_a_frozen_transformer_block_layer_is_bit_identical_after_adamw(name):
    net = _block_net()
    frozen = fnn.freeze(net, name)
    path = ("transformer_block_0", name)
    # freezing keeps every key and every initial value (checkpoints of the block still load)
    _, before, state = net.init(jax.random.key(0), (-1, 3, 2))
    _, params, _ = frozen.init(jax.random.key(0), (-1, 3, 2))
    chex.assert_trees_all_equal(params, before)
    ts = fit(frozen, softmax_cross_entropy, optax.adamw(1e-2, weight_decay=0.5), SEQ, epochs=3,
             batch_size=32, log=None, init=(params, state)).train_state
    _assert_frozen(frozen, params, ts.params, path)
    block, trained = params["transformer_block_0"], ts.params["transformer_block_0"]
    for other in (k for k in block if k != name):  # the block's other layers trained
        assert any(not np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(trained[other]), jax.tree_util.tree_leaves(block[other]))), other
