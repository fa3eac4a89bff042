"""Head registry: ``@register_head`` adds a class, ``create_head(name, **kwargs)`` builds one."""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

_HEADS: dict[str, type] = {}
T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Param:
    """The values one head argument accepts, checked by :func:`create_head` before any work starts.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; ``gt``/``ge``/``lt``/``le`` bound numbers;
    ``choices`` are the allowed strings (for ``str``) or extra literal values (e.g. ``"auto"`` for
    a number); ``none_ok`` also allows ``None`` (``null`` in HEAD_ARGS).
    """

    kind: type
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    none_ok: bool = False

    def describe(self) -> str:
        if self.kind is str:
            parts = ["one of " + ", ".join(repr(c) for c in self.choices)]
        else:
            base = {int: "an integer", float: "a number", bool: "true or false"}[self.kind]
            bounds = [f"{op} {v:g}" for op, v in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
                      if v is not None]
            parts = [base + (" " + " and ".join(bounds) if bounds else "")]
            parts += [repr(c) for c in self.choices]
        if self.none_ok:
            parts.append("null")
        return " or ".join(parts)

    def check(self, value: Any) -> Any:
        """``value`` coerced to ``kind`` (1 → 1.0 for a float); ``ValueError`` when not allowed."""
        if value is None:
            if self.none_ok:
                return None
            raise ValueError
        if value in self.choices and isinstance(value, str):
            return value
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if self.kind is str or isinstance(value, (bool, str)):
            raise ValueError
        if self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise ValueError
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        for bound, ok in ((self.gt, lambda v, b: v > b), (self.ge, lambda v, b: v >= b),
                          (self.lt, lambda v, b: v < b), (self.le, lambda v, b: v <= b)):
            if bound is not None and not ok(value, bound):
                raise ValueError
        return value


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


def canonical_head(name: str) -> str:
    """The registered spelling of a head name given in another case (``Dense`` → ``dense``, ``linear_svm`` →
    ``linear-svm``); a name that matches none is returned as given, for :func:`head_class`'s error."""
    if name in _HEADS:
        return name
    folded = {h.lower().replace("_", "-"): h for h in _HEADS}
    return folded.get(name.strip().lower().replace("_", "-"), name)


def head_class(name: str) -> type:
    try:
        return _HEADS[canonical_head(name)]
    except KeyError:
        raise ValueError(f"unknown HEAD={name!r}; choose one of: {', '.join(list_heads())}") from None


def head_params(name: str) -> dict[str, object]:
    """The keyword arguments a head accepts, with their defaults."""
    sig = inspect.signature(head_class(name).__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def describe_params(name: str) -> str:
    """``C=1.0 (a number > 0 or 'auto'), max_iter=1000 (an integer >= 1)``: for error messages and docs."""
    specs = getattr(head_class(name), "param_specs", {})
    return ", ".join(f"{k}={v!r}" + (f" ({specs[k].describe()})" if k in specs else "")
                     for k, v in head_params(name).items())


def validate_head_args(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check keyword arguments of head ``name``: unknown keys and bad values name the key and what is allowed."""
    params = head_params(name)
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"head {name!r} has no argument {', '.join(unknown)}; "
                         f"valid arguments: {describe_params(name)}")
    specs = getattr(head_class(name), "param_specs", {})
    out = dict(kwargs)
    for key, value in kwargs.items():
        if key in specs:
            try:
                out[key] = specs[key].check(value)
            except (ValueError, TypeError):
                raise ValueError(f"head {name!r}: {key}={value!r} is not allowed; {key} must be "
                                 f"{specs[key].describe()} (default {params[key]!r})") from None
    return out


def create_head(name: str, **kwargs):
    """Build head ``name``; an unknown keyword or a bad value gets an error naming what is valid."""
    return head_class(name)(**validate_head_args(name, kwargs))
