"""Helpers shared by the two thin command-line shells."""

from __future__ import annotations

import os
import sys
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the output


def run_cli(fn: Callable[[], object]) -> None:
    """Run ``fn``; a user error prints one clear line and exits 2 instead of a traceback."""
    from .backbones import WeightsUnavailableError  # noqa: PLC0415
    from .cache import CacheError  # noqa: PLC0415
    from .discover import DataError  # noqa: PLC0415

    try:
        fn()
    except (DataError, CacheError, WeightsUnavailableError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def none_or_str(value: str) -> str | None:
    return value or None
