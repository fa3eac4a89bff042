"""Helpers shared by the two thin command-line shells."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the output


def run_cli(fn: Callable[[], object], interrupted: str = "") -> None:
    """Run ``fn``; a user error prints one clear line and exits 2 instead of a traceback.

    An ``OSError`` (OUT= a folder, a full disk, no permission) or a ``MemoryError`` (BATCH= too large, saying
    so) is one line too. Ctrl-C prints
    ``interrupted`` and what it means (``interrupted``: e.g. how to resume), exit 130.
    """
    from .backbones import WeightsUnavailableError  # noqa: PLC0415
    from .cache import CacheError  # noqa: PLC0415
    from .discover import DataError  # noqa: PLC0415

    try:
        fn()
    except (DataError, CacheError, WeightsUnavailableError, OSError, ValueError, MemoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted" + (f": {interrupted}" if interrupted else ""), file=sys.stderr)
        sys.exit(130)


def none_or_str(value: str) -> str | None:
    return value or None


class MakeVariableParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the make variable beside the flag
    (``SIZE= (--size): invalid int value: 'abc'``) instead of argparse's usage block."""

    FLAG_VARIABLES = {"--data-root": "DATA"}  # the one flag not named after its variable

    def error(self, message: str) -> NoReturn:
        def variable(flag: re.Match) -> str:
            name = self.FLAG_VARIABLES.get(flag.group(), flag.group()[2:].upper().replace("-", "_"))
            return f"{name}= ({flag.group()})"

        said = message if message.startswith("unrecognized") else re.sub(  # a flag that is no variable stays
            r"--[a-z][a-z-]*", variable, message.removeprefix("argument "))
        self.exit(2, f"error: {said}. `make help` lists the variables; README.md says what each takes.\n")
