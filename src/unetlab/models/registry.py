"""Models are chosen by name: `create_model("unet", base_width=16)`; the config's `model:` section maps onto it.

One name space: base architectures (`register_model`, a decorator on a factory) and named variants
(`register_variant("unet-add", base="unet", skip="add")`: a registered base with some options
fixed as new defaults, which the user's options may still override). Both are created, listed
and validated alike; `list_models(variants=False)` gives the base architectures only and
`variant_of(name)` a variant's base and fixed options.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable

import pydantic
import torch
import torch.nn as nn

from unetlab.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
# variant name -> (base name, options fixed as its defaults)
_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        _MODELS[name] = factory
        return factory

    return decorator


def register_variant(name: str, *, base: str, **options: Any) -> Callable[..., nn.Module]:
    """Register `name` as model `base` with `options` as its defaults; returns the variant's factory.

    The option names are checked now (a typo fails at import); their values when the variant is
    validated or created, like any model's (the shared model tests build every variant).
    """
    if base in _VARIANTS:
        raise ValueError(f"variant {name!r}: base {base!r} is itself a variant; use its base {_VARIANTS[base][0]!r}")
    _check_names(base, options)
    factory = functools.partial(_factory(base), **options)
    register_model(name)(factory)
    _VARIANTS[name] = (base, dict(options))
    return factory


def unregister_model(name: str) -> None:
    """Remove model or variant `name` (KeyError if absent)."""
    del _MODELS[name]
    _VARIANTS.pop(name, None)


def list_models(variants: bool = True) -> list[str]:
    """Every registered name, sorted; `variants=False`: the base architectures only."""
    return sorted(name for name in _MODELS if variants or name not in _VARIANTS)


def variant_of(name: str) -> tuple[str, dict[str, Any]] | None:
    """(base name, fixed options) of variant `name` (a copy); None for a base architecture."""
    _factory(name)
    if name not in _VARIANTS:
        return None
    base, options = _VARIANTS[name]
    return base, dict(options)


def _factory(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _MODELS[name]


def _check_names(name: str, options: dict[str, Any]) -> None:
    accepted = inspect.signature(_factory(name)).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown config key 'model.{unknown[0]}': not an option of model {name!r}; "
                          f"it takes {', '.join(accepted)}")


def _type_hints(factory: Callable[..., nn.Module]) -> dict[str, Any]:
    while isinstance(factory, functools.partial):  # a variant: its base's annotations
        factory = factory.func
    return typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)


def _value_error(name: str, options: dict[str, Any], exc: Exception) -> ConfigError:
    message = str(exc)
    key = next((k for k in sorted(options, key=len, reverse=True) if k in message), None)
    return ConfigError(f"bad value for 'model.{key}': {message}" if key else f"bad value for model {name!r}: {message}")


def validate_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """All options of model `name` (defaults filled, types checked), or a ConfigError naming the key.

    Value ranges are checked by building the model on the meta device, which allocates nothing;
    pretrained weights are not fetched here (`encoder_weights` is checked when training starts).
    """
    factory = _factory(name)
    _check_names(name, options)
    signature = inspect.signature(factory)
    hints = _type_hints(factory)
    fields = {key: (hints.get(key, Any), param.default if param.default is not param.empty else ...)
              for key, param in signature.parameters.items()}
    schema = pydantic.create_model(f"{name}_options", __config__=pydantic.ConfigDict(extra="forbid"),
                                   **fields)  # type: ignore[call-overload]
    try:
        resolved = schema.model_validate(options).model_dump()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"bad value for 'model.{key}': {first['msg']}") from None
    probe = {k: v for k, v in resolved.items() if k != "encoder_weights"}
    try:
        with torch.device("meta"):
            factory(**probe)
    except (ValueError, TypeError) as exc:
        raise _value_error(name, options, exc) from None
    except RuntimeError as exc:  # torch's own size checks (e.g. a width so large its tensors overflow)
        changed = ", ".join(f"model.{k}={v!r}" for k, v in resolved.items()
                            if v != signature.parameters[k].default)  # the options the user set
        raise ConfigError(f"bad value for model {name!r} ({changed}): cannot build it: "
                          f"{str(exc).splitlines()[0]}") from None
    return resolved


def create_model(name: str, **options: Any) -> nn.Module:
    factory = _factory(name)
    _check_names(name, options)
    try:
        return factory(**options)
    except (ValueError, TypeError) as exc:
        raise _value_error(name, options, exc) from None
