"""``fnn doctor``: read a run folder and say what went wrong in it, where, and the fix.

:func:`examine` reads a run's ``metrics.jsonl`` (one record per epoch), ``diagnostics.jsonl``
(per-layer gradient norms, update ratios, dead and saturated units: ``training.diagnostics.every``),
``doctor.json`` (where a non-finite loss came from, written when ``fit`` stops on one) and, when
it can rebuild the network (the checkpoint's spec) and has validation data (given, or the run's
``config.yaml``), its best checkpoint: predictions for the data checks and batch-norm statistics
in both modes. It returns :class:`Finding` records, most severe first; :func:`format_findings`
prints them. Each threshold below is a named constant with the reason for its value.

:func:`localize` (from :mod:`fnn.localize`) names the layer where a NaN/Inf first appears in one
step; :class:`LiveHints` prints certain findings during training.

Example:
    >>> import tempfile, json, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> losses = [(2.0, 2.0), (1.0, 1.1), (0.5, 1.0), (0.2, 1.3), (0.1, 1.6)]
    >>> _ = (run / "metrics.jsonl").write_text("".join(json.dumps(
    ...     {"epoch": i + 1, "train_loss": t, "val_loss": v}) + "\\n" for i, (t, v) in enumerate(losses)))
    >>> findings = examine(run)
    >>> [(f.code, f.severity) for f in findings if f.severity != "info"]
    [('overfitting', 'warning')]
    >>> print(findings[0].evidence)
    validation loss lowest at epoch 3 (1), 1.6 at epoch 5 (+60%) while the training loss fell from 0.5 to 0.1
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from fnn.localize import Fault, localize

__all__ = ["examine", "Finding", "format_findings", "localize", "Fault", "LiveHints",
           "RunFolderMissing", "SEVERITIES"]

SEVERITIES = ("error", "warning", "info")

# --------------------------------------------------------------------------- thresholds
# Gradient norm of the first weight layer over the last one: three orders of magnitude is far
# beyond what depth alone does to a well-initialised net (He/Glorot keep it within ~10x), and
# at 1e-3 the first layers learn a thousand times slower than the last.
VANISHING_RATIO = 1e-3
# The same, upwards: the first layers get steps a thousand times larger than the last.
EXPLODING_RATIO = 1e3
# A ReLU layer with three quarters of its units dead for a whole batch works at a quarter of
# its width: a warning. Half dead is reported as info: a trained MNIST CNN's 128-unit dense
# layer had 57% of its units dead after one epoch (docs/DOCTOR.md) and still learned well.
DEAD_WARNING = 0.75
DEAD_INFO = 0.5
# Tanh/sigmoid outputs within 1% of the ends of the range pass almost no gradient (slope < 0.02);
# half of a layer's outputs there means half its units barely learn.
SATURATED_WARNING = 0.5
# ||update|| / ||w|| per step: ~1e-3 is the usual healthy value (Karpathy); 0.3 means the
# weights change by a third each step, past any stable step size.
LR_HIGH_RATIO = 0.3
# A thousand times below 1e-3: the weights would take ~1e6 steps to change by their own size.
LR_LOW_RATIO = 1e-6
# The epoch-mean training loss of a healthy run falls nearly every epoch; rising by 10% from one
# epoch to the next in a third of the epochs is a step size that overshoots (oscillation).
OSCILLATION_RISE = 0.10
OSCILLATION_SHARE = 1 / 3
# Training loss that moves less than 1% from the first epoch to the last has not learned.
FLAT_LOSS = 0.01
# The final training loss above the first epoch's (by this factor): training went backwards.
RISING_LOSS = 1.05
# Validation loss 10% over its minimum, with the training loss still falling: overfitting
# (smaller rises are the noise of a validation set of a few hundred examples).
OVERFIT_RISE = 0.10
# Batch-norm statistics lag when the loss in inference mode (running statistics) is this many
# times the loss on the same examples in training mode (batch statistics): same weights, same
# examples, so only the statistics differ (a settled net is within ~10% either way).
BN_LAG_FACTOR = 1.5
# One class in at least 99% of the predictions: the network predicts a constant.
CONSTANT_SHARE = 0.99
# Validation accuracy within 5 points of the best constant guess: the network learned nothing
# that carries over (labels shuffled or misaligned, when the training accuracy rose).
CHANCE_MARGIN = 0.05
# Validation at chance but training accuracy 20 points above it: the training labels were
# learned by heart, so they carry no rule that holds on other examples.
MEMORISED_MARGIN = 0.20
# Findings that explain a network predicting a constant or at chance by themselves.
CAUSES = frozenset({"vanishing_gradients", "exploding_gradients", "dead_relu",
                    "learning_rate_high", "learning_rate_low", "batch_norm_lag"})
# The largest class at least 10 times the smallest: accuracy is then dominated by the big one.
IMBALANCE_RATIO = 10.0
# A class with at least 5% of the validation set that is never predicted is a real loss of
# recall, not the noise of a rare class.
NEVER_PREDICTED_SHARE = 0.05
# Fewer epochs than this give no trend to judge a loss curve by.
MIN_EPOCHS = 3


class RunFolderMissing(ValueError):
    """The run folder does not exist, holds no run, or a file of it cannot be read (``fnn
    doctor``'s usage error: one line naming the file)."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing the doctor found.

    Attributes:
        code: a stable name (``"vanishing_gradients"``, ``"dead_relu"``, ...).
        severity: ``"error"``, ``"warning"`` or ``"info"`` (what it could not judge).
        title: one line: what is wrong.
        evidence: the numbers, layers and epochs it rests on.
        fix: what to change, in fnn's terms (config keys).
    """

    code: str
    severity: str
    title: str
    evidence: str
    fix: str = ""


def _g(x: float) -> str:
    return f"{x:.3g}"


def _value(v: Any, q: str = "q100") -> float | None:
    """A diagnostics value: a float, or the quantile ``q`` of a repeated layer's copies."""
    if isinstance(v, Mapping):
        v = v.get(q)
    return None if v is None else float(v)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise RunFolderMissing(f"{path}:{number}: not a JSON record ({e})") from None
        if not isinstance(record, dict):
            raise RunFolderMissing(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records


# --------------------------------------------------------------------------- the checks

def _divergence(run: Path, history: list[dict]) -> list[Finding]:
    out = []
    path = run / "doctor.json"
    if path.exists():
        out, step = _stop_report(path)
        last_step = max((r.get("step") or 0 for r in history), default=0)
        if last_step >= step:  # the run went on past the stop (resumed with a fix)
            out = [dataclasses.replace(f, severity="info", title=f"(an earlier stop, trained "
                                       f"past since) {f.title}") for f in out]
    elif any(r.get("train_loss") is None and "train_loss" in r for r in history):
        out.append(Finding("non_finite", "error", "the training loss was not finite",
                           "metrics.jsonl holds a null train_loss",
                           "optimizer.learning_rate lower; optimizer.clip_norm"))
    return out


def _stop_report(path: Path) -> tuple[list[Finding], int]:
    """The finding of ``doctor.json`` (written by ``fit`` when it stopped) and its step."""
    try:
        report = json.loads(path.read_text())
        step = int(report["step"])
        fault = report.get("fault")
        f = None if not fault else Fault(**{**fault, "rows": tuple(fault["rows"])})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise RunFolderMissing(f"{path}: not a doctor report ({e})") from None
    where = f"step {step} (epoch {report.get('epoch')})"
    if f is not None:
        return [Finding("non_finite", "error", f"the loss became non-finite: {f.direction} "
                        f"{f.value} first in {'the loss' if f.layer == 'loss' else repr(f.layer)}",
                        f"{where}: {f.describe()}", _fault_fix(f))], step
    note = str(report.get("note", ""))
    exploded = "exploded" in note
    return [Finding("divergence" if exploded else "non_finite", "error",
                    "training diverged: the loss exploded" if exploded else
                    "the loss became non-finite (not localised)", f"{where}: {note}",
                    "optimizer.learning_rate: 10x lower; optimizer.clip_norm")], step


def _fault_fix(f: Fault) -> str:
    if f.layer == "input":
        return "the data: the input batch holds NaN/Inf (data.path, data preprocessing)"
    if f.layer == "loss" and "inf" in f.value and f.detail:
        return (f"the network's outputs overflow the loss ({f.detail}): "
                f"optimizer.learning_rate lower, optimizer.clip_norm")
    if f.layer == "loss":
        return "the loss: its inputs leave its domain (a log of 0: use the *_with_logits form)"
    if f.direction == "forward":
        return (f"layer '{f.layer}': its output overflows or leaves the domain of a function "
                f"(log, sqrt, division); if its weights grew, optimizer.learning_rate lower or "
                f"optimizer.clip_norm")
    return (f"layer '{f.layer}': its derivative is infinite where the forward value is finite "
            f"(sqrt or pow at 0, abs' ...): add an epsilon inside; or optimizer.learning_rate "
            f"lower / optimizer.clip_norm if gradients overflow")


def _gradients(diag: list[dict]) -> list[Finding]:
    out = []
    last = diag[-1]
    depth = [v for v in last.get("grad_norm_by_depth", []) if v is not None]
    fully_dead = any((_value(l.get("dead_fraction")) or 0) >= 1.0 for l in last.get("layers", []))
    if len(depth) >= 3 and depth[-1] > 0 and not fully_dead:  # a dead layer's zeros are its own
        ratio = depth[0] / depth[-1]
        evidence = (f"gradient norm of the first weight layer {_g(depth[0])}, of the last "
                    f"{_g(depth[-1])} (ratio {_g(ratio)}, {len(depth)} weight layers) at step "
                    f"{last['step']}")
        if ratio < VANISHING_RATIO:
            out.append(Finding("vanishing_gradients", "warning",
                               "vanishing gradients: the first layers barely learn", evidence,
                               "model: ReLU activations, He init (w_init: he_normal), BatchNorm "
                               "or Residual blocks; or fewer layers"))
        elif ratio > EXPLODING_RATIO:
            out.append(Finding("exploding_gradients", "warning",
                               "exploding gradients: the first layers get huge steps", evidence,
                               "model: smaller init (w_init: glorot_normal / he_normal), BatchNorm; "
                               "optimizer.clip_norm"))
    dead, saturated, ratios = [], [], []
    for layer in last.get("layers", []):
        d = _value(layer.get("dead_fraction"))
        if d is not None and d >= DEAD_INFO:
            dead.append((layer["layer"], d))
        s = _value(layer.get("saturated_fraction"), "q50")
        if s is not None and s >= SATURATED_WARNING:
            saturated.append((layer["layer"], s, layer["kind"]))
        r = _value(layer.get("update_ratio"), "q50")
        if r is not None and r > 0:
            ratios.append(r)
    if dead:
        worst = max(d for _, d in dead)
        out.append(Finding(
            "dead_relu", "error" if worst >= 1.0 else "warning" if worst >= DEAD_WARNING
            else "info",
            "dead ReLU units: they output 0 for every example and never learn again",
            ", ".join(f"{p}: {d:.0%} dead" for p, d in dead) + f" at step {last['step']}",
            "a lower optimizer.learning_rate; biases initialised at 0 (b_init); He init; "
            "or LeakyRelu / Elu in model"))
    if saturated:
        out.append(Finding(
            "saturated_units", "warning",
            "saturated tanh/sigmoid units: their slope is ~0, so little gradient passes",
            ", ".join(f"{p} ({k}): {s:.0%} of outputs saturated" for p, s, k in saturated)
            + f" at step {last['step']}",
            "model: Glorot init (w_init: glorot_normal), inputs standardised "
            "(data.standardize), BatchNorm before the activation, or ReLU"))
    if ratios:
        median = float(np.median(ratios))
        evidence = f"median update/weight ratio {_g(median)} per step (healthy ~1e-3)"
        if median > LR_HIGH_RATIO:
            out.append(Finding("learning_rate_high", "warning", "the learning rate is too high",
                               evidence, "optimizer.learning_rate: 10x lower"))
        elif median < LR_LOW_RATIO:
            out.append(Finding("learning_rate_low", "warning", "the learning rate is too low",
                               evidence, "optimizer.learning_rate: 100x higher (aim for an "
                                         "update/weight ratio near 1e-3)"))
    return out


def _curves(history: list[dict], found: set[str], cfg: Mapping[str, Any] | None = None
            ) -> list[Finding]:
    out = []
    train = [r.get("train_loss") for r in history]
    if len(history) < MIN_EPOCHS or any(v is None for v in train):
        return out
    first, last = train[0], train[-1]
    if last > first * RISING_LOSS and "learning_rate_high" not in found:
        out.append(Finding("learning_rate_high", "warning",
                           "the training loss rose: the learning rate is too high",
                           f"train loss {_g(first)} at epoch 1, {_g(last)} at epoch "
                           f"{len(history)}", "optimizer.learning_rate: 10x lower"))
    rises = [b > a * (1 + OSCILLATION_RISE) for a, b in zip(train, train[1:])]
    if (len(rises) >= 4 and sum(rises) >= OSCILLATION_SHARE * len(rises)
            and not any(f.code == "learning_rate_high" for f in out) and "learning_rate_high"
            not in found):
        out.append(Finding("learning_rate_high", "warning",
                           "the training loss oscillates: the learning rate is too high",
                           f"train loss rose by over {OSCILLATION_RISE:.0%} in {sum(rises)} of "
                           f"{len(rises)} epochs: " + ", ".join(_g(v) for v in train[-8:]),
                           "optimizer.learning_rate: 10x lower, or a decaying "
                           "optimizer.schedule"))
    flat = abs(first - last) <= FLAT_LOSS * abs(first)
    if flat and not found & {"learning_rate_low", "vanishing_gradients", "dead_relu"}:
        out.append(Finding("underfitting", "warning",
                           "the training loss is flat: the network does not learn",
                           f"train loss {_g(first)} at epoch 1, {_g(last)} at epoch "
                           f"{len(history)} (under {FLAT_LOSS:.0%} change)",
                           "optimizer.learning_rate higher; a larger model; more epochs "
                           "(training.epochs); training.diagnostics.every to see why"))
    val = [r.get("val_loss") for r in history]
    if all(v is not None for v in val):
        best = int(np.argmin(val))
        rise = val[-1] / val[best] - 1 if val[best] > 0 else 0.0
        es = ((cfg or {}).get("training") or {}).get("early_stopping") or {}
        handled = bool(es.get("enabled") and es.get("restore_best"))
        if best < len(val) - 1 and rise > OVERFIT_RISE and train[-1] < train[best]:
            out.append(Finding(
                "overfitting", "info" if handled else "warning",
                ("(handled by training.early_stopping, which keeps the best epoch) "
                 if handled else "") +
                f"overfitting from epoch {best + 2}: validation loss rising while training "
                f"loss falls",
                f"validation loss lowest at epoch {best + 1} ({_g(val[best])}), {_g(val[-1])} at "
                f"epoch {len(val)} (+{rise:.0%}) while the training loss fell from "
                f"{_g(train[best])} to {_g(train[-1])}",
                f"training.early_stopping (monitor val_loss; best epoch {best + 1}), Dropout "
                f"layers, regularizers (L2), more data or data.augment"))
    return out


def _predictions(net, params, state, x: np.ndarray) -> np.ndarray:
    import jax
    out = []
    apply = jax.jit(lambda p, s, xb: net.apply(p, s, xb, train=False)[0])
    for i in range(0, len(x), 1024):
        out.append(np.asarray(apply(params, state, x[i:i + 1024])))
    return np.concatenate(out)


def _labels(y: np.ndarray) -> np.ndarray | None:
    y = np.asarray(y)
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return y
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        return np.argmax(y, axis=1)
    return None


def _data_checks(net, params, state, data: Mapping[str, Any], history: list[dict],
                 found: set[str]) -> list[Finding]:
    out = []
    train, val = data.get("train"), data.get("val")
    if train is not None:
        y = _labels(train["y"])
        if y is not None:
            counts = np.bincount(y)
            present = counts[counts > 0]
            if len(present) > 1 and present.max() >= IMBALANCE_RATIO * present.min():
                out.append(Finding(
                    "class_imbalance", "warning", "the classes are imbalanced",
                    f"training labels: largest class {int(np.argmax(counts))} "
                    f"{present.max()} examples, smallest {present.min()} "
                    f"({present.max() / present.min():.0f}x)",
                    "loss: class weights, or resample the training data; judge by per-class "
                    "recall, not accuracy"))
    if val is None or net is None:
        return out
    y = _labels(val["y"])
    logits = _predictions(net, params, state, np.asarray(val["x"]))
    if y is None or logits.ndim != 2 or logits.shape[1] < 2:
        return out
    pred = np.argmax(logits, axis=1)
    classes = logits.shape[1]
    shares = np.bincount(y, minlength=classes) / len(y)
    top = np.bincount(pred, minlength=classes) / len(pred)
    accuracy = float(np.mean(pred == y))
    chance = float(shares.max())
    train_accuracy = history[-1].get("train_accuracy") if history else None
    if found & CAUSES:
        pass  # a constant or chance prediction follows from the cause already found
    elif top.max() >= CONSTANT_SHARE:
        out.append(Finding(
            "constant_prediction", "warning",
            f"the network predicts one class (class {int(np.argmax(top))}) for almost everything",
            f"{top.max():.1%} of validation predictions are class {int(np.argmax(top))}; "
            f"accuracy {accuracy:.1%} = the majority class share {chance:.1%}",
            "check the labels (data), the loss (loss.name) and optimizer.learning_rate; "
            "with imbalanced classes use class weights"))
    elif (accuracy <= chance + CHANCE_MARGIN and train_accuracy is not None
          and train_accuracy > chance + MEMORISED_MARGIN):
        out.append(Finding(
            "labels_uninformative", "warning",
            "validation accuracy at chance: the labels do not follow from the inputs",
            f"validation accuracy {accuracy:.1%}, majority class share {chance:.1%}, "
            f"training accuracy {train_accuracy:.1%} (memorised)",
            "check the data: labels shuffled or misaligned with the inputs (data.path, the "
            "label column)"))
    never = [c for c in range(classes) if shares[c] >= NEVER_PREDICTED_SHARE and top[c] == 0]
    if never and top.max() < CONSTANT_SHARE and not found & CAUSES:
        out.append(Finding("labels_never_predicted", "warning",
                           "some classes are never predicted",
                           "classes " + ", ".join(f"{c} ({shares[c]:.0%} of validation)"
                                                  for c in never),
                           "class weights in the loss; more epochs; check those labels"))
    return out


def _batch_norm_lag(net, params, state, val: Mapping[str, Any], loss: Callable) -> list[Finding]:
    import jax
    import jax.numpy as jnp
    x, y = np.asarray(val["x"])[:1024], np.asarray(val["y"])[:1024]
    infer = float(jnp.mean(loss(net.apply(params, state, x, train=False)[0], y)))
    batch = float(jnp.mean(loss(net.apply(params, state, x, train=True,
                                          rng=jax.random.key(0))[0], y)))
    if infer > BN_LAG_FACTOR * batch:
        return [Finding(
            "batch_norm_lag", "warning",
            "batch-norm running statistics lag behind the weights",
            f"validation loss {_g(infer)} with the running statistics (inference mode), "
            f"{_g(batch)} on the same examples with batch statistics (training mode)",
            "BatchNorm momentum lower (model: BatchNorm: {momentum: 0.9}) or more steps "
            "(training.epochs)")]
    return []


def _run_config(run: Path) -> dict[str, Any] | None:
    """The run's config as its checkpoint saved it (runs of ``fnn train``), or ``None``."""
    from fnn.train import checkpoint as ckpt
    for which in ("latest", "best"):
        path = run / "checkpoints" / f"{which}.safetensors"
        if path.exists():
            config = ckpt.read_metadata(path).get("config")
            return config if isinstance(config, dict) else None
    return None


def _has_kind(net, kind: str) -> bool:
    return net.kind == kind or any(_has_kind(c, kind) for c in net.children)


def _checkpoint_parts(run: Path, net, loss, data, notes: list[Finding]):
    """The network, weights, loss and validation data the checkpoint checks need, or Nones
    with an info finding saying what is missing."""
    from fnn.train import checkpoint as ckpt
    path = run / "checkpoints" / "best.safetensors"
    if not path.exists():
        path = run / "checkpoints" / "latest.safetensors"
    if not path.exists():
        notes.append(Finding("no_checkpoint", "info", "no checkpoint: predictions and "
                             "batch-norm statistics not judged", f"{run / 'checkpoints'} is empty"))
        return None
    meta = ckpt.read_metadata(path)
    cfg = meta.get("config")
    if net is None and meta.get("spec") is not None:
        from fnn.layers.spec import from_spec
        try:
            net = from_spec(meta["spec"])
        except (ValueError, TypeError) as e:
            notes.append(Finding("no_network", "info", "the network could not be rebuilt",
                                 f"{path.name}: {e}"))
            return None
    if data is None and cfg is not None:
        from fnn.run import load_data
        try:
            data = load_data(cfg, download=False)
        except Exception as e:  # noqa: BLE001 - any reason the data is not here: say it
            notes.append(Finding("no_data", "info", "the run's data could not be loaded: "
                                 "predictions not judged", " ".join(str(e).split())))
            return None
    if loss is None and cfg is not None:
        from fnn.run import build
        loss = build(cfg).loss
    if net is None or data is None:
        notes.append(Finding("no_data", "info", "no data given: predictions, class balance and "
                             "batch-norm statistics not judged",
                             "a run of fnn.train.fit: pass examine(run, data={'train': ..., "
                             "'val': ...})"))
        return None
    params, state = ckpt.load_weights(path)
    return net, params, state, loss, data


def examine(run_dir: str | Path, *, data: Mapping[str, Any] | None = None, net: Any = None,
            loss: Callable | None = None) -> list[Finding]:
    """Examine a run folder; returns findings, most severe first.

    Args:
        run_dir: a run folder (``metrics.jsonl``; ``diagnostics.jsonl``, ``doctor.json``,
            checkpoints when present).
        data: ``{"train": {"x", "y"}, "val": {"x", "y"}}`` for the data and batch-norm checks
            (default: the data of the run's config, for runs of ``fnn train``).
        net, loss: the network (default: rebuilt from the checkpoint) and loss (default: the
            config's) for those checks.

    Raises:
        RunFolderMissing: ``run_dir`` does not exist or has no ``metrics.jsonl`` nor
            ``doctor.json``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise RunFolderMissing(f"{run}: no such run folder")
    metrics = run / "metrics.jsonl"
    if not metrics.exists() and not (run / "doctor.json").exists():
        raise RunFolderMissing(f"{run}: not a run folder (no metrics.jsonl)")
    history = _read_jsonl(metrics) if metrics.exists() else []
    findings = _divergence(run, history)
    diag_path = run / "diagnostics.jsonl"
    if diag_path.exists() and _read_jsonl(diag_path):
        findings += _gradients(_read_jsonl(diag_path))
    else:
        findings.append(Finding("no_diagnostics", "info",
                                "no diagnostics recorded: gradients, dead and saturated units "
                                "and update ratios not judged",
                                f"{diag_path.name} is missing",
                                "training.diagnostics.every: 100 "
                                "(fit(..., run=RunOptions(dir, diagnostics=100)))"))
    found = {f.code for f in findings}
    if not any(f.code in ("non_finite", "divergence") for f in findings):
        findings += _curves(history, found, _run_config(run))
        if len(history) < MIN_EPOCHS:
            findings.append(Finding("short_run", "info", f"{len(history)} epoch(s): loss "
                                    f"curves not judged (needs {MIN_EPOCHS})", ""))
        parts = _checkpoint_parts(run, net, loss, data, findings)
        if parts is not None:
            net, params, state, loss, data = parts
            if data.get("val") is None:
                findings.append(Finding("no_validation", "info", "no validation data: "
                                        "predictions and batch-norm statistics not judged",
                                        "", "data.validation: 0.1"))
            if data.get("val") is not None and _has_kind(net, "BatchNorm"):
                if loss is None:
                    findings.append(Finding("no_loss", "info", "batch-norm statistics not "
                                            "judged: no loss given", "examine(run, loss=...)"))
                else:
                    findings += _batch_norm_lag(net, params, state, data["val"], loss)
            findings += _data_checks(net, params, state, data, history,
                                     {f.code for f in findings})
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def format_findings(findings: Sequence[Finding]) -> str:
    """The findings as text, one block each (what ``fnn doctor`` prints)."""
    if not any(f.severity != "info" for f in findings):
        head = ["no problem found"]
    else:
        head = []
    lines = list(head)
    for f in findings:
        lines.append(f"{f.severity}: {f.title} [{f.code}]")
        if f.evidence:
            lines.append(f"  evidence: {f.evidence}")
        if f.fix:
            lines.append(f"  fix: {f.fix}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- during training

class LiveHints:
    """A ``fit`` callback that prints a finding already certain after an epoch, once each.

    * every unit of a ReLU layer dead on ``batch`` (no gradient reaches its weights again);
    * the training loss at chance level (``ln(classes)``) with one class predicted for the
      whole ``batch``.

    Example:
        >>> net = fnn.serial(fnn.Dense(4, b_init=fnn.initializers.constant(-50.0)), fnn.Relu,
        ...                  fnn.Dense(2))
        >>> x = np.ones((8, 3), np.float32)
        >>> hints = LiveHints(net, {"x": x, "y": np.zeros(8, int)})
        >>> _ = fnn.train.fit(net, fnn.losses.softmax_cross_entropy, optax.sgd(0.1),
        ...                   {"x": x, "y": np.zeros(8, int)}, epochs=2, callbacks=[hints],
        ...                   log=None)
        warning: every unit of ReLU layer 'relu_0' is dead after epoch 1 [dead_relu]; fix: lower optimizer.learning_rate, biases at 0 (b_init), He init, or LeakyRelu
        warning: training loss 0.6931 is at chance (ln 2) and every example is predicted as class 0 after epoch 1 [constant_prediction]; fix: check the labels and optimizer.learning_rate
    """

    def __init__(self, net: Any, batch: Mapping[str, Any], log: Callable[[str], None] = print):
        import jax
        import jax.numpy as jnp
        from fnn.diagnostics import make_gradient_flow

        self.net, self.log = net, log
        self.x = np.asarray(batch["x"])
        self.flow = make_gradient_flow(net, lambda out, t: jnp.zeros(()))  # activations only
        self.predict = jax.jit(lambda params, state: net.apply(params, state, self.x)[0])
        self.said: set[str] = set()

    def __call__(self, record: Mapping[str, Any], train_state: Any) -> bool:
        flow = self.flow(train_state.params, train_state.model_state,
                         (self.x, np.zeros(len(self.x), np.int32)))
        for layer in flow.layers:
            dead = layer.stats.get("dead_fraction")
            key = f"dead:{layer.path}"
            if dead is not None and float(np.max(dead)) >= 1.0 and key not in self.said:
                self.said.add(key)
                self.log(f"warning: every unit of ReLU layer '{layer.path}' is dead after epoch "
                         f"{record['epoch']} [dead_relu]; fix: lower optimizer.learning_rate, "
                         f"biases at 0 (b_init), He init, or LeakyRelu")
        out = np.asarray(self.predict(train_state.params, train_state.model_state))
        loss = record.get("train_loss")
        if out.ndim == 2 and out.shape[1] > 1 and loss is not None and "chance" not in self.said:
            pred = np.argmax(out, axis=1)
            chance = math.log(out.shape[1])
            if np.all(pred == pred[0]) and abs(loss - chance) < 0.05 * chance:
                self.said.add("chance")
                self.log(f"warning: training loss {loss:.4f} is at chance (ln {out.shape[1]}) "
                         f"and every example is predicted as class {int(pred[0])} after epoch "
                         f"{record['epoch']} [constant_prediction]; fix: check the labels and "
                         f"optimizer.learning_rate")
        return False
