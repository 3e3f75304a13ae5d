"""``fnn.summary``: a printable table of a network's layers, output shapes and parameter counts."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from fnn.core import Layer, default_key, init_child, num_params, recording
from fnn.finetune import frozen_mask

__all__ = ["summary", "Summary", "SummaryRow"]


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One layer of a summary: its path in the network, kind, output shape and sizes."""

    path: tuple[str, ...]
    kind: str
    output_shape: Any
    params: int
    state: int

    @property
    def name(self) -> str:
        return "/".join(self.path)


@dataclasses.dataclass(frozen=True)
class Summary:
    """The result of :func:`summary`; ``str(summary)`` is the table."""

    rows: tuple[SummaryRow, ...]
    input_shape: Any
    output_shape: Any
    trainable_params: int
    state_size: int
    frozen_params: int = 0

    def __str__(self) -> str:
        lines = [("Layer", "Type", "Output shape", "Params")]
        # the root is the whole network (its total is printed below), unless it is all there is
        shown = self.rows[1:] if len(self.rows) > 1 else self.rows
        for before, row in zip((None, *shown), shown):
            indent = "  " * (len(row.path) - 2)
            # a layer inside a wrapper that adds no level (repeat, Frozen, DtypePolicy) has the
            # wrapper's path: its row names only its kind
            label = "" if before is not None and before.path == row.path else row.path[-1]
            lines.append((indent + label, row.kind, _fmt_shape(row.output_shape),
                          f"{row.params:,}"))
        widths = [max(len(line[i]) for line in lines) for i in range(4)]
        rule = "-" * (sum(widths) + 6)

        def fmt(line):
            return (f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  "
                    f"{line[2]:<{widths[2]}}  {line[3]:>{widths[3]}}")

        out = [fmt(lines[0]), rule, *(fmt(line) for line in lines[1:]), rule]
        out.append(f"Input shape: {_fmt_shape(self.input_shape)}   "
                   f"Output shape: {_fmt_shape(self.output_shape)}")
        out.append(f"Trainable params: {self.trainable_params:,}")
        if self.frozen_params:
            out.append(f"Frozen params: {self.frozen_params:,}")
        out.append(f"State (non-trainable) size: {self.state_size:,}")
        return "\n".join(out)

    def __repr__(self) -> str:
        return str(self)


def _fmt_shape(shape: Any) -> str:
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple):
        return ", ".join(_fmt_shape(s) for s in shape)
    if isinstance(shape, tuple):
        return "(" + ", ".join("N" if i == 0 and d == -1 else ("?" if d == -1 else str(d))
                               for i, d in enumerate(shape)) + ")"
    return str(shape)


def _kind(layer: Layer) -> str:
    """The kind as the table shows it: a repeat with its number of copies (``Repeat x100``)."""
    if layer.kind == "Repeat":
        return f"Repeat x{layer.record.args['times']}"
    return layer.kind


def summary(net: Layer, input_shape: Any, *, rng: jax.Array | None = None) -> Summary:
    """Summarise ``net`` for inputs of ``input_shape`` (``-1`` for the batch) without any data.

    Initialisation is traced abstractly (``jax.eval_shape``): no params are allocated, so even
    very large networks summarise instantly.

    Returns:
        A :class:`Summary`: ``rows`` (one per layer, nested layers after their parent),
        ``trainable_params`` (scalars in params outside frozen layers), ``frozen_params``
        (scalars in params of :func:`fnn.freeze`-frozen layers), ``state_size`` (scalars in state);
        ``print(summary)`` shows the table.

    Example:
        >>> s = fnn.summary(fnn.serial(fnn.Dense(800), fnn.Relu, fnn.Dense(10)), (-1, 784))
        >>> s.trainable_params
        636010
    """
    rng = jax.random.key(0) if rng is None else rng
    captured: dict[str, Any] = {}

    def trace(key):
        with recording() as rec:
            out_shape, params, state = init_child(default_key(net), net, key, input_shape)
        captured["rows"] = rec.rows
        captured["out_shape"] = out_shape
        return params, state

    params, state = jax.eval_shape(trace, rng)
    frozen = num_params([leaf for leaf, f in zip(jax.tree_util.tree_leaves(params),
                                                 jax.tree_util.tree_leaves(frozen_mask(net, params)))
                         if f])
    rows = tuple(SummaryRow(path, _kind(layer), out, num_params(p), num_params(s))
                 for path, layer, out, p, s in captured["rows"])
    return Summary(rows=rows, input_shape=tuple(input_shape) if isinstance(input_shape, list)
                   else input_shape, output_shape=captured["out_shape"],
                   trainable_params=num_params(params) - frozen, state_size=num_params(state),
                   frozen_params=frozen)
