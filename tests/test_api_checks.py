"""The Python engine API refuses what would fail late (issue 19), and fnn says its version.

* ``evaluate``/``predict``: empty data and batch sizes that are not ints >= 1 are one-line
  ``ValueError``s (not ``range() arg 3 must not be zero``);
* ``fit`` over a generator for several epochs without ``steps_per_epoch`` is refused when
  ``fit`` is called, before anything is written (an endless one must not hang);
* a train state a callback keeps, or one passed in, stays usable after ``fit`` (the steps
  donate their own buffers, never the caller's);
* ``fit``'s run folder is one ``RunOptions`` record (``run=``), checked field by field in one
  line; the keywords it replaced are Python's ordinary ``TypeError``;
* ``fnn.__version__`` (the one in pyproject.toml), ``fnn --version``, and the version each
  checkpoint records.
"""

from __future__ import annotations

import itertools
import json
import tomllib
import warnings
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import safetensors.numpy

import fnn
from fnn import cli
from fnn.train import checkpoint as ckpt
from fnn.train.state import init_train_state

ROOT = Path(__file__).resolve().parent.parent
NET = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(2))
LOSS = fnn.losses.softmax_cross_entropy


def _data(n: int = 48, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}


@pytest.fixture(scope="module")
def weights():
    _, params, state = NET.init(jax.random.key(0), (-1, 3))
    return params, state


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "range()" not in text, text
    return text


# --------------------------------------------------------------------------- evaluate, predict

EMPTY = {"x": np.zeros((0, 3), np.float32), "y": np.zeros(0, np.int32)}


def test_evaluate_on_zero_examples_is_refused_in_one_line(weights):
    with pytest.raises(ValueError) as e:
        fnn.train.evaluate(NET, *weights, EMPTY, LOSS)
    assert _one_line(e.value) == "evaluate: data: no examples (the arrays have 0 rows)"
    with pytest.raises(ValueError) as e:
        fnn.train.evaluate(NET, *weights, [], LOSS)
    assert _one_line(e.value) == "evaluate: data: the iterable gave no batches"


def test_predict_on_zero_examples_is_refused_in_one_line(weights):
    with pytest.raises(ValueError) as e:
        fnn.train.predict(NET, *weights, EMPTY["x"])
    assert _one_line(e.value) == "predict: x: no examples (the arrays have 0 rows)"
    with pytest.raises(ValueError) as e:
        fnn.train.predict(NET, *weights, iter([]))
    assert "predict: x gave no batches" in _one_line(e.value)


@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True, "32", None])
def test_a_batch_size_that_is_not_a_positive_int_is_refused(weights, batch_size):
    for name, call in (("evaluate", lambda: fnn.train.evaluate(NET, *weights, _data(), LOSS,
                                                               batch_size=batch_size)),
                       ("predict", lambda: fnn.train.predict(NET, *weights, _data()["x"],
                                                             batch_size=batch_size))):
        with pytest.raises(ValueError) as e:
            call()
        assert _one_line(e.value) == (f"{name}: batch_size must be an int >= 1, got "
                                      f"{batch_size!r}")


def test_a_numpy_int_batch_size_and_one_larger_than_the_data_work(weights):
    params, state = weights
    data = _data(5)
    x = np.asarray(data["x"])
    want = np.asarray(NET.apply(params, state, x)[0])  # the network applied once, unbatched
    got = fnn.train.predict(NET, params, state, x, batch_size=np.int64(2))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fnn.train.predict(NET, params, state, x, batch_size=1000), want,
                               rtol=1e-6, atol=1e-6)
    logits = want - want.max(axis=1, keepdims=True)  # cross-entropy of the outputs, in NumPy
    nll = np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(5), data["y"]]
    got = fnn.train.evaluate(NET, params, state, data, LOSS, batch_size=np.int32(3))
    assert got["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)


# --------------------------------------------------------------------------- fit over generators

def _fit(train_data, **kw):
    return fnn.train.fit(NET, LOSS, optax.adam(1e-2), train_data, log=None, **kw)


def _endless(drawn: list) -> iter:
    data = _data()

    def stream():
        for i in itertools.count():
            drawn.append(i)
            if len(drawn) > 10_000:  # a broken check would read this forever: fail instead
                raise RuntimeError("fit read an endless generator without steps_per_epoch")
            yield {"x": data["x"][:8], "y": data["y"][:8]}
    return stream()


@pytest.mark.parametrize("endless", [False, True], ids=["finite", "endless"])
def test_fit_over_a_generator_for_several_epochs_needs_steps_per_epoch_at_the_call(
        tmp_path, endless):
    drawn: list = []
    data = _data()
    gen = (_endless(drawn) if endless else
           ({"x": data["x"][i:i + 8], "y": data["y"][i:i + 8]} for i in range(0, 48, 8)))
    with pytest.raises(ValueError) as e:
        _fit(gen, epochs=3, run=tmp_path / "run")
    assert _one_line(e.value).startswith("fit: train_data is a generator (a one-shot iterator) "
                                         "and epochs is 3: pass steps_per_epoch=N")
    assert drawn == [] and not (tmp_path / "run").exists()  # nothing read, nothing written


def test_a_generator_trains_one_epoch_or_with_steps_per_epoch(tmp_path):
    data = _data()
    one = _fit(({"x": data["x"][i:i + 8], "y": data["y"][i:i + 8]} for i in range(0, 48, 8)),
               epochs=1)
    assert [r["step"] for r in one.history] == [6]
    drawn: list = []
    result = _fit(_endless(drawn), epochs=3, steps_per_epoch=4)
    assert [r["step"] for r in result.history] == [4, 8, 12]


def test_a_one_shot_validation_generator_for_several_epochs_is_refused():
    data = _data()
    val = ({"x": data["x"][i:i + 8], "y": data["y"][i:i + 8]} for i in range(0, 16, 8))
    with pytest.raises(ValueError) as e:
        _fit(data, val_data=val, epochs=2)
    assert _one_line(e.value).startswith("fit: val_data is a generator")


@pytest.mark.parametrize("epochs", [0, 2.0, None])
def test_fit_refuses_epochs_that_are_not_a_positive_int(epochs):
    with pytest.raises(ValueError) as e:
        _fit(_data(), epochs=epochs)
    assert _one_line(e.value) == f"fit: epochs must be an int >= 1, got {epochs!r}"


def test_fit_refuses_a_bad_eval_batch_size_before_the_first_epoch(tmp_path):
    with pytest.raises(ValueError) as e:
        _fit(_data(), val_data=_data(16, seed=1), epochs=2, eval_batch_size=0,
             run=tmp_path / "run")
    assert _one_line(e.value) == "fit: eval_batch_size must be an int >= 1, got 0"
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- donated buffers

@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_train_states_a_callback_keeps_stay_usable_and_right_after_fit(mode):
    kept = []
    result = _fit(_data(), epochs=3, batch_size=16, mode=mode,
                  callbacks=[lambda record, ts: kept.append(ts)])
    leaves = [np.asarray(leaf) for ts in kept for leaf in jax.tree_util.tree_leaves(ts.params)]
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)  # none deleted
    # the state after epoch 1 is that of an independent one-epoch run with the same seed
    once = _fit(_data(), epochs=1, batch_size=16, mode=mode)
    for a, b in zip(jax.tree_util.tree_leaves(kept[0].params),
                    jax.tree_util.tree_leaves(once.train_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(kept[-1]), jax.tree_util.tree_leaves(
            result.train_state)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(kept[0].step) == 3 and int(kept[-1].step) == 9


def test_a_train_state_given_to_fit_stays_usable():
    _, ts = init_train_state(NET, optax.adam(1e-2), (-1, 3), jax.random.key(0))
    before = [np.asarray(leaf).copy() for leaf in jax.tree_util.tree_leaves(ts.params)]
    _fit(_data(), epochs=2, init=ts)
    for want, leaf in zip(before, jax.tree_util.tree_leaves(ts.params)):
        np.testing.assert_array_equal(np.asarray(leaf), want)  # not deleted, not changed


# --------------------------------------------------------------------------- RunOptions

@pytest.mark.parametrize("kw, message", [
    ({"log_every": 0}, "RunOptions.log_every: must be an int >= 1, got 0"),
    ({"diagnostics": 2.5}, "RunOptions.diagnostics: must be an int >= 1 (or None), got 2.5"),
    ({"profile": True}, "RunOptions.profile: must be an int >= 1 (or None), got True"),
    ({"resume": "yes"}, "RunOptions.resume: must be True or False, got 'yes'"),
    ({"metadata": [1]}, "RunOptions.metadata: must be a dict (or None), got list"),
    ({"checkpoint": 100}, "RunOptions.checkpoint: must be a fnn.train.Checkpointing (or None), "
                          "got 100"),
    ({"trackers": "csv"}, "RunOptions.trackers: must be a list of tracker names or objects, "
                          "got 'csv' (e.g. trackers=['csv'])"),
])
def test_run_options_refuse_a_bad_field_in_one_line(kw, message):
    with pytest.raises(ValueError) as e:
        fnn.train.RunOptions("runs/x", **kw)
    assert str(e.value) == message


def test_run_takes_a_folder_or_run_options_and_the_old_keywords_are_gone(tmp_path):
    result = _fit(_data(), epochs=1, run=str(tmp_path / "a"))         # a str: RunOptions(str)
    assert (tmp_path / "a" / "checkpoints" / "latest.safetensors").exists()
    resumed = _fit(_data(), epochs=2, run=fnn.train.RunOptions(tmp_path / "a", resume=True),
                   parallel=fnn.train.DataParallel("mesh", 1))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert result.history[0] == resumed.history[0]                    # read back, not rerun
    with pytest.raises(ValueError, match="^fit: run must be a folder .str or Path. or a "
                                         "fnn.train.RunOptions, got int$"):
        _fit(_data(), epochs=1, run=3)
    for old in ("run_dir", "resume", "devices", "train_state", "checkpoint", "trackers"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{old}'"):
            _fit(_data(), epochs=1, **{old: None})


# --------------------------------------------------------------------------- releases

def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_is_the_one_in_pyproject():
    assert fnn.__version__ == _pyproject_version()


def test_fnn_version_prints_it(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"fnn {_pyproject_version()}\n"


def test_checkpoints_record_the_version_that_wrote_them(tmp_path):
    _, params, state = NET.init(jax.random.key(0), (-1, 3))
    fnn.save(tmp_path / "model.safetensors", NET, params, state, input_shape=(-1, 3))
    fnn.save_weights(tmp_path / "weights.safetensors", params, state)
    result = _fit(_data(), epochs=1, run=tmp_path / "run")
    for path in (tmp_path / "model.safetensors", tmp_path / "weights.safetensors",
                 tmp_path / "run" / "checkpoints" / "latest.safetensors"):
        assert ckpt.written_by(path) == _pyproject_version()
        assert ckpt.read_metadata(path)["fnn_version"] == _pyproject_version()
    assert result.history


def test_a_checkpoint_written_before_versions_were_recorded_still_loads(tmp_path):
    _, params, state = NET.init(jax.random.key(0), (-1, 3))
    tensors = {f"params/{layer}/{k}": np.asarray(v) for layer, leaf in params.items()
               for k, v in leaf.items()}
    old = tmp_path / "old.safetensors"  # as fnn 0.1 wrote them: no checksums, no version
    safetensors.numpy.save_file(tensors, str(old), metadata={
        "format": "fnn-checkpoint-1", "kind": json.dumps("weights")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ckpt.UnverifiedCheckpointWarning)
        assert ckpt.written_by(old) is None
        loaded, _ = fnn.load_weights(old)
    np.testing.assert_array_equal(loaded["dense_0"]["w"], np.asarray(params["dense_0"]["w"]))
