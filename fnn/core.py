"""The layer protocol of fnn: a ``Layer`` is a named pair of pure functions.

A layer is ``Layer(init, apply)``:

* ``init(rng, input_shape) -> (output_shape, params, state)``. Shapes are tuples of ints
  with ``-1`` for the batch dimension, so a network can be initialised, counted and
  printed without data. Multi-input layers take a tuple of shapes.
* ``apply(params, state, inputs, *, rng=None, train=False) -> (outputs, new_state)``.
  ``params`` receive gradients; ``state`` is carried but not differentiated
  (batch-norm statistics). Stateless layers return their (empty) state unchanged.

``Layer`` is a ``NamedTuple`` subclass, so ``init, apply = fnn.Dense(10)`` works, in the
style of ``optax.GradientTransformation``. Each layer also carries metadata used by
combinators, summaries, checkpoints and configs: ``kind`` (its type, e.g. ``"Dense"``),
``name`` (its default or user-given key), ``spec`` (the serialisable arguments that
rebuild it) and ``children`` (sub-layers of a combinator).

Example:
    >>> import jax, fnn
    >>> out_shape, params, state = fnn.Dense(3).init(jax.random.key(0), (-1, 5))
    >>> out_shape
    (-1, 3)
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import inspect
import re
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Shape = tuple[int, ...]
Params = Any  # a pytree of nested dicts of arrays
State = Any
InitFn = Callable[..., tuple[Any, Params, State]]
ApplyFn = Callable[..., tuple[Any, State]]

__all__ = [
    "Layer",
    "LayerError",
    "layer_type",
    "registered_layers",
    "init_child",
    "apply_child",
    "child_keys",
    "require_rng",
    "num_params",
    "tree_size",
    "snake_case",
]


class LayerError(ValueError):
    """A bad input, shape or argument in a layer, with the path of the layer in its network.

    The message reads ``"Dense layer 'serial/dense_1': expected ... got shape (-1, 3)"``.
    Combinators prepend their child keys as the error travels up, so the message names the
    exact place in the network where it happened.
    """

    def __init__(self, detail: str, *, kind: str | None = None, path: Sequence[str] = ()):
        self.detail = detail
        self.kind = kind
        self.path = tuple(path)
        super().__init__(self._message())

    def _message(self) -> str:
        where = "/".join(self.path)
        head = f"{self.kind} layer" if self.kind else "layer"
        return f"{head} '{where}': {self.detail}" if where else f"{head}: {self.detail}"

    def within(self, key: str) -> "LayerError":
        """The same error, one level deeper: ``key`` is prepended to the path."""
        return LayerError(self.detail, kind=self.kind, path=(key, *self.path))

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) working
        return (_rebuild_layer_error, (self.detail, self.kind, self.path))


def _rebuild_layer_error(detail, kind, path):
    return LayerError(detail, kind=kind, path=path)


class _LayerFns(NamedTuple):
    init: InitFn
    apply: ApplyFn


class Layer(_LayerFns):
    """A neural-network layer: a named pair of pure functions ``(init, apply)``.

    Attributes:
        init: ``init(rng, input_shape) -> (output_shape, params, state)``.
        apply: ``apply(params, state, x, *, rng=None, train=False) -> (y, new_state)``.
        kind: the layer type, e.g. ``"Dense"``; the name used in configs.
        name: the key this layer takes inside a combinator (``None``: derived from ``kind``).
        spec: ``{kind: {arg: value}}``, the non-default constructor arguments; rebuilds the layer.
        children: sub-layers, for combinators.

    Calling a layer with arguments rebuilds it with those arguments changed, so layers
    exported as ready-made instances also take arguments::

        fnn.Relu                # a layer
        fnn.LeakyRelu(alpha=0.2)  # the same kind with another slope
        fnn.Relu(name="act")    # renamed
    """

    # A tuple subclass without __slots__ gets a __dict__ for the metadata below.
    def __new__(
        cls,
        init: InitFn,
        apply: ApplyFn,
        *,
        kind: str = "Layer",
        name: str | None = None,
        spec: Any = None,
        children: Sequence["Layer"] = (),
        constructor: Callable[..., "Layer"] | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> "Layer":
        self = super().__new__(cls, init, apply)
        self.kind = kind
        self.name = name
        self.spec = spec if spec is not None else kind
        self.children = tuple(children)
        self._constructor = constructor
        self._arguments = dict(arguments or {})
        return self

    @property
    def default_name(self) -> str:
        """The base of this layer's key in a combinator: its ``name`` or ``snake_case(kind)``."""
        return self.name or snake_case(self.kind)

    def named(self, name: str) -> "Layer":
        """This layer under another name (its params keep their structure)."""
        return self(name=name)

    def __call__(self, *args: Any, **kwargs: Any) -> "Layer":
        if self._constructor is None:
            if set(kwargs) <= {"name"} and not args:
                return Layer(self.init, self.apply, kind=self.kind,
                             name=kwargs.get("name", self.name), spec=self.spec,
                             children=self.children)
            raise TypeError(f"{self.kind} layer takes no arguments")
        sig = inspect.signature(self._constructor)
        bound = sig.bind_partial(*args, **kwargs).arguments
        merged = {**self._arguments, **bound}
        return _call_with_arguments(self._constructor, sig, merged)

    def __repr__(self) -> str:
        return f"Layer({self.kind}, name={self.name!r})" if self.name else f"Layer({self.kind})"

    # NamedTuple equality compares the two functions; keep identity semantics for hashing.
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


def _call_with_arguments(fn: Callable, sig: inspect.Signature, arguments: dict[str, Any]):
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname not in arguments:
            continue
        value = arguments[pname]
        if p.kind is p.VAR_POSITIONAL:
            args.extend(value)
        elif p.kind is p.POSITIONAL_ONLY:
            args.append(value)
        elif p.kind is p.VAR_KEYWORD:
            kwargs.update(value)
        else:
            kwargs[pname] = value
    return fn(*args, **kwargs)


_REGISTRY: dict[str, Callable[..., Layer]] = {}


def registered_layers() -> dict[str, Callable[..., Layer]]:
    """All layer constructors by kind (``{"Dense": fnn.Dense, ...}``); used by configs."""
    return dict(_REGISTRY)


def snake_case(name: str) -> str:
    """``"BatchNorm"`` -> ``"batch_norm"``, ``"Conv2D"`` -> ``"conv2d"``, ``"PRelu"`` -> ``"prelu"``."""
    s = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    s = re.sub(r"([A-Z]{2,})([A-Z][a-z])", r"\1_\2", s)
    return s.lower()


def _spec_value(value: Any) -> Any:
    if isinstance(value, Layer):
        return value.spec
    if isinstance(value, (list, tuple)):
        return [_spec_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _spec_value(v) for k, v in value.items()}
    return value


def layer_type(kind: str) -> Callable[[Callable[..., Layer]], Callable[..., Layer]]:
    """Decorate a layer constructor: register it under ``kind`` and give its layers metadata.

    The constructor builds ``Layer(init, apply)`` from its arguments; the decorator sets
    ``kind``, ``name`` (from a ``name=`` argument), ``spec`` (the non-default arguments,
    sub-layers replaced by their specs) and ``children`` (the ``Layer`` arguments), and makes
    every ``LayerError`` raised by the layer name its ``kind``.

    Example:
        >>> @layer_type("Scale")
        ... def Scale(factor: float = 2.0, *, name=None):
        ...     init = lambda rng, shape: (shape, {}, {})
        ...     apply = lambda params, state, x, *, rng=None, train=False: (x * factor, state)
        ...     return Layer(init, apply)
    """

    def decorate(constructor: Callable[..., Layer]) -> Callable[..., Layer]:
        sig = inspect.signature(constructor)

        @functools.wraps(constructor)
        def build(*args: Any, **kwargs: Any) -> Layer:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{kind}: {e}") from None
            try:
                made = constructor(*bound.args, **bound.kwargs)
            except LayerError as e:  # e.g. duplicate child names: say which kind of layer
                if e.kind is None:
                    raise LayerError(e.detail, kind=kind, path=e.path) from None
                raise
            arguments = dict(bound.arguments)
            non_default = non_default_arguments(sig, arguments)
            spec: Any = kind
            if non_default:
                spec = {kind: {k: _spec_value(v) for k, v in non_default.items()}}
            children = _collect_layers(arguments.values())
            return Layer(
                _name_errors(made.init, kind),
                _name_errors(made.apply, kind),
                kind=kind,
                name=arguments.get("name"),
                spec=spec,
                children=children,
                constructor=build,
                arguments=arguments,
            )

        if kind in _REGISTRY:
            raise ValueError(f"layer kind {kind!r} is registered twice")
        _REGISTRY[kind] = build
        return build

    return decorate


def non_default_arguments(sig: inspect.Signature, arguments: dict[str, Any]) -> dict[str, Any]:
    """The bound ``arguments`` that differ from their defaults in ``sig`` (what a spec records)."""
    return {k: v for k, v in arguments.items()
            if sig.parameters[k].default is inspect.Parameter.empty
            or not _same(v, sig.parameters[k].default)}


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # arrays and other values without a plain truth value
        return a is b


def _collect_layers(values: Any) -> tuple[Layer, ...]:
    found: list[Layer] = []
    for v in values:
        if isinstance(v, Layer):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(_collect_layers(v))
    return tuple(found)


def _name_errors(fn: Callable, kind: str) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except LayerError as e:
            if e.kind is None:
                raise LayerError(e.detail, kind=kind, path=e.path) from None
            raise

    return wrapped


# --------------------------------------------------------------------------- combinator helpers

def child_keys(layers: Sequence[Layer]) -> list[str]:
    """Unique keys for a combinator's children: explicit names as given, others numbered by kind.

    ``[Dense, Relu, Dense]`` -> ``["dense_0", "relu_0", "dense_1"]``; a layer built with
    ``name="head"`` keeps ``"head"``. Two children with the same explicit name are an error.
    """
    counts: dict[str, int] = {}
    keys: list[str] = []
    for layer in layers:
        if not isinstance(layer, Layer):
            raise TypeError(f"expected a fnn Layer, got {type(layer).__name__}: {layer!r}")
        if layer.name:
            key = layer.name
        else:
            base = snake_case(layer.kind)
            key = f"{base}_{counts.get(base, 0)}"
            counts[base] = counts.get(base, 0) + 1
        if key in keys:
            raise LayerError(f"two children are named {key!r}; names in one combinator must differ")
        keys.append(key)
    return keys


class _Recorder:
    """Collects ``(path, layer, output_shape, params, state)`` for every ``init`` (for summaries)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.rows: list[tuple[tuple[str, ...], Layer, Any, Params, State]] = []


_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("fnn_recorder", default=None)


@contextlib.contextmanager
def recording() -> Iterator[_Recorder]:
    """Within this context every ``init_child`` call is recorded (used by ``fnn.summary``)."""
    rec = _Recorder()
    token = _RECORDER.set(rec)
    try:
        yield rec
    finally:
        _RECORDER.reset(token)


def init_child(key: str, layer: Layer, rng: jax.Array, input_shape: Any):
    """Call ``layer.init`` as child ``key`` of a combinator: errors get ``key`` in their path."""
    rec = _RECORDER.get()
    if rec is not None:
        rec.stack.append(key)
        index = len(rec.rows)
        rec.rows.append(None)  # reserve the slot so parents come before children
    try:
        out = layer.init(rng, input_shape)
    except LayerError as e:
        raise e.within(key) from None
    finally:
        if rec is not None:
            path = tuple(rec.stack)
            rec.stack.pop()
    if rec is not None:
        rec.rows[index] = (path, layer, out[0], out[1], out[2])
    return out


def apply_child(key: str, layer: Layer, params: Params, state: State, x: Any, *,
                rng: jax.Array | None, train: bool):
    """Call ``layer.apply`` as child ``key`` of a combinator: errors get ``key`` in their path."""
    try:
        return layer.apply(params, state, x, rng=rng, train=train)
    except LayerError as e:
        raise e.within(key) from None


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    """``n`` independent keys from ``rng``, or ``n`` ``None`` when ``rng`` is ``None``."""
    if rng is None:
        return [None] * n
    return list(jax.random.split(rng, n))


def require_rng(rng: jax.Array | None, why: str = "it is random in training") -> jax.Array:
    """Return ``rng`` or raise a ``LayerError`` saying the layer needs one (named by its caller)."""
    if rng is None:
        raise LayerError(f"needs an rng because {why}; call apply(..., rng=key, train=True)")
    return rng


# --------------------------------------------------------------------------- lookups by name

def lookup(table: dict[str, Any], name: str, what: str) -> Any:
    """``table[name.lower()]``, or a ``ValueError`` naming the closest known names.

    The one lookup behind ``fnn.activations.get``, ``fnn.losses.get``, ``fnn.metrics.get``,
    ``fnn.regularizers.get`` and ``fnn.initializers.get``.

    Example:
        >>> lookup({"relu": 1}, "rleu", "activation")
        Traceback (most recent call last):
        ValueError: unknown activation 'rleu'; did you mean relu?
    """
    key = str(name).lower()
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(table))}"
    raise ValueError(f"unknown {what} {name!r}{hint}")


# --------------------------------------------------------------------------- pytree helpers

def num_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or ``ShapeDtypeStruct``s)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))


def tree_size(tree: Any) -> int:
    """Bytes taken by a pytree of arrays (or ``ShapeDtypeStruct``s)."""
    return int(sum(int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree_util.tree_leaves(tree)))


def check_shape(shape: Any, *, min_rank: int = 1, what: str = "input") -> Shape:
    """Validate an ``init`` input shape: a tuple of ints of rank ``>= min_rank``."""
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, (int, np.integer)) for d in shape):
        raise LayerError(f"{what} shape must be a tuple of ints (use -1 for the batch), got {shape!r}")
    shape = tuple(int(d) for d in shape)
    if len(shape) < min_rank:
        raise LayerError(f"expects an {what} of rank >= {min_rank} (batch first), got shape {shape}")
    return shape
