"""Models are chosen by name: `create_model("unet", base_width=16)`; the config's `model:` section maps onto it."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from unetlab.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        _MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **options: Any) -> nn.Module:
    if name not in _MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; choose one of {', '.join(list_models())}")
    factory = _MODELS[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: not an option of model {name!r}; "
                          f"it takes {', '.join(accepted)}")
    return factory(**options)
