"""Head registry: ``@register_head`` adds a class, ``create_head(name, **kwargs)`` builds one."""

from __future__ import annotations

import inspect
import warnings
from typing import Callable, TypeVar

_HEADS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_head(name: str) -> Callable[[T], T]:
    def add(cls: T) -> T:
        if name in _HEADS:
            warnings.warn(f"head {name!r} registered twice; the later class wins", stacklevel=2)
        cls.name = name
        _HEADS[name] = cls
        return cls
    return add


def list_heads() -> list[str]:
    return sorted(_HEADS)


def head_class(name: str) -> type:
    try:
        return _HEADS[name]
    except KeyError:
        raise ValueError(f"unknown HEAD={name!r}; choose one of: {', '.join(list_heads())}") from None


def head_params(name: str) -> dict[str, object]:
    """The keyword arguments a head accepts, with their defaults."""
    sig = inspect.signature(head_class(name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def create_head(name: str, **kwargs):
    """Build head ``name``; an unknown keyword gets an error listing the valid ones."""
    params = head_params(name)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ValueError(f"head {name!r} has no argument {', '.join(unknown)}; valid arguments: {valid}")
    return head_class(name)(**kwargs)
