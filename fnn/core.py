"""The layer protocol of fnn: a ``Layer`` is a named pair of pure functions plus one build record.

A layer is ``Layer(init, apply)``:

* ``init(rng, input_shape) -> (output_shape, params, state)``. Shapes are tuples of ints
  with ``-1`` for the batch dimension, so a network can be initialised, counted and
  printed without data. Multi-input layers take a tuple of shapes.
* ``apply(params, state, inputs, *, rng=None, train=False) -> (outputs, new_state)``.
  ``params`` receive gradients; ``state`` is carried but not differentiated
  (batch-norm statistics). Stateless layers return their (empty) state unchanged.

``Layer`` is a 2-field ``NamedTuple``, so ``init, apply = fnn.Dense(10)`` works, in the style of
``optax.GradientTransformation``. A layer made by a registered constructor also carries one
immutable :class:`BuildRecord` ``(kind, args, name)``: how it was built. Everything else is
derived from that record: ``layer.kind``, ``layer.name``, ``layer.children`` (its sub-layers),
``layer.spec`` (the plain JSON/YAML form that ``fnn.save`` and configs use), ``repr(layer)``,
``layer.replace(**changes)`` (the same layer with arguments changed) and :func:`map_layers`
(whole-network rewrites). A hand-made ``Layer(init, apply)`` has no record: it trains like any
other layer but cannot be saved with its architecture.

Every layer kind is a constructor function registered with :func:`layer_type`; the
registration adds ``name=`` (the layer's key in its parent) to every kind. Combinators accept
a constructor that needs no arguments in place of a layer (``serial(Dense(8), Relu)``).

Example:
    >>> import jax, fnn
    >>> out_shape, params, state = fnn.Dense(3).init(jax.random.key(0), (-1, 5))
    >>> out_shape
    (-1, 3)
    >>> fnn.Dense(3, use_bias=False).spec
    {'Dense': {'features': 3, 'use_bias': False}}
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import inspect
import re
import types
import weakref
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn.arguments import ArgumentError

Shape = tuple[int, ...]
Params = Any  # a pytree of nested dicts of arrays
State = Any
InitFn = Callable[..., tuple[Any, Params, State]]
ApplyFn = Callable[..., tuple[Any, State]]

__all__ = [
    "Layer",
    "LayerError",
    "LayerNameError",
    "SpecError",
    "BuildRecord",
    "layer_type",
    "registered_layers",
    "build_layer",
    "kind_modules",
    "as_layer",
    "map_layers",
    "layer_paths",
    "select_layers",
    "numbered",
    "transparent",
    "record_spec",
    "init_child",
    "apply_child",
    "watching_apply",
    "child_keys",
    "require_rng",
    "split_keys",
    "draw",
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
        where = "/".join(k for k in self.path if k)  # "" is a child that adds no level
        head = f"{kind} layer" if kind else "layer"
        super().__init__(f"{head} '{where}': {detail}" if where else f"{head}: {detail}")

    def within(self, key: str) -> "LayerError":
        """The same error, one level deeper: ``key`` is prepended to the path."""
        return LayerError(self.detail, kind=self.kind, path=(key, *self.path))

    def __reduce__(self):  # keep pickling (multiprocessing, pytest-xdist) working
        return (rebuild_layer_error, (self.detail, self.kind, self.path))


def rebuild_layer_error(detail: str, kind: str | None, path: Sequence[str]) -> LayerError:
    """Unpickle a :class:`LayerError` (its ``__init__`` takes keyword arguments)."""
    return LayerError(detail, kind=kind, path=path)


class SpecError(ValueError):
    """A bad layer spec; the message starts with the key path of the bad entry (``model[3].Dense``)."""

    def __init__(self, path: str, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class LayerNameError(ValueError):
    """A layer name (in a freeze list, a regularizer or optimizer selection) that matches no
    layer; ``where`` says which argument or config key held it, ``detail`` the rest of the line."""

    def __init__(self, where: str, detail: str):
        self.where = where
        self.detail = detail
        super().__init__(f"{where}: {detail}")

    def __reduce__(self):
        return (LayerNameError, (self.where, self.detail))


class BuildRecord(NamedTuple):
    """How a layer was built: ``kind`` (its registered type), the ``args`` given to its
    constructor (a read-only mapping by parameter name; sub-layers are ``Layer`` objects) and
    its ``name`` (its key in the parent combinator, ``None`` for the default)."""

    kind: str
    args: Mapping[str, Any]
    name: str | None = None


class _LayerFns(NamedTuple):
    init: InitFn
    apply: ApplyFn


class Layer(_LayerFns):
    """A neural-network layer: a named pair of pure functions ``(init, apply)``.

    Attributes:
        init: ``init(rng, input_shape) -> (output_shape, params, state)``.
        apply: ``apply(params, state, x, *, rng=None, train=False) -> (y, new_state)``.
        record: the :class:`BuildRecord` of a registered kind, ``None`` for a hand-made layer.

    ``kind``, ``name``, ``children``, ``spec`` and ``repr`` are derived from ``record``.
    A layer is immutable; ``layer.replace(features=20)`` builds a changed copy.

    Example:
        >>> dense = fnn.Dense(10)
        >>> dense.replace(features=20, name="head")
        Dense(20, name='head')
    """

    def __new__(cls, init: InitFn, apply: ApplyFn, record: BuildRecord | None = None) -> "Layer":
        self = super().__new__(cls, init, apply)
        object.__setattr__(self, "record", record)
        return self

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"layers are immutable; use layer.replace({key}=...) for a changed copy")

    __delattr__ = __setattr__

    @property
    def kind(self) -> str:
        """The registered type, e.g. ``"Dense"``; ``"Layer"`` for a hand-made layer."""
        return self.record.kind if self.record else "Layer"

    @property
    def name(self) -> str | None:
        """The key given with ``name=``, or ``None`` (the parent numbers it by kind)."""
        return self.record.name if self.record else None

    @property
    def children(self) -> tuple["Layer", ...]:
        """The sub-layers given to this layer's constructor, in argument order."""
        if self.record is None:
            return ()
        return tuple(_layers_in(self.record.args.values()))

    @property
    def layout(self) -> tuple[tuple[tuple[str, ...], "Layer"], ...]:
        """Where each sub-layer's params and state live: ``(keys, child)`` pairs, ``keys`` the
        dict keys from this layer's params to the child's (``()``: the child adds no level), as
        declared by the kind's ``layout=``. Empty for layers without sub-layers.

        Example:
            >>> fnn.residual(fnn.Dense(4), fnn.Relu).layout
            ((('body', 'dense_0'), Dense(4)), (('body', 'relu_0'), Relu()))
        """
        if self.record is None or not self.children:
            return ()
        declared = _KINDS[self.record.kind].layout
        return tuple((tuple(keys), child) for keys, child in declared(self.record.args))

    @property
    def spec(self) -> Any:
        """The plain-data form (JSON/YAML) that rebuilds this layer with ``fnn.from_spec``.

        Raises:
            SpecError: naming the place of a hand-made layer or of an argument that is not
                plain data (a function instead of an initializer's name, say).
        """
        return plain_spec(self)

    def replace(self, **changes: Any) -> "Layer":
        """This layer rebuilt by its constructor with some arguments (or ``name``) changed."""
        if self.record is None:
            raise TypeError("a hand-made Layer(init, apply) has no build record to replace "
                            "arguments in; register its constructor with @fnn.layer_type")
        kind = _KINDS[self.record.kind]
        unknown = set(changes) - set(kind.signature.parameters) - {"name"}
        if unknown:
            raise TypeError(f"{self.kind}: unknown argument(s) {', '.join(sorted(unknown))}; "
                            f"takes {', '.join(kind.signature.parameters)}, name")
        name = changes.pop("name", self.record.name)
        return kind.build_from({**self.record.args, **changes}, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"a {self.kind} layer is already built and is not called on data: run it "
                        f"with layer.apply(params, state, x); change it with layer.replace(...)")

    def __repr__(self) -> str:
        return format_layer(self)

    # NamedTuple equality compares the two functions; keep identity semantics for hashing.
    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


def _layers_in(values: Any) -> Iterator[Layer]:
    for v in values:
        if isinstance(v, Layer):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _layers_in(v)


# --------------------------------------------------------------------------- registration

class _Kind(NamedTuple):
    """A registered layer kind: its public constructor and what the registration knows of it."""

    kind: str
    build: Callable[..., Layer]
    signature: inspect.Signature  # of the constructor as written (without ``name``)
    sublayers: tuple[str, ...]
    module: str
    layout: "Callable[[Mapping[str, Any]], Sequence[tuple[Sequence[str], Layer]]] | None" = None
    defaults: "Callable[[Mapping[str, Any]], Mapping[str, Layer]] | None" = None

    def build_from(self, args: Mapping[str, Any], name: str | None) -> Layer:
        """Call the constructor with arguments given by parameter name (``*layers`` included)."""
        return _call(self.build, self.signature, args, name=name)


_KINDS: dict[str, _Kind] = {}
_CONSTRUCTORS: "weakref.WeakSet[Callable[..., Layer]]" = weakref.WeakSet()


def build_layer(kind: str, arguments: Mapping[str, Any], name: str | None = None) -> Layer:
    """A layer of the registered ``kind`` from its constructor's arguments given by parameter
    name (``*layers`` as a sequence): the inverse of ``layer.record`` (used by ``from_spec``).

    Example:
        >>> build_layer("serial", {"layers": [fnn.Dense(3), fnn.Relu()]}, name="block")
        serial(
          Dense(3),
          Relu(),
          name='block',
        )
    """
    return _KINDS[kind].build_from(arguments, name)


def registered_layers() -> dict[str, Callable[..., Layer]]:
    """All layer constructors by kind (``{"Dense": fnn.Dense, ...}``); used by configs."""
    return {kind: k.build for kind, k in _KINDS.items()}


def kind_modules(layer: Layer) -> dict[str, str]:
    """``{kind: module}`` for every registered kind in a network (saved with it, so that loading
    it where a custom kind is not imported can name the missing import)."""
    found: dict[str, str] = {}
    if layer.record is not None:
        found[layer.kind] = _KINDS[layer.kind].module
    for child in layer.children:
        found.update(kind_modules(child))
    return found


def sublayer_arguments(kind: str) -> tuple[str, ...]:
    """The constructor arguments of ``kind`` that take layers (declared at registration)."""
    return _KINDS[kind].sublayers


def constructor_signature(kind: str) -> inspect.Signature:
    """The signature of ``kind``'s constructor as written (without the added ``name``)."""
    return _KINDS[kind].signature


def layer_type(kind: str, *, sublayers: str | Sequence[str] = (),
               layout: Callable[[Mapping[str, Any]], Sequence[tuple[Sequence[str], Layer]]]
               | None = None,
               defaults: Callable[[Mapping[str, Any]], Mapping[str, Layer]] | None = None
               ) -> Callable[[Callable[..., Layer]], Callable[..., Layer]]:
    """Register a layer constructor under ``kind``.

    The constructor takes the layer's hyper-parameters and returns ``Layer(init, apply)``. The
    registration gives every layer it builds a :class:`BuildRecord`, adds a keyword argument
    ``name=`` (the layer's key in its parent), turns constructors passed for the arguments named
    in ``sublayers`` into layers (``serial(Dense(8), Relu)``), and makes each ``LayerError``
    raised by the layer name its ``kind``. Registering a kind again from the same module
    replaces it (re-running a notebook cell); from another module it is an error.

    Args:
        kind: the name used in configs and saved architectures, e.g. ``"Dense"``.
        sublayers: the constructor's arguments that take layers: ``*layers`` (any number) or
            a plain argument (one layer, ``None`` allowed), e.g. ``"layers"`` for ``serial``.
        layout: required with ``sublayers``: where each sub-layer's params and state live in
            this layer's. A function of the constructor's arguments (by name) returning
            ``(keys, child)`` pairs, ``keys`` the tuple of dict keys from this layer's params to
            the child's (``()`` for a child that adds no level). :func:`numbered` (children keyed
            ``dense_0``, ``relu_0``... as ``serial`` does) and :func:`transparent` (the child's
            params are this layer's) cover most combinators. Freezing, optimizer masks,
            regularizer selections, ``summary`` and :func:`map_layers` follow this declaration.
        defaults: for a kind whose sub-layers have defaults made from its other arguments (a
            block that builds its own attention and norms): a function of all the arguments
            (by name, defaults applied) returning ``{argument: layer}``; each sub-layer argument
            given as ``None`` (or left out) gets its default layer in the build record, so the
            layout, freezing and :func:`map_layers` reach it. Specs and ``repr`` leave out a
            sub-layer whose spec equals its default's.

    Example:
        >>> @fnn.layer_type("Multiply")
        ... def Multiply(factor: float = 2.0) -> fnn.Layer:
        ...     init = lambda rng, shape: (shape, {}, {})
        ...     apply = lambda params, state, x, *, rng=None, train=False: (x * factor, state)
        ...     return fnn.Layer(init, apply)
        >>> Multiply(3.0, name="triple")
        Multiply(factor=3.0, name='triple')
    """
    sublayers = (sublayers,) if isinstance(sublayers, str) else tuple(sublayers)

    def decorate(constructor: Callable[..., Layer]) -> Callable[..., Layer]:
        sig = inspect.signature(constructor)
        if "name" in sig.parameters:
            raise TypeError(f"layer kind {kind!r}: the registration adds name=; remove the "
                            f"constructor's own name parameter")
        unknown = [s for s in sublayers if s not in sig.parameters]
        if unknown:
            raise TypeError(f"layer kind {kind!r}: sublayers names {unknown}, which the "
                            f"constructor does not take")
        if sublayers and layout is None:
            raise TypeError(f"layer kind {kind!r}: declare where its sub-layers' params live with "
                            f"layout=, e.g. layout=fnn.core.numbered('{sublayers[0]}') (keys "
                            f"dense_0, relu_0, ... as serial) or fnn.core.transparent('"
                            f"{sublayers[0]}') (no level of its own); see docs/LAYERS.md")
        known = _KINDS.get(kind)
        if known is not None and known.module != constructor.__module__:
            raise ValueError(f"layer kind {kind!r} is already registered by module "
                             f"{known.module!r}; choose another kind")

        @functools.wraps(constructor)
        def build(*args: Any, name: str | None = None, **kwargs: Any) -> Layer:
            if name is not None and (not isinstance(name, str) or not name or "/" in name):
                raise ArgumentError(kind, f"name must be a non-empty string without '/', "
                                          f"got {name!r}")
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise ArgumentError(kind, str(e)) from None
            arguments = dict(bound.arguments)
            if defaults is not None:
                full = sig.bind(*args, **kwargs)
                full.apply_defaults()
                for arg, layer in defaults(full.arguments).items():
                    if arguments.get(arg) is None:
                        arguments[arg] = layer
            for arg in sublayers:
                if arg in arguments and sig.parameters[arg].kind is inspect.Parameter.VAR_POSITIONAL:
                    arguments[arg] = tuple(as_layer(v, f"{kind}: {arg}") for v in arguments[arg])
                elif arguments.get(arg) is not None:
                    arguments[arg] = as_layer(arguments[arg], f"{kind}: {arg}")
            record = BuildRecord(kind, types.MappingProxyType(arguments), name)
            try:
                made = _call(constructor, sig, arguments)
            except LayerError as e:  # e.g. duplicate child names: say which kind of layer
                if e.kind is None:
                    raise LayerError(e.detail, kind=kind, path=e.path) from None
                raise
            if not isinstance(made, Layer):
                raise TypeError(f"the constructor of layer kind {kind!r} must return a "
                                f"fnn.Layer, got {type(made).__name__}")
            apply = made.apply if sublayers else _check_params(made.init, made.apply)
            return Layer(_name_errors(made.init, kind), _name_errors(apply, kind), record)

        parameters = list(sig.parameters.values())
        at = len(parameters) - int(bool(parameters) and parameters[-1].kind is inspect.Parameter.VAR_KEYWORD)
        parameters.insert(at, inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY,
                                                default=None, annotation="str | None"))
        build.__signature__ = sig.replace(parameters=parameters)
        _KINDS[kind] = _Kind(kind, build, sig, sublayers, constructor.__module__, layout,
                             defaults)
        _CONSTRUCTORS.add(build)
        return build

    return decorate


def _call(fn: Callable, sig: inspect.Signature, arguments: Mapping[str, Any], **extra: Any) -> Any:
    """``fn`` called with ``arguments`` given by parameter name in ``sig`` (in any order), each
    passed positionally or by keyword as ``sig`` requires, plus the keywords ``extra``."""
    bound = inspect.BoundArguments(sig, dict(arguments))
    return fn(*bound.args, **bound.kwargs, **extra)


def as_layer(value: Any, what: str = "layer") -> Layer:
    """``value`` if it is a layer; a registered constructor called with no arguments
    (``fnn.Relu`` -> ``fnn.Relu()``); otherwise a ``TypeError`` naming ``what``.

    Example:
        >>> fnn.core.as_layer(fnn.Relu)
        Relu()
    """
    if isinstance(value, Layer):
        return value
    if callable(value) and value in _CONSTRUCTORS:
        try:
            return value()
        except TypeError as e:
            raise TypeError(f"{what}: {e}; call the constructor with its arguments") from None
    raise TypeError(f"{what}: expected a fnn Layer or a layer constructor such as fnn.Relu, "
                    f"got {type(value).__name__}: {value!r}")


def numbered(*arguments: str) -> Callable[[Mapping[str, Any]], list[tuple[tuple[str, ...], Layer]]]:
    """A ``layout=`` for combinators that key their children as ``serial`` does: the layers of
    ``arguments`` in order, under :func:`child_keys` (``dense_0``, ``relu_0``, or ``name=``)."""
    def layout(args: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Layer]]:
        layers = list(_layers_in(args.get(a) for a in arguments))
        return [((key,), layer) for key, layer in zip(child_keys(layers), layers)]

    return layout


def transparent(*arguments: str) -> Callable[[Mapping[str, Any]], list[tuple[tuple[str, ...], Layer]]]:
    """A ``layout=`` for wrappers whose params and state are their child's (no level of their
    own: ``Frozen``, ``DtypePolicy``, ``repeat``, ``shared``)."""
    def layout(args: Mapping[str, Any]) -> list[tuple[tuple[str, ...], Layer]]:
        return [((), layer) for layer in _layers_in(args.get(a) for a in arguments)]

    return layout


def non_default_arguments(sig: inspect.Signature, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The bound ``arguments`` that differ from their defaults in ``sig`` (what a spec records)."""
    return {k: v for k, v in arguments.items()
            if sig.parameters[k].default is inspect.Parameter.empty
            or not _same(v, sig.parameters[k].default)}


def given_arguments(record: BuildRecord, signature: inspect.Signature) -> dict[str, Any]:
    """The arguments of ``record`` a spec or ``repr`` shows: those that differ from their
    defaults in ``signature``, less the sub-layers equal to the defaults the kind's
    ``defaults=`` makes (compared by spec)."""
    given = non_default_arguments(signature, record.args)
    kind = _KINDS.get(record.kind)
    if kind is None or kind.defaults is None or kind.signature is not signature:
        return given
    full = {name: p.default for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty}
    made = kind.defaults({**full, **record.args})
    for arg, layer in made.items():
        if isinstance(given.get(arg), Layer) and _same_spec(given[arg], layer):
            del given[arg]
    return given


def _same_spec(a: Layer, b: Layer) -> bool:
    try:
        return plain_spec(a) == plain_spec(b)
    except SpecError:  # a hand-made layer is never a kind's default
        return False


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # arrays and other values without a plain truth value
        return a is b


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


def _init_shape(x: Any) -> Any:
    """The ``init`` input shape of an input (batch as ``-1``); tuples of inputs stay tuples."""
    if isinstance(x, (tuple, list)):
        return tuple(_init_shape(v) for v in x)
    shape = tuple(np.shape(x))
    return (-1, *shape[1:]) if shape else shape


def _check_params(init: InitFn, apply: ApplyFn) -> ApplyFn:
    """``apply`` that first checks ``params`` against what ``init`` makes for the same input
    shape (keys and leaf shapes; found once per shape, abstractly), so that params of another
    network or with a missing or misspelt key fail in one line naming the key."""
    expected_for: dict[Any, Any] = {}

    @functools.wraps(apply)
    def checked(params, state, x, **kwargs):
        key = shape = _init_shape(x)
        if key not in expected_for:
            try:
                expected_for[key] = jax.eval_shape(lambda r: init(r, shape)[1], jax.random.key(0))
            except Exception:  # a shape init cannot take: apply reports the input itself
                expected_for[key] = None
        mismatch = None if expected_for[key] is None else _compare_params(expected_for[key], params)
        out = apply(params, state, x, **kwargs)  # a bad input is reported by the layer itself
        if mismatch:
            raise LayerError(mismatch)
        return out

    return checked


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {"/".join(key_name(k) for k in path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _compare_params(expected: Any, params: Any) -> str | None:
    """Raise for a missing or extra params key; return what is wrong with a shape, or None."""
    want, got = _leaf_shapes(expected), _leaf_shapes(params)
    needs = ", ".join(f"{k} {v}" for k, v in want.items()) or "no params"
    missing = [k for k in want if k not in got]
    if missing:
        raise LayerError(f"params lack {', '.join(map(repr, missing))} (the layer needs {needs}); "
                         f"are these the params of this network, with its layer keys?")
    extra = [k for k in got if k not in want]
    if extra:
        raise LayerError(f"params have {', '.join(map(repr, extra))}, which the layer does not "
                         f"use (it needs {needs}); are these the params of this network?")
    wrong = [k for k, shape in want.items() if got[k] != shape]
    if wrong:
        return (f"params {', '.join(f'{k!r} has shape {got[k]}' for k in wrong)}; the layer needs "
                f"{needs} for this input; are these the params of another network?")
    return None


# --------------------------------------------------------------------------- what the record gives

def map_layers(fn: Callable[..., Layer], layer: Layer, *, with_path: bool = False) -> Layer:
    """Rewrite a network bottom-up: ``fn`` is called on every layer after its sub-layers were
    rewritten; a layer whose sub-layers changed is rebuilt by its constructor with the same
    arguments. Params and state keep their keys: a rewritten child that would be numbered
    differently (a ``Dense`` wrapped in ``Frozen``) keeps its old key as its ``name``.

    Args:
        fn: ``fn(layer) -> layer``, or ``fn(layer, path) -> layer`` with ``with_path=True``,
            ``path`` the tuple of keys from the root's params to the layer's (as
            :func:`layer_paths` gives; ``()`` for the root).

    Example:
        >>> net = fnn.serial(fnn.Dense(4), fnn.BatchNorm, fnn.Relu)
        >>> synced = fnn.map_layers(
        ...     lambda l: l.replace(axis_name="batch") if l.kind == "BatchNorm" else l, net)
        >>> synced.children[1]
        BatchNorm(axis_name='batch')
        >>> fnn.map_layers(lambda l, path: print("/".join(path) or "(root)") or l, net,
        ...                with_path=True) is net
        dense_0
        batch_norm_0
        relu_0
        (root)
        True
    """
    return _map(fn if with_path else (lambda lay, path: fn(lay)), layer, ())


def _map(fn: Callable[[Layer, tuple[str, ...]], Layer], layer: Layer,
         path: tuple[str, ...]) -> Layer:
    layout = layer.layout
    if layout:
        new = [_map(fn, child, path + keys) for keys, child in layout]
        if any(n is not child for n, (_, child) in zip(new, layout)):
            rebuilt = _rebuild(layer, layout, new)
            if [k for k, _ in rebuilt.layout] != [k for k, _ in layout]:  # keep every child's key
                new = [n.replace(name=keys[-1]) if keys and n.name is None else n
                       for n, (keys, _) in zip(new, layout)]
                rebuilt = _rebuild(layer, layout, new)
            layer = rebuilt
    return fn(layer, path)


def _rebuild(layer: Layer, layout: Sequence[tuple[Any, Layer]], new: Sequence[Layer]) -> Layer:
    """``layer`` rebuilt with the sub-layers of its ``layout`` replaced by ``new`` (in order; a
    layer object given twice is matched occurrence by occurrence)."""
    rec = layer.record
    pending: dict[int, list[Layer]] = {}
    for (_, child), n in zip(layout, new):
        pending.setdefault(id(child), []).append(n)

    def visit(value: Any) -> Any:
        if isinstance(value, Layer):
            queue = pending.get(id(value))
            return queue.pop(0) if queue else value
        if isinstance(value, tuple):
            return tuple(visit(v) for v in value)
        return value

    sub = _KINDS[rec.kind].sublayers
    return _KINDS[rec.kind].build_from({k: (visit(v) if k in sub else v)
                                        for k, v in rec.args.items()}, rec.name)


def layer_paths(net: Layer) -> list[tuple[tuple[str, ...], Layer]]:
    """Every layer of ``net`` with its path, root first: ``(keys, layer)``, ``keys`` the dict keys
    from ``net``'s params to the layer's (what ``fnn.summary`` prints). Found from the declared
    layouts, without initialising anything. A wrapper and the layer it wraps (``Frozen``,
    ``DtypePolicy``, ``repeat``) share a path.

    Example:
        >>> net = fnn.serial(fnn.Dense(4), fnn.repeat(fnn.serial(fnn.Dense(4), fnn.Tanh), 3))
        >>> [("/".join(p), l.kind) for p, l in layer_paths(net)]
        [('', 'serial'), ('dense_0', 'Dense'), ('repeat_0', 'Repeat'), ('repeat_0', 'serial'),
         ('repeat_0/dense_0', 'Dense'), ('repeat_0/tanh_0', 'Tanh')]
    """
    found: list[tuple[tuple[str, ...], Layer]] = []

    def walk(layer: Layer, path: tuple[str, ...]) -> None:
        found.append((path, layer))
        for keys, child in layer.layout:
            walk(child, path + keys)

    walk(net, ())
    return found


def select_layers(net: Layer, names: Sequence[str], where: str) -> list[tuple[tuple[str, ...], Layer]]:
    """The layers of ``net`` that ``names`` select: a name ``"a/b"`` selects every layer whose
    path holds the consecutive keys ``a``, ``b`` (the matcher optimizer masks and regularizer
    selections use on params paths); only the outermost of nested selections is returned.

    Raises:
        LayerNameError: ``"<where>: no layer 'x' in the network; did you mean ...?"``.

    Example:
        >>> net = fnn.serial(fnn.serial(fnn.Dense(8), fnn.Relu, name="encoder"), fnn.Dense(2))
        >>> [("/".join(p), l.kind) for p, l in select_layers(net, ["encoder"], "freeze")]
        [('encoder', 'serial')]
        >>> select_layers(net, ["encoder/dense_1"], "freeze")
        Traceback (most recent call last):
        fnn.core.LayerNameError: freeze: no layer 'encoder/dense_1' in the network; did you mean dense_0?
    """
    rows = layer_paths(net)
    wanted = [tuple(p for p in str(name).split("/") if p) for name in names]
    for name, parts in zip(names, wanted):
        if not any(parts and under_layer(parts, path) for path, _ in rows):
            raise no_layer_error(where, name, [k for path, _ in rows for k in path],
                                 container="the network")
    outermost: list[tuple[tuple[str, ...], Layer]] = []
    for path, layer in rows:  # root first: a wrapper or an ancestor comes before what it holds
        if any(parts and under_layer(parts, path) for parts in wanted) and \
                not any(path[:len(p)] == p for p, _ in outermost):
            outermost.append((path, layer))
    return outermost


def plain_spec(layer: Layer, path: str = "model") -> Any:
    """The plain-data form of a layer: ``"Relu"`` or ``{"Dense": {"features": 8}}`` (arguments
    equal to their defaults left out; sub-layers as their specs); see ``fnn.layers.spec``."""
    rec = layer.record
    if rec is None:
        raise SpecError(path, "a hand-made Layer(init, apply) has no build record, so the "
                              "architecture cannot be saved; register its constructor with "
                              "@fnn.layer_type('Kind') (docs/LAYERS.md) or use fnn.save_weights")
    return record_spec(rec, _KINDS[rec.kind].signature, path)


def record_spec(record: BuildRecord, signature: inspect.Signature, path: str = "model") -> Any:
    """The plain spec of a build record: ``kind``, or ``{kind: {arg: value, "name": name}}`` with
    the arguments that differ from their defaults in ``signature`` as plain data (layers as their
    specs, named initializers by name). Layers use it through ``layer.spec``; recurrent cells
    (``fnn.layers.cells``) through ``cell.spec``.

    Example:
        >>> record_spec(BuildRecord("Dense", {"features": 3, "use_bias": True}),
        ...             constructor_signature("Dense"))
        {'Dense': {'features': 3}}
    """
    out = {}
    for arg, value in given_arguments(record, signature).items():
        out[arg] = _plain_value(value, f"{path}.{record.kind}.{arg}")
    if record.name is not None:
        out["name"] = record.name
    return {record.kind: out} if out else record.kind


def _plain_value(value: Any, path: str) -> Any:
    if isinstance(value, Layer):
        return plain_spec(value, path)
    if isinstance(value, (list, tuple)):
        return [_plain_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain_value(v, f"{path}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    spec = getattr(value, "spec", None)  # a named initializer (or activation, loss) record
    if spec is not None and not callable(spec):
        return _plain_value(spec, path)
    raise SpecError(path, f"{type(value).__name__} {value!r} is not plain data, so the "
                          f"architecture cannot be saved; give it by name, e.g. 'he_normal' or "
                          f"{{'delta_orthogonal': {{'gain': 1.04}}}}")


def format_layer(layer: Layer, indent: str = "") -> str:
    """``repr`` of a layer: its kind and non-default arguments, sub-layers as an indented tree."""
    rec = layer.record
    if rec is None:
        return "Layer(<hand-made>)"
    sig = _KINDS[rec.kind].signature
    inner = indent + "  "
    parts: list[str] = []
    nested = False
    by_position = True
    for arg, value in given_arguments(rec, sig).items():
        p = sig.parameters[arg]
        text, has_layers = _format_value(value, inner)
        nested = nested or has_layers
        if p.kind is p.VAR_POSITIONAL:
            parts.extend(_format_value(v, inner)[0] for v in value)
        elif by_position and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) \
                and p.default is p.empty:
            parts.append(text)
        else:
            by_position = False
            parts.append(f"{arg}={text}")
    if rec.name is not None:
        parts.append(f"name={rec.name!r}")
    if not nested:
        return f"{rec.kind}({', '.join(parts)})"
    return f"{rec.kind}(\n" + "".join(f"{inner}{p},\n" for p in parts) + f"{indent})"


def _format_value(value: Any, indent: str) -> tuple[str, bool]:
    if isinstance(value, Layer):
        return format_layer(value, indent), True
    if isinstance(value, (list, tuple)) and any(isinstance(v, Layer) for v in value):
        inner = indent + "  "
        items = "".join(f"{inner}{_format_value(v, inner)[0]},\n" for v in value)
        return f"[\n{items}{indent}]", True
    return repr(value), False


# --------------------------------------------------------------------------- combinator helpers

def snake_case(name: str) -> str:
    """``"BatchNorm"`` -> ``"batch_norm"``, ``"Conv2D"`` -> ``"conv2d"``, ``"PRelu"`` -> ``"prelu"``."""
    s = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    s = re.sub(r"([A-Z]{2,})([A-Z][a-z])", r"\1_\2", s)
    return s.lower()


def default_key(layer: Layer) -> str:
    """The key of ``layer`` in its parent before numbering: its ``name`` or ``snake_case(kind)``."""
    return layer.name or snake_case(layer.kind)


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
            path = tuple(k for k in rec.stack if k)  # "" is a child that adds no level
            rec.stack.pop()
    if rec is not None:
        rec.rows[index] = (path, layer, out[0], out[1], out[2])
    return out


_APPLY_HOOK: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("fnn_apply_hook",
                                                                             default=None)


@contextlib.contextmanager
def watching_apply(hook: Callable[..., Any]) -> Iterator[None]:
    """Within this context every ``apply_child`` call runs as ``hook(key, layer, params, state,
    x, rng=, train=)`` instead of ``layer.apply(...)``: a hook may check or wrap a layer's
    inputs and outputs (used by ``fnn.localize`` to find the first non-finite value)."""
    token = _APPLY_HOOK.set(hook)
    try:
        yield
    finally:
        _APPLY_HOOK.reset(token)


def apply_child(key: str, layer: Layer, params: Params, state: State, x: Any, *,
                rng: jax.Array | None, train: bool):
    """Call ``layer.apply`` as child ``key`` of a combinator: errors get ``key`` in their path."""
    hook = _APPLY_HOOK.get()
    try:
        if hook is not None:
            return hook(key, layer, params, state, x, rng=rng, train=train)
        return layer.apply(params, state, x, rng=rng, train=train)
    except LayerError as e:
        raise e.within(key) from None


def split_rng(rng: jax.Array | None, n: int) -> list[jax.Array | None]:
    """``n`` independent keys from ``rng``, or ``n`` ``None`` when ``rng`` is ``None``.

    ``rng`` may be one key or one key per example (shape ``(batch,)``, see :func:`draw`);
    each of the ``n`` results has ``rng``'s shape.
    """
    if rng is None:
        return [None] * n
    return list(split_keys(rng, n))


def split_keys(rng: jax.Array, n: int) -> jax.Array:
    """``n`` keys from ``rng`` stacked on a new leading axis: shape ``(n, *rng.shape)``.

    For one key this is ``jax.random.split(rng, n)``; per-example keys (shape ``(batch,)``)
    are split example by example, so example ``b`` of result ``i`` depends only on ``rng[b]``.

    Example:
        >>> keys = jax.random.split(jax.random.key(0), 5)          # one key per example
        >>> split_keys(keys, 3).shape
        (3, 5)
        >>> bool((jax.random.key_data(split_keys(keys, 3)[:, 2])
        ...       == jax.random.key_data(jax.random.split(keys[2], 3))).all())
        True
    """
    if rng.ndim == 0:
        return jax.random.split(rng, n)
    return jax.vmap(lambda key: jax.random.split(key, n), out_axes=1)(rng)


def draw(rng: jax.Array, sample: Callable[[jax.Array, tuple[int, ...]], jax.Array],
         shape: tuple[int, ...]) -> jax.Array:
    """Random values of ``shape`` from ``sample(key, shape)``, per example when ``rng`` is.

    A layer's ``rng`` is one key (the values are ``sample(rng, shape)``) or one key per example
    of the batch, shape ``(batch,)``: what the training step passes, folded from each
    example's index in the global batch, so that an example's dropout mask does not depend on
    how the batch is split over devices. Then example ``b`` gets ``sample(rng[b], shape[1:])``.
    A leading axis that is a multiple of the batch (``batch * time`` rows) gives each key its
    consecutive rows; a leading axis of 1 (a draw shared by the batch) uses the first key.

    Example:
        >>> keys = jax.random.split(jax.random.key(0), 4)          # 4 examples
        >>> bits = draw(keys, lambda k, s: jax.random.bernoulli(k, 0.5, s), (4, 3))
        >>> bits.shape
        (4, 3)
        >>> bool((bits[1] == jax.random.bernoulli(keys[1], 0.5, (3,))).all())
        True
    """
    if rng.ndim == 0:
        return sample(rng, tuple(shape))
    k, n = rng.shape[0], shape[0]
    if n == 1:
        return sample(rng[0], tuple(shape))
    if n % k:
        raise LayerError(f"got {k} per-example keys for a batch of {n} rows; pass one key or "
                         "one key per example")
    rows = jax.vmap(lambda key: sample(key, (n // k, *shape[1:])))(rng)
    return rows.reshape(tuple(shape))


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


def key_name(entry: Any) -> str:
    """The text of one pytree path entry (a dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def under_layer(name_parts: Sequence[str], layer_keys: Sequence[str]) -> bool:
    """Whether a layer name's parts (``("block", "dense_0")`` for ``"block/dense_0"``) are
    consecutive keys of ``layer_keys``, a leaf's path without its own name.

    Example:
        >>> under_layer(("block", "dense_0"), ("encoder", "block", "dense_0"))
        True
        >>> under_layer(("dense_0",), ("dense_1",))
        False
    """
    keys, parts, n = tuple(layer_keys), tuple(name_parts), len(name_parts)
    return any(keys[i:i + n] == parts for i in range(len(keys) - n + 1))


def leaf_layer_paths(tree: Any) -> list[tuple[str, ...]]:
    """The layer path of every leaf of a params (or state) tree, in leaf order: its keys without
    the leaf's own name (``("block", "dense_0")`` for ``block/dense_0/w``).

    Example:
        >>> leaf_layer_paths({"block": {"dense_0": {"b": 0.0, "w": 1.0}}})
        [('block', 'dense_0'), ('block', 'dense_0')]
    """
    return [tuple(key_name(k) for k in path[:-1])
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_layer_names(names: Sequence[str], layer_paths: Sequence[Sequence[str]], where: str) -> None:
    """Every name (``"dense_0"``, ``"block/dense_0"``) matches some layer path by
    :func:`under_layer`, or :func:`no_layer_error` is raised: the one check behind
    ``optimizer.freeze``, ``regularizers.layers`` and ``fnn validate``.

    Example:
        >>> check_layer_names(["dense_9"], [("dense_0",), ("dense_1",)], "freeze")
        Traceback (most recent call last):
        fnn.core.LayerNameError: freeze: no layer 'dense_9' in params; did you mean dense_1, dense_0?
    """
    for name in names:
        parts = tuple(str(name).split("/"))
        if not any(under_layer(parts, keys) for keys in layer_paths):
            raise no_layer_error(where, str(name), [k for keys in layer_paths for k in keys])


def no_layer_error(where: str, name: str, layer_keys: Sequence[str],
                   container: str = "params") -> LayerNameError:
    """The one-line error for a layer name that matches nothing, with the closest keys.

    Example:
        >>> print(no_layer_error("freeze", "dense_9", ["dense_0", "dense_1"]))
        freeze: no layer 'dense_9' in params; did you mean dense_1, dense_0?
    """
    parts = [p for p in str(name).split("/") if p]
    keys = sorted(set(layer_keys))
    close = difflib.get_close_matches(parts[-1] if parts else "", keys, n=3)
    hint = (f"; did you mean {', '.join(close)}?" if close
            else f"; layer keys: {', '.join(keys) or '(none)'}")
    return LayerNameError(where, f"no layer {name!r} in {container}{hint}")


def check_shape(shape: Any, *, min_rank: int = 1, what: str = "input") -> Shape:
    """Validate an ``init`` input shape: a tuple of ints of rank ``>= min_rank``."""
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, (int, np.integer)) for d in shape):
        raise LayerError(f"{what} shape must be a tuple of ints (use -1 for the batch), got {shape!r}")
    shape = tuple(int(d) for d in shape)
    if len(shape) < min_rank:
        raise LayerError(f"expects an {what} of rank >= {min_rank} (batch first), got shape {shape}")
    return shape
