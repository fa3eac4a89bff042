"""Train several heads on one cache and tabulate them side by side (never re-extracts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from extract.cache import DEFAULT_DIR, newest_complete

from .registry import list_heads
from .train import RANDOM_WEIGHTS_NOTE, train_head


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def compare_heads(
    features: str | os.PathLike | None = None,
    heads: list[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike = DEFAULT_DIR,
    log: Callable[[str], None] = _log,
) -> pd.DataFrame:
    """Fit each head in ``heads`` (default: all registered) on ``features``; write ``compare.md``.

    Returns one row per head with val accuracy, top-5, log loss, test accuracy and fit seconds.
    """
    features = Path(features) if features else newest_complete(cache_dir)
    heads = heads or list_heads()
    out_dir = Path(out_dir) if out_dir else Path("runs") / features.stem
    rows, note = [], ""
    for name in heads:
        result = train_head(name, features, out_dir / name, log=log)
        m = result.metrics
        note = note or m["note"]
        rows.append({
            "head": name, "val_accuracy": m["val_accuracy"], "val_top5_accuracy": m["val_top5_accuracy"],
            "val_log_loss": m["val_log_loss"], "test_accuracy": m["test_accuracy"],
            "train_accuracy": m["train_accuracy"], "fit_seconds": m["fit_seconds"],
        })
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"# Heads on `{features.name}`\n\n" + table.to_markdown(index=False, floatfmt=".4f") + "\n"
    if note:
        md += f"\n**Note: {RANDOM_WEIGHTS_NOTE}.**\n"
    (out_dir / "compare.md").write_text(md)
    log(f"\n{table.to_string(index=False, float_format=lambda v: f'{v:.4f}')}")
    if note:
        log(f"NOTE: {RANDOM_WEIGHTS_NOTE}")
    log(f"wrote {out_dir / 'compare.md'}")
    return table
