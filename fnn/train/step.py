"""Pure training and evaluation steps, and a whole epoch as one compiled ``lax.scan``.

A batch is a dict ``{"x": inputs, "y": targets}`` with an optional ``"mask"`` of shape
``(batch,)`` (1 for real examples, 0 for padding). Losses are reduced as exact weighted means:
per-example losses are summed with the mask and divided by the number of real examples,
counted across devices when the step runs under ``pmap`` with ``axis_name``, so a padded or
split batch gives the same gradient as the whole batch.

``loss`` is ``loss(outputs, targets, *, reduction="none") -> (batch,)`` (all of ``fnn.losses``
qualify) or a loss as users write it, ``loss(outputs, targets) -> scalar`` (a mean over the
batch; see :mod:`fnn.train.contract`); ``metrics`` maps names to functions of either form
(e.g. :func:`correct`). ``inputs`` and ``targets`` may be any pytrees of arrays.

Example:
    >>> from fnn.train.state import init_train_state
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))
    >>> _, ts = init_train_state(net, optax.adam(1e-3), (-1, 4), jax.random.key(0))
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, size=8)
    >>> step = make_train_step(net, fnn.losses.softmax_cross_entropy, optax.adam(1e-3),
    ...                        metrics={"accuracy": correct})
    >>> ts, metrics = step(ts, {"x": x, "y": y})
    >>> int(ts.step), sorted(metrics)
    (1, ['accuracy', 'loss', 'objective'])
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fnn.metrics import binary_correct, correct  # noqa: F401  (re-exported as fnn.train.correct)
from fnn.core import Layer
from fnn.finetune import frozen_mask, frozen_paths
from fnn.layers.conv import straight_line_gradients
from fnn.optim.learning_rate import learning_rate_of
from fnn.train.contract import per_example
from fnn.train.keys import augment_per_example, example_keys
from fnn.train.state import TrainState

__all__ = ["make_train_step", "make_eval_step", "make_train_epoch", "epoch_fn", "correct",
           "binary_correct", "train_step_fn", "eval_step_fn"]

Batch = Mapping[str, jax.Array]
Metric = Callable[[jax.Array, jax.Array], jax.Array]




def _mask(batch: Batch) -> jax.Array:
    x = batch["x"]
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    mask = batch.get("mask")
    return jnp.ones((n,), jnp.float32) if mask is None else mask.astype(jnp.float32)


def _per_example(values: jax.Array, n: int, what: str) -> jax.Array:
    if values.ndim == 0 or values.shape[0] != n:
        raise ValueError(f"{what} must return one value per example (shape ({n},)) or a scalar "
                         f"batch mean; got shape {values.shape}")
    return values.reshape(n, -1).mean(axis=-1) if values.ndim > 1 else values


def train_step_fn(net: Layer, loss: Callable[..., jax.Array],
                  optimizer: optax.GradientTransformation, *,
                  regularizer: Callable[[Any], jax.Array] | None = None,
                  constraint: Callable[[Any], Any] | None = None,
                  metrics: Mapping[str, Metric] | None = None,
                  augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                  axis_name: str | None = None, accumulate: int = 1,
                  stats_every: int | None = None
                  ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The un-jitted step ``(train_state, batch) -> (train_state, metrics)``; see :func:`make_train_step`.

    ``stats_every=N``: the metrics also hold ``"grad_norm"``, the global L2 norm
    (``optax.tree.norm``, formerly ``optax.global_norm``) of the gradient handed to the
    optimizer (summed over devices and micro-batches, the regularizer's included, before any
    clipping in the optimizer), the params of :func:`fnn.freeze` layers left out (those an
    optimizer freezes itself, the config's ``optimizer.freeze``, are counted: it receives
    their gradient and zeroes it), at the steps whose number (counted from 1) is a multiple
    of ``N`` and NaN at the others (a ``lax.cond``: the reduction runs on those steps only; on
    the CPU a norm over 200k weights costs a fifth of a small MLP's step); and
    ``"learning_rate"``, the rate this
    step's update used (:func:`fnn.optim.learning_rate_of` of the new optimizer state; absent
    when the optimizer holds none), at every step. The params are the same bit for bit.

    ``accumulate=K``: the batch is split into K micro-batches of consecutive rows, run one after
    another in a ``lax.scan`` (the memory of one micro-batch), and their gradients summed into
    one update: the large batch's mean loss and gradient, to float rounding. Each example keeps
    its key of the large batch (its index in the global batch), so dropout draws the large
    batch's masks; batch norm normalizes each micro-batch by its own statistics and updates its
    running averages once per micro-batch (so a net with batch norm differs from the large
    batch).
    """
    metrics = {name: per_example(fn) for name, fn in (metrics or {}).items()}
    loss = per_example(loss)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate: must be an int >= 1, got {accumulate!r}")
    if stats_every is not None and (isinstance(stats_every, bool)
                                    or not isinstance(stats_every, int) or stats_every < 1):
        raise ValueError(f"stats_every: must be an int >= 1 or None, got {stats_every!r}")
    has_frozen = stats_every is not None and bool(frozen_paths(net))

    def grad_norm(grads):
        if has_frozen:
            grads = jax.tree_util.tree_map(lambda frozen, g: jnp.zeros_like(g) if frozen else g,
                                           frozen_mask(net, grads), grads)
        return optax.tree.norm(grads).astype(jnp.float32)

    def data_loss(params, model_state, x, y, mask, keys, count):
        """The masked mean loss over ``count`` examples, with the outputs and new model state."""
        outputs, new_state = net.apply(params, model_state, x, rng=keys, train=True)
        values = _per_example(loss(outputs, y), mask.shape[0], "the loss")
        return jnp.sum(values * mask) / count, (outputs, new_state)

    def metric_means(outputs, y, mask, count):
        return {name: jnp.sum(_per_example(metric(outputs, y), mask.shape[0], name) * mask) / count
                for name, metric in metrics.items()}

    def accumulated(ts, batch, mask, keys, count):
        """Data loss, metric means and model state over K micro-batches; gradients summed."""
        n = mask.shape[0]
        if n % accumulate:
            raise ValueError(f"training.accumulate: a batch of {n} examples does not split into "
                             f"{accumulate} micro-batches; use a batch size divisible by "
                             f"{accumulate}")
        micro = jax.tree_util.tree_map(
            lambda a: a.reshape(accumulate, a.shape[0] // accumulate, *a.shape[1:]),
            {"x": batch["x"], "y": batch["y"], "mask": mask, "keys": keys})

        def body(carry, mb):
            grads, model_state = carry
            (part, (outputs, new_state)), g = jax.value_and_grad(data_loss, has_aux=True)(
                ts.params, model_state, mb["x"], mb["y"], mb["mask"], mb["keys"], count)
            parts = {"loss": part, **metric_means(outputs, mb["y"], mb["mask"], count)}
            return (jax.tree_util.tree_map(jnp.add, grads, g), new_state), parts

        zeros = jax.tree_util.tree_map(jnp.zeros_like, ts.params)
        (grads, new_state), parts = lax.scan(body, (zeros, ts.model_state), micro)
        return grads, new_state, {k: v.sum() for k, v in parts.items()}

    def step(ts: TrainState, batch: Batch):
        rng, step_rng = jax.random.split(ts.rng)
        # one key per example, by its index in the global batch: the same draws on any devices
        rows = jax.tree_util.tree_leaves(batch["x"])[0].shape[0]
        if augment is not None:  # training batches only, on the device, inside the step
            step_rng, aug_rng = jax.random.split(step_rng)
            batch = {**batch, "x": augment_per_example(
                augment, example_keys(aug_rng, rows, axis_name), batch["x"])}
        keys = example_keys(step_rng, rows, axis_name)
        mask = _mask(batch)
        count = mask.sum()
        devices = 1.0
        if axis_name is not None:
            count = lax.psum(count, axis_name)
            devices = lax.psum(1.0, axis_name)
        count = jnp.maximum(count, 1.0)

        def objective(params):
            mean, (outputs, new_state) = data_loss(params, ts.model_state, batch["x"],
                                                   batch["y"], mask, keys, count)
            total = mean
            if regularizer is not None:
                total = total + regularizer(params) / devices
            return total, (mean, outputs, new_state)

        if accumulate == 1:
            (total, (mean, outputs, new_state)), grads = jax.value_and_grad(
                objective, has_aux=True)(ts.params)
            out = {"loss": mean, "objective": total,
                   **metric_means(outputs, batch["y"], mask, count)}
        else:
            grads, new_state, parts = accumulated(ts, batch, mask, keys, count)
            total = parts["loss"]
            if regularizer is not None:  # once per update, not per micro-batch
                penalty, penalty_grads = jax.value_and_grad(
                    lambda p: regularizer(p) / devices)(ts.params)
                total = total + penalty
                grads = jax.tree_util.tree_map(jnp.add, grads, penalty_grads)
            out = {"loss": parts.pop("loss"), "objective": total, **parts}
        if axis_name is not None:
            grads = lax.psum(grads, axis_name)
            out = lax.psum(out, axis_name)
        updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
        params = optax.apply_updates(ts.params, updates)
        if constraint is not None:
            params = constraint(params)
        if stats_every is not None:  # after the psum: the same on every device
            out["grad_norm"] = lax.cond((ts.step + 1) % stats_every == 0, grad_norm,
                                        lambda g: jnp.float32(jnp.nan), grads)
            lr = learning_rate_of(opt_state)
            if lr is not None:
                out["learning_rate"] = jnp.asarray(lr)
        return TrainState(params, new_state, opt_state, ts.step + 1, rng), out

    return step


def make_train_step(net: Layer, loss: Callable[..., jax.Array],
                    optimizer: optax.GradientTransformation, *,
                    regularizer: Callable[[Any], jax.Array] | None = None,
                    constraint: Callable[[Any], Any] | None = None,
                    metrics: Mapping[str, Metric] | None = None,
                    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
                    donate: bool = True) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A jit-compiled training step ``(train_state, batch) -> (train_state, metrics)``.

    One step: forward in training mode (dropout on, batch statistics), the mean loss over the
    batch's real examples plus ``regularizer(params)``, gradients, one optax update, then
    ``constraint`` (e.g. max-norm) on the new params. Full-batch gradient descent, mini-batch
    and per-example SGD are this same step with different batch sizes.

    Args:
        net: the network.
        loss: ``loss(outputs, targets, *, reduction="none") -> (batch,)``, or
            ``loss(outputs, targets) -> scalar`` (a batch mean; see :mod:`fnn.train.contract`).
        optimizer: an optax transformation.
        regularizer: ``params -> scalar`` added to the objective (e.g. ``1e-4 * l2(params)``).
        constraint: ``params -> params`` applied after each update (e.g. max-norm).
        metrics: name -> per-example metric, averaged like the loss.
        augment: ``(rng, x) -> x`` applied to the training inputs inside the step, to each
            example alone with a key of its own (:func:`fnn.train.keys.augment_per_example`).
        donate: donate the input train state's buffers to the output (saves a copy per step;
            the state passed in must not be used again).

    Returns:
        The step; ``metrics`` holds ``"loss"`` (data loss), ``"objective"`` (with the
        regularizer) and each named metric, as device scalars.
    """
    # compiled on its own, not scanned: XLA's convolution gradient is the faster one here
    fn = train_step_fn(straight_line_gradients(net), loss, optimizer, regularizer=regularizer,
                       constraint=constraint, metrics=metrics, augment=augment)
    return jax.jit(fn, donate_argnums=(0,) if donate else ())


def eval_step_fn(net: Layer, loss: Callable[..., jax.Array], *,
                 metrics: Mapping[str, Metric] | None = None,
                 axis_name: str | None = None) -> Callable[[Any, Any, Batch], dict]:
    """The un-jitted eval step ``(params, model_state, batch) -> sums``; see :func:`make_eval_step`."""
    metrics = {name: per_example(fn) for name, fn in (metrics or {}).items()}
    loss = per_example(loss)

    def step(params, model_state, batch):
        outputs, _ = net.apply(params, model_state, batch["x"], train=False)
        mask = _mask(batch)
        sums = {"count": mask.sum(),
                "loss": jnp.sum(_per_example(loss(outputs, batch["y"]), mask.shape[0], "the loss")
                                * mask)}
        for name, metric in metrics.items():
            sums[name] = jnp.sum(_per_example(metric(outputs, batch["y"]), mask.shape[0], name)
                                 * mask)
        if axis_name is not None:
            sums = lax.psum(sums, axis_name)
        return sums

    return step


def make_eval_step(net: Layer, loss: Callable[..., jax.Array], *,
                   metrics: Mapping[str, Metric] | None = None) -> Callable[[Any, Any, Batch], dict]:
    """A jit-compiled eval step ``(params, model_state, batch) -> sums``.

    Runs the network in test mode and returns *sums* over the batch's real examples
    (``"count"``, ``"loss"`` and each metric), so a whole evaluation set split into batches,
    the last one padded with a zero mask, adds up to exact means: ``sums[k] / sums["count"]``.
    """
    return jax.jit(eval_step_fn(net, loss, metrics=metrics))


def epoch_fn(step_fn: Callable[[TrainState, Batch], tuple[TrainState, dict]],
             num_examples: int, batch_size: int, *, shuffle: bool = True,
             rows: int | None = None, first_row: Callable[[], jax.Array] | None = None,
             constrain: Callable[[Batch], Batch] | None = None, chunk: int | None = None
             ) -> Callable[..., tuple[TrainState, dict]]:
    """The un-jitted epoch of :func:`make_train_epoch`: a ``lax.scan`` of ``step_fn`` over batches.

    Step ``i`` takes rows ``order[i * batch_size + first_row() : ... + rows]`` of the data, with
    ``order`` drawn from the epoch key. By default (``rows=batch_size``, ``first_row=0``) that is
    the whole global batch; a data-parallel device takes its own slice of it instead
    (``fnn.train.parallel``), and ``constrain`` may place the gathered batch (a sharding).
    With ``chunk``, the function is ``epoch(ts, data, epoch_key, first_step)`` and runs the
    ``chunk`` steps ``first_step, first_step + 1, ...`` of the epoch (the same batches as the
    whole epoch's scan visits at those steps): an epoch in pieces, to stop or checkpoint between.
    """
    steps = num_examples // batch_size
    if steps < 1:
        raise ValueError(f"batch size {batch_size} is larger than the {num_examples} examples")
    rows = batch_size if rows is None else rows

    def epoch(ts: TrainState, data: Batch, epoch_key: jax.Array, first_step: Any = 0):
        order = (jax.random.permutation(epoch_key, num_examples) if shuffle
                 else jnp.arange(num_examples))
        offset = 0 if first_row is None else first_row()

        def body(ts, i):
            idx = lax.dynamic_slice_in_dim(order, i * batch_size + offset, rows)
            batch = jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), dict(data))
            if constrain is not None:
                batch = constrain(batch)
            return step_fn(ts, batch)

        return lax.scan(body, ts, jnp.arange(steps) if chunk is None
                        else jnp.arange(chunk) + first_step)

    return epoch


def make_train_epoch(step_fn: Callable[[TrainState, Batch], tuple[TrainState, dict]],
                     num_examples: int, batch_size: int, *, shuffle: bool = True,
                     donate: bool = True, chunk: int | None = None
                     ) -> Callable[..., tuple[TrainState, dict]]:
    """A whole epoch as one compiled ``lax.scan`` over steps, shuffling included.

    The data (a dict of arrays with ``num_examples`` rows) lives on the device; each epoch
    draws a permutation from ``epoch_key`` and takes ``num_examples // batch_size`` batches
    from it (the remainder is left out of this epoch's updates; it is a different set of
    examples each epoch). No per-step Python dispatch.

    Args:
        step_fn: an un-jitted step, e.g. from :func:`train_step_fn`.

    Returns:
        ``epoch(train_state, data, epoch_key) -> (train_state, metrics)`` with each metric
        stacked over the epoch's steps, shape ``(steps,)``; jit-compiled, state donated.
        With ``chunk``: ``epoch(train_state, data, epoch_key, first_step)`` runs ``chunk``
        steps from ``first_step`` (see :func:`epoch_fn`).
    """
    return jax.jit(epoch_fn(step_fn, num_examples, batch_size, shuffle=shuffle, chunk=chunk),
                   donate_argnums=(0,) if donate else ())
