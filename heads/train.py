"""Stage 2: read a feature cache, fit a head, evaluate it and write a run folder.

Reads only the HDF5 file: no image is opened and no backbone is built.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from extract.cache import DEFAULT_DIR, CacheError, FeatureCache, newest_complete

from .base import Head
from .registry import create_head, head_params

RANDOM_WEIGHTS_NOTE = "random backbone weights (WEIGHTS=none): accuracy is not meaningful"
TRAIN_ROUNDS = ("all", "clean")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Split:
    """Features (n, *feature_shape) float32, labels (n,), cache paths (n,)."""

    X: np.ndarray
    y: np.ndarray
    paths: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class CacheData:
    path: Path
    config: dict[str, Any]
    class_names: list[str]
    train: Split
    val: Split
    test: Split  # labelled test rows only


def load_cache(features: str | os.PathLike, train_rounds: str = "all") -> CacheData:
    """Read the rows a head needs; validation and test use the clean view (round 0) only."""
    if train_rounds not in TRAIN_ROUNDS:
        raise ValueError(f"TRAIN_ROUNDS={train_rounds!r} is not one of {', '.join(TRAIN_ROUNDS)}")
    with FeatureCache(features) as c:
        c.require_complete()
        labels, paths = c.column("label"), c.column("path")

        def take(split: str, rounds: str, labelled: bool = False) -> Split:
            idx = c.rows(split, rounds)
            if labelled:
                idx = idx[labels[idx] >= 0]
            return Split(c.features(idx), labels[idx], paths[idx])

        data = CacheData(Path(features), c.config, c.class_names,
                         take("train", train_rounds), take("val", "clean"), take("test", "clean", labelled=True))
    if len(data.train) == 0:
        raise CacheError(f"{features} has no training rows")
    for name in ("train", "val", "test"):
        X = getattr(data, name).X
        if X.size and not np.isfinite(X).all():
            raise CacheError(f"{features} has NaN or inf in its {name} features; re-extract it (`make verify` shows where)")
    return data


def full_proba(head: Head, X: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba expanded to every class of the cache (columns the head never saw are 0)."""
    out = np.zeros((len(X), n_classes), np.float64)
    if len(X):
        out[:, np.asarray(head.classes_, int)] = head.predict_proba(X)
    return out


def evaluate(proba: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Accuracy, top-5 accuracy and log loss of class probabilities (n, n_classes) against y."""
    from sklearn.metrics import log_loss  # noqa: PLC0415

    if len(y) == 0:
        return {"accuracy": None, "top5_accuracy": None, "log_loss": None}
    labels = np.arange(proba.shape[1])
    k = min(5, proba.shape[1])  # with 5 classes or fewer, top-5 is 1.0 by definition
    clipped = np.clip(proba, 1e-15, 1)
    clipped /= clipped.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(np.mean(np.argmax(proba, 1) == y)),
        "top5_accuracy": float(np.mean((np.argsort(-proba, axis=1)[:, :k] == y[:, None]).any(axis=1))),
        "log_loss": float(log_loss(y, clipped, labels=labels)),
    }


def default_run_dir(features: Path, head: str) -> Path:
    return Path("runs") / features.stem / head


def parse_head_args(text: str | None) -> dict[str, Any]:
    """``'C=0.5 max_iter=500'`` → ``{'C': 0.5, 'max_iter': 500}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for token in (text or "").split():
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(f"HEAD_ARGS entry {token!r} is not key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@dataclass
class TrainResult:
    head: Head
    metrics: dict[str, Any]
    run_dir: Path


def train_head(
    head: str = "logreg",
    features: str | os.PathLike | None = None,
    run: str | os.PathLike | None = None,
    *,
    head_args: dict[str, Any] | None = None,
    train_rounds: str = "all",
    cache_dir: str | os.PathLike = DEFAULT_DIR,
    plots: bool = True,
    log: Callable[[str], None] = _log,
) -> TrainResult:
    """Fit head ``head`` on a cache and write ``run`` (default ``runs/<cache stem>/<head>/``).

    The run folder holds the saved head (``head/``), ``metrics.json``, ``run.json`` (what
    ``predict`` needs), a confusion-matrix PNG and, for ``dense``, training curves.
    """
    features = Path(features) if features else newest_complete(cache_dir)
    args = dict(head_args or {})
    if "seed" in head_params(head) and "seed" not in args:
        args["seed"] = 0
    model = create_head(head, **args)
    data = load_cache(features, train_rounds)
    n_classes = len(data.class_names)
    run_dir = Path(run) if run else default_run_dir(features, head)
    log(f"training {head} on {features.name}: {len(data.train):,} train rows, {len(data.val):,} val rows")

    start = time.perf_counter()
    model.fit(data.train.X, data.train.y, validation_data=(data.val.X, data.val.y) if len(data.val) else None)
    fit_seconds = time.perf_counter() - start

    val_proba = full_proba(model, data.val.X, n_classes)
    val = evaluate(val_proba, data.val.y)
    test = evaluate(full_proba(model, data.test.X, n_classes), data.test.y)
    train_acc = evaluate(full_proba(model, data.train.X, n_classes), data.train.y)["accuracy"]
    random_weights = data.config["weights"]["kind"] == "none"
    metrics = {
        "head": head,
        "head_args": model.get_params(),
        "features": str(features),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test_labelled": len(data.test),
        "train_accuracy": train_acc,
        "val_accuracy": val["accuracy"],
        "val_top5_accuracy": val["top5_accuracy"],
        "val_log_loss": val["log_loss"],
        "test_accuracy": test["accuracy"] if len(data.test) else None,
        "fit_seconds": round(fit_seconds, 3),
        "train_rounds": train_rounds,
        "weights": data.config["weights"]["kind"],
        "note": RANDOM_WEIGHTS_NOTE if random_weights else "",
    }
    if getattr(model, "n_epochs_", None):
        metrics["epochs_run"] = model.n_epochs_

    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "head")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "run.json").write_text(json.dumps({
        "head": head, "features": str(features.resolve()), "class_names": data.class_names,
        "cache_config": data.config,
    }, indent=2))
    if plots:
        from .report import plot_confusion, plot_history  # noqa: PLC0415

        if len(data.val):
            plot_confusion(data.val.y, val_proba.argmax(1), data.class_names, run_dir / "confusion_matrix.png",
                           title=f"{head}: validation confusion matrix")
        if getattr(model, "history_", None):
            plot_history(model.history_, run_dir / "training_curves.png", title=f"{head} training curves")
    log(format_summary(metrics, run_dir))
    return TrainResult(model, metrics, run_dir)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def format_summary(metrics: dict[str, Any], run_dir: Path) -> str:
    lines = [
        f"{metrics['head']}: val accuracy {_pct(metrics['val_accuracy'])}, top-5 {_pct(metrics['val_top5_accuracy'])}, "
        f"log loss {metrics['val_log_loss'] if metrics['val_log_loss'] is None else round(metrics['val_log_loss'], 4)}, "
        f"train accuracy {_pct(metrics['train_accuracy'])}"
        + (f", test accuracy {_pct(metrics['test_accuracy'])}" if metrics["test_accuracy"] is not None else ""),
        f"fit in {metrics['fit_seconds']:.2f} s on {metrics['n_train']:,} rows; run saved in {run_dir}",
    ]
    if metrics["note"]:
        lines.append(f"NOTE: {metrics['note']}")
    return "\n".join(lines)
