"""A loss that explodes (past ``divergence_factor`` times the loss at the start of training)
stops the run naming the step, and a diverged epoch never becomes a checkpoint; metrics.jsonl is strict
JSON (NaN and Inf written as null)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.train import fit
from fnn.train.loop import TrainingDiverged
from fnn.train import checkpoint as ckpt


def _data():
    # x = 1, y = 0: with one Dense(1) unit s = w + b, the loss is s^2 and plain gradient
    # descent with learning rate 1 maps s -> s - 1 * (2s + 2s) = -3s: the loss grows 9x a step.
    x = np.ones((4, 1), np.float32)
    return {"x": x, "y": np.zeros((4, 1), np.float32)}


def _mse(outputs, targets, *, reduction="none"):
    return fnn.losses.mse(outputs, targets, reduction=reduction)


def test_an_exploding_loss_stops_the_run_at_its_step(tmp_path):
    data = _data()
    with pytest.raises(TrainingDiverged) as info:
        fit(fnn.Dense(1), _mse, optax.sgd(1.0), data, data, epochs=8, batch_size=4,
            run=tmp_path, divergence_factor=100.0, log=None)
    # one step per epoch: losses l1, 9 l1, 81 l1, 729 l1: the 4th step is the first past 100 l1
    message = str(info.value)
    assert "exploded" in message and "at step 4 (epoch 4)" in message
    assert "100 x the loss at the start of training" in message
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]  # the diverged epoch is not recorded
    assert ckpt.read_metadata(tmp_path / "checkpoints" / "latest.safetensors")[
        "progress"]["epoch"] == 2  # epoch index 2 = the third epoch, the last good one
    # val loss rises from the first epoch on: best is epoch 1, never a diverged one
    assert ckpt.read_metadata(tmp_path / "checkpoints" / "best.safetensors")[
        "progress"]["best_epoch"] == 1


def test_the_divergence_check_can_be_turned_off():
    data = _data()
    result = fit(fnn.Dense(1), _mse, optax.sgd(1.0), data, epochs=5, batch_size=4,
                 divergence_factor=None, log=None)
    losses = [r["train_loss"] for r in result.history]
    np.testing.assert_allclose(np.array(losses[1:]) / np.array(losses[:-1]), 9.0, rtol=1e-4)


def test_metrics_jsonl_is_strict_json_with_null_for_nan(tmp_path):
    data = _data()
    nan_metric = {"odd": lambda outputs, targets: jnp.full((outputs.shape[0],), jnp.nan)}
    fit(fnn.Dense(1), _mse, optax.sgd(0.01), data, data, epochs=2, batch_size=4,
        metrics=nan_metric, run=tmp_path, log=None)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line, parse_constant=refuse)
        assert record["train_odd"] is None and record["val_odd"] is None
        assert isinstance(record["train_loss"], float)


def test_the_message_names_a_step_checkpoint_as_the_last_good_one(tmp_path):
    data = _data()
    single = {k: np.repeat(v, 4, axis=0)[:4] for k, v in data.items()}
    # batch 1: four steps an epoch, the loss 9x a step; a step checkpoint every 2 steps holds
    # step 2, and step 4 (729 x the first loss) is the first past 100x
    with pytest.raises(TrainingDiverged) as info:
        fit(fnn.Dense(1), _mse, optax.sgd(1.0), single, epochs=2, batch_size=1,
            run=fnn.train.RunOptions(tmp_path, checkpoint=fnn.train.Checkpointing(every_steps=2)),
            divergence_factor=100.0, log=None)
    message = str(info.value)
    assert "at step 4 (epoch 1)" in message
    assert (f"the last good checkpoint is {tmp_path / 'checkpoints' / 'latest.safetensors'} "
            f"(step 2, 2 steps into epoch 1)") in message
