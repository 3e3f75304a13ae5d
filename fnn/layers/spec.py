"""Build layers from specs: the plain-data form used by configs and saved architectures.

A spec is one of:

* ``"Relu"`` -- a layer kind with default arguments;
* ``{"Dense": 800}`` -- one positional argument;
* ``{"Dense": {"features": 800, "use_bias": false}}`` -- keyword arguments;
* ``{"serial": [spec, spec, ...]}`` -- the sub-layers of a combinator (also
  ``{"residual": {"layers": [...], "shortcut": spec}}``);
* a list of specs -- shorthand for ``serial``.

``layer.spec`` gives back a layer's spec, so ``from_spec(net.spec)`` rebuilds ``net``.

Example:
    >>> net = from_spec([{"Dense": 800}, "Relu", {"Dropout": 0.2}, {"Dense": 10}])
    >>> net.init(jax.random.key(0), (-1, 784))[0]
    (-1, 10)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from fnn.core import (Layer, SpecError, as_layer, build_layer, registered_layers,
                      sublayer_arguments)

__all__ = ["from_spec", "SpecError", "keyword_arguments"]


def _lookup(kind: str, path: str, modules: dict[str, str] | None = None
            ) -> tuple[str, Callable[..., Layer]]:
    registry = registered_layers()
    if kind in registry:
        return kind, registry[kind]
    folded = {k.lower().replace("_", ""): k for k in registry}
    key = kind.lower().replace("_", "")
    if key in folded:
        return folded[key], registry[folded[key]]
    close = difflib.get_close_matches(kind, list(registry), n=3, cutoff=0.5)
    close = close or [folded[k] for k in difflib.get_close_matches(key, list(folded), n=3)]
    module = (modules or {}).get(kind)
    if module == "__main__":
        raise SpecError(path, f"unknown layer {kind!r}: it was defined in a script (module "
                              f"__main__) when the network was saved, and a script is not "
                              f"importable; move its @fnn.layer_type definition into a module "
                              f"(e.g. mylayers.py) and import that module before loading "
                              f"(fnn commands: --import mylayers, or the config key imports)")
    if module:
        raise SpecError(path, f"unknown layer {kind!r}: it was registered by module {module!r}, "
                              f"which this process has not imported; import {module} first "
                              f"(fnn commands: --import {module}, or the config key imports)")
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise SpecError(path, f"unknown layer {kind!r}{hint} (known layers: {', '.join(sorted(registry))}); "
                          f"a layer of your own must be imported (registered) before it is used")


def _convert(value: Any, param: inspect.Parameter, takes_layers: bool, path: str,
             modules: dict[str, str] | None) -> Any:
    if not takes_layers or value is None:
        return value
    if param.kind is param.VAR_POSITIONAL:
        if not isinstance(value, list):
            raise SpecError(path, f"expected a list of layers, got {value!r}")
        return [from_spec(v, f"{path}[{i}]", modules) for i, v in enumerate(value)]
    return from_spec(value, path, modules)


def keyword_arguments(kind: str, args: Any) -> dict[str, Any]:
    """A layer's shorthand arguments spelt out: ``keyword_arguments("Dense", 8) == {"features": 8}``."""
    if args is None:
        return {}
    if isinstance(args, dict):
        return dict(args)
    kind, constructor = _lookup(kind, kind)
    positional = [p for p in inspect.signature(constructor).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if not positional:
        raise SpecError(kind, f"takes keyword arguments only, got {args!r}")
    return {positional[0].name: args}


def from_spec(spec: Any, path: str = "model", modules: dict[str, str] | None = None) -> Layer:
    """Build a :class:`~fnn.core.Layer` from its spec (see the module docstring).

    ``modules`` maps kinds to the modules that registered them (stored by ``fnn.save``), so
    that a missing custom layer is reported with the import it needs.

    Raises:
        SpecError: naming the key path for an unknown layer (with a "did you mean" hint),
            an unknown argument, or arguments the layer rejects.
    """
    if isinstance(spec, Layer) or callable(spec):
        try:
            return as_layer(spec)
        except TypeError as e:
            raise SpecError(path, str(e)) from None
    if isinstance(spec, list):
        serial = registered_layers()["serial"]
        return serial(*[from_spec(item, f"{path}[{i}]", modules) for i, item in enumerate(spec)])
    if isinstance(spec, str):
        kind, args = spec, None
    elif isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        if not isinstance(kind, str):
            raise SpecError(path, f"a layer's name must be a string, got {kind!r}")
    else:
        raise SpecError(path, "a layer is a name (\"Relu\") or a one-key mapping "
                              f"({{\"Dense\": {{\"features\": 10}}}}), got {spec!r}")
    kind, constructor = _lookup(kind, path, modules)
    here = f"{path}.{kind}"
    params = inspect.signature(constructor).parameters
    takes_layers = sublayer_arguments(kind)
    positional = [p for p in params.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    arguments: dict[str, Any] = {}  # by parameter name; ``*layers`` as a list
    if args is None:
        pass
    elif isinstance(args, dict):
        for key, value in args.items():
            if key not in params:
                close = difflib.get_close_matches(str(key), list(params), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise SpecError(f"{here}.{key}", f"unknown argument{hint} "
                                f"({kind} takes: {', '.join(params)})")
            arguments[key] = _convert(value, params[key], key in takes_layers, f"{here}.{key}",
                                      modules)
    elif isinstance(args, list) and positional and positional[0].kind is inspect.Parameter.VAR_POSITIONAL:
        arguments[positional[0].name] = _convert(args, positional[0],
                                                 positional[0].name in takes_layers, here, modules)
    elif positional:
        arguments[positional[0].name] = _convert(args, positional[0],
                                                 positional[0].name in takes_layers,
                                                 f"{here}.{positional[0].name}", modules)
    else:
        raise SpecError(here, f"takes keyword arguments only ({', '.join(params)}), got {args!r}")
    for p in positional:  # one value given for *layers is a list of one
        if p.kind is p.VAR_POSITIONAL and p.name in arguments \
                and not isinstance(arguments[p.name], list):
            arguments[p.name] = [arguments[p.name]]
    name = arguments.pop("name", None)
    try:
        return build_layer(kind, arguments, name)
    except SpecError:
        raise
    except (TypeError, ValueError) as e:
        message = str(e)
        message = message[len(kind) + 2:] if message.startswith(f"{kind}: ") else message
        raise SpecError(here, message) from None
