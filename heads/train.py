"""Stage 2: read a feature cache, fit a head, evaluate it and write a run folder.

Reads only the HDF5 file(s): no image is opened and no backbone is built. ``FEATURES=a.h5,b.h5``
joins several caches of the same images column-wise (:class:`FeatureSource`). Streaming heads
(``sgd``) read their training rows block by block and never hold them all in memory.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from extract.cache import DEFAULT_DIR, CacheError, FeatureCache, Inputs, newest_complete

from .base import BlockSource, Head, RareClassError, index_blocks
from .registry import canonical_head, create_head, head_params
from .report import find_data_root

RANDOM_WEIGHTS_NOTE = "random backbone weights (WEIGHTS=none): accuracy is not meaningful"
# predict and export compute no accuracy: what they say of a random-weights run
RANDOM_WEIGHTS_PREDICTIONS_NOTE = "random backbone weights (WEIGHTS=none): predictions are not meaningful"
# what to do about all-zero features (train-head's warning, and export's when its check ran on such rows)
ZERO_FEATURES_FIX = ("re-extract with DTYPE=float32 if the cache is float16, and check WEIGHTS= (random weights "
                     "can give tiny or zero features)")
# all: every view of each training image; clean: round 0 only; augmented: the augmented views only (as features
# extracted once through an augmenting ImageDataGenerator, the tutorial's way)
TRAIN_ROUNDS = ("all", "clean", "augmented")
EXIT_ACCURACY = 3  # the CLI's exit code when ASSERT_ACCURACY fails
# What train_head writes into a run folder, and export/ (`make export`'s default OUT): a retrain replaces them all.
RUN_OUTPUTS = ("head", "metrics.json", "run.json", "confusion_matrix.png", "training_curves.png", "report.html")
EXPORT_DIR = "export"
EXPORT_FORMAT_FILES = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite"}
EXPORT_FILES = ("labels.json", "export.json", *EXPORT_FORMAT_FILES.values())


class AccuracyBelowThreshold(Exception):
    """Val accuracy is below ASSERT_ACCURACY (the run folders are still written)."""


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
    """What a head needs from one cache or several joined ones; ``path``/``config`` are the first cache's."""

    path: Path
    config: dict[str, Any]
    class_names: list[str]
    train: Split  # train.X is None when read with load_train=False (streaming heads)
    val: Split
    test: Split  # labelled test rows only
    paths: list[Path]
    configs: list[dict[str, Any]]


def feature_paths(features: str | os.PathLike | Sequence[str | os.PathLike] | None,
                  cache_dir: str | os.PathLike = DEFAULT_DIR) -> list[Path]:
    """``FEATURES`` as a list of files: ``'a.h5,b.h5'``, a path, a list, or None (the newest complete cache)."""
    if features is None or features == "":
        return [newest_complete(cache_dir)]
    items = features.split(",") if isinstance(features, str) else (
        [features] if isinstance(features, os.PathLike) else list(features))
    paths = [Path(str(p).strip()).expanduser() for p in items if str(p).strip()]
    if not paths:
        raise ValueError(f"FEATURES={features!r} names no file")
    if len(set(paths)) != len(paths):
        raise ValueError(f"FEATURES={features!r} names a file twice")
    for p in paths:
        if p.is_dir():
            caches = sorted(c.name for c in p.glob("*.h5"))
            if not caches:
                raise CacheError(f"FEATURES={p} is a directory and holds no .h5 cache; pass a cache file, "
                                 f"e.g. FEATURES=features_cache/<name>.h5 (`make extract` writes one)")
            listed = ", ".join(caches[:5]) + (f" and {len(caches) - 5} more" if len(caches) > 5 else "")
            raise CacheError(f"FEATURES={p} is a directory; pass one .h5 cache file in it, "
                             f"e.g. FEATURES={p / caches[0]} (it holds {listed})")
    return paths


def _n(count: int, noun: str) -> str:
    """``3 rows``, ``1 row``: a count and its noun, in messages that can count one."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _are(count: int) -> str:
    return "is" if count == 1 else "are"


def _example(paths: np.ndarray, rounds: np.ndarray, rows: np.ndarray) -> str:
    i = rows[0]
    return f"{paths[i]}" + (f" (round {rounds[i]})" if rounds[i] else "")


def _stamps(cache: FeatureCache) -> np.ndarray | None:
    """The per-row ``stamp`` column ('size:mtime_ns' of the image file), or None in a cache without one."""
    try:
        return cache.column("stamp").astype(str)
    except KeyError:
        return None


def _mtime(stamp: str) -> int | None:
    _, sep, mtime = stamp.partition(":")
    return int(mtime) if sep and mtime.lstrip("-").isdigit() else None


def extract_command(cache: FeatureCache) -> str:
    """The ``make extract`` line with the settings ``cache`` was made with.

    LABELS, TEST, ID_COL and LABEL_COL come from the cache; a cache written before they were recorded gives
    none of them (its line may need the LABELS=/TEST= it was made with).
    """
    c, inputs = cache.config, cache.inputs or Inputs()
    weights = c.get("weights", {})
    parts = {
        "DATA": str(cache.data_root) if cache.data_root else "<image folder>",
        "LABELS": inputs.labels_csv,
        "TEST": inputs.test_root,
        "ID_COL": inputs.id_col,
        "LABEL_COL": inputs.label_col,
        "BACKBONE": c.get("backbone", {}).get("name"),
        "SIZE": c.get("size"),
        "POOLING": c.get("pooling"),
        "WEIGHTS": {"none": "none", "imagenet": "imagenet"}.get(weights.get("kind")) or weights.get("path"),
        "DTYPE": c.get("dtype"),
        "PRECISION": c.get("precision"),
        "VAL": c.get("val"),
        "SEED": c.get("seed"),
    }
    aug = c.get("augmentation") or {}
    if aug.get("rounds"):
        parts["AUGMENT"] = aug["preset"] if aug.get("preset") != "custom" else ",".join(
            f"{k}={v}" for k, v in sorted(aug.get("params", {}).items()))
        parts["ROUNDS"] = aug["rounds"]
    parts["OUT"] = str(cache.path)
    return "make extract " + " ".join(f"{k}={shlex.quote(format(v, 'g') if isinstance(v, float) else str(v))}"
                                      for k, v in parts.items() if v is not None)


class FeatureSource:
    """One cache, or several caches of the same images whose features are joined column-wise.

    Rows follow the first cache; each other cache's rows are matched by (path, round). The
    caches must hold the same images and rounds, with the same labels, splits and class names,
    extracted from the same version of each image file (the per-row ``stamp``), or the
    constructor raises a :class:`CacheError` saying what differs and how to fix it. ``features(index)``
    gives (n, *feature_shape) float32 for one cache, and (n, sum of the flattened widths) for
    several, in the order the files were given. Use as a context manager.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        self._caches: list[FeatureCache] = []
        try:
            for p in self.paths:
                self._caches.append(FeatureCache(p))
                self._caches[-1].require_complete()
            first = self._caches[0]
            self.labels, self.path_column = first.column("label"), first.column("path")
            self.split, self.round = first.column("split"), first.column("round")
            self.stamp = _stamps(first)
            self.class_names, self.configs = first.class_names, [c.config for c in self._caches]
            self._rows_in = [None] + [self._match(c) for c in self._caches[1:]]
        except BaseException:
            self.close()
            raise

    def _match(self, other: FeatureCache) -> np.ndarray:
        """For each row of the first cache, its row in ``other``; errors say what differs."""
        a, b = self.paths[0].name, other.path.name
        what = f"FEATURES={','.join(str(p) for p in self.paths)}: {a} and {b} are not caches of the same images"
        if other.class_names != self.class_names:
            only_a = [c for c in self.class_names if c not in set(other.class_names)]
            only_b = [c for c in other.class_names if c not in set(self.class_names)]
            differ = "; ".join([f"only in {a}: {', '.join(only_a[:5])}"] * bool(only_a)
                               + [f"only in {b}: {', '.join(only_b[:5])}"] * bool(only_b)
                               ) or "the same names in another order"
            raise CacheError(f"{what}: their class names differ ({len(self.class_names)} in {a}, "
                             f"{len(other.class_names)} in {b}; {differ})")
        o_path, o_round = other.column("path"), other.column("round")
        keys = list(zip(self.path_column, self.round.tolist()))
        position = {k: i for i, k in enumerate(zip(o_path, o_round.tolist()))}
        for name, n_keys, n_unique in ((a, len(keys), len(set(keys))), (b, len(o_path), len(position))):
            if n_keys != n_unique:
                raise CacheError(f"{name} holds {n_keys - n_unique} duplicate (path, round) rows; re-extract it")
        rows = np.array([position.get(k, -1) for k in keys], dtype=np.int64)
        only_a = np.flatnonzero(rows < 0)
        matched = np.zeros(len(o_path), bool)
        matched[rows[rows >= 0]] = True
        only_b = np.flatnonzero(~matched)
        if len(only_a) or len(only_b):
            examples = []
            if len(only_a):
                examples.append(f"{_n(len(only_a), 'row')} of {a} {_are(len(only_a))} not in {b}, e.g. "
                                f"{_example(self.path_column, self.round, only_a)}")
            if len(only_b):
                examples.append(f"{_n(len(only_b), 'row')} of {b} {_are(len(only_b))} not in {a}, e.g. "
                                f"{_example(o_path, o_round, only_b)}")
            raise CacheError(f"{what}: different image sets: {'; '.join(examples)}. "
                             f"Extract both from the same DATA (and the same augmentation rounds).")
        o_label, o_split = other.column("label"), other.column("split")
        bad = np.flatnonzero(o_label[rows] != self.labels)
        if len(bad):
            i = bad[0]
            name = lambda k: self.class_names[k] if k >= 0 else "unlabelled"  # noqa: E731
            differ = "1 image has a different label" if len(bad) == 1 else f"{len(bad):,} images have different labels"
            raise CacheError(f"{what}: {differ}, e.g. {self.path_column[i]}: "
                             f"{name(self.labels[i])!r} in {a}, {name(o_label[rows[i]])!r} in {b}")
        bad = np.flatnonzero(o_split[rows] != self.split)
        if len(bad):
            i = bad[0]
            differ = "1 image is in another split" if len(bad) == 1 else f"{len(bad):,} images are in different splits"
            raise CacheError(f"{what}: {differ}, e.g. {self.path_column[i]}: "
                             f"{self.split[i]} in {a}, {o_split[rows[i]]} in {b}. Extract both with the same VAL= "
                             f"and SEED=, and the same TEST= folder.")
        self._check_versions(other, rows, what)
        return rows

    def _check_versions(self, other: FeatureCache, rows: np.ndarray, what: str) -> None:
        """Matched rows must come from the same version of their image file (equal ``stamp``): an image changed
        and re-extracted into one cache only would otherwise join its new features with its old ones."""
        theirs = _stamps(other)
        if self.stamp is None or theirs is None:
            return
        mine, theirs = self.stamp, theirs[rows]
        bad = np.flatnonzero((mine != theirs) & (mine != "") & (theirs != ""))  # "": a cache written without stamps
        if not len(bad):
            return
        caches = [self._caches[0], other]
        a, b = self.paths[0].name, other.path.name
        older = []  # per differing row: 0 when the first cache has the older file version, 1 the other, -1 unknown
        for i in bad:
            t = _mtime(mine[i]), _mtime(theirs[i])
            older.append(-1 if None in t or t[0] == t[1] else int(t[1] < t[0]))
        stale = sorted({k for k in older if k >= 0}) or [0, 1]
        if older[0] >= 0:
            said = f"{(b, a)[older[0]]} has the newer version of the file, {(a, b)[older[0]]} an older one"
        else:
            said = f"size:mtime {mine[bad[0]]} in {a}, {theirs[bad[0]]} in {b}"
        n_images = len(set(self.path_column[bad]))
        counted = _n(len(bad), 'row') + (f" ({_n(n_images, 'image')})" if n_images != len(bad) else "")
        folders = sorted({str(c.data_root) for c in caches})
        elsewhere = (f" They were extracted from different folders ({' and '.join(folders)}): join caches of "
                     f"one folder.") if len(folders) > 1 else ""
        raise CacheError(
            f"{what}: {counted} {'holds' if len(bad) == 1 else 'hold'} features of different versions of "
            f"{'its' if len(bad) == 1 else 'their'} image file (size or modification "
            f"time differ), e.g. {_example(self.path_column, self.round, bad)}: {said}. "
            f"Re-extract {' and '.join((a, b)[k] for k in stale)} with the settings "
            f"{'it was' if len(stale) == 1 else 'they were'} made with (and the same LABELS=/TEST=, if any); "
            f"that updates only the changed images: "
            + "; ".join(f"`{extract_command(caches[k])}`" for k in stale) + f".{elsewhere}")

    def __enter__(self) -> "FeatureSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for c in self._caches:
            c.close()

    def rows(self, split: str, rounds: str = "all", labelled: bool = False) -> np.ndarray:
        """Row indices (of the first cache) in ``split``; ``rounds='clean'`` keeps round 0 only, ``'augmented'``
        the other rounds."""
        mask = self.split == split
        if rounds == "clean":
            mask &= self.round == 0
        elif rounds == "augmented":
            mask &= self.round > 0
        if labelled:
            mask &= self.labels >= 0
        return np.flatnonzero(mask)

    def features(self, index: np.ndarray) -> np.ndarray:
        """float32 features of rows ``index`` (row indices of the first cache, any order)."""
        index = np.asarray(index, dtype=np.int64)
        if len(self._caches) == 1:
            return self._caches[0].features(index)
        parts = []
        for cache, rows_in in zip(self._caches, self._rows_in):
            rows = index if rows_in is None else rows_in[index]
            parts.append(cache.features(rows).reshape(len(rows), int(np.prod(cache.feature_shape))))
        return np.concatenate(parts, axis=1)

    def blocks(self, index: np.ndarray, block_rows: int) -> BlockSource:
        """A :data:`heads.base.BlockSource` over rows ``index``, reading at most ``block_rows`` at a time."""
        index = np.asarray(index, dtype=np.int64)

        def read(rng: np.random.Generator | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for pos in index_blocks(len(index), block_rows, rng):
                rows = index[pos]
                X = self.features(rows)
                _check_finite(X, "training", ",".join(str(p) for p in self.paths))
                yield X, self.labels[rows]
        return read


def _check_finite(X: np.ndarray, where: str, features: str) -> None:
    if X.size and not np.isfinite(X).all():
        raise CacheError(f"{features} has NaN or inf in its {where} features; "
                         f"re-extract it (`make verify` shows where)")


def scored_on(metrics: dict[str, Any]) -> str:
    """One line for a comparison table: what every row was trained and scored on, and what one val image is worth."""
    n_val, rounds = metrics["n_val"], metrics.get("train_rounds", "all")
    points = 100 / n_val if n_val else 0  # 2,054 val images: 0.049, which one decimal would print as 0.0
    worth = f"; one image is {points:.1f} points of accuracy" if points >= 1 else (
        f"; one image is {points:.2g} points of accuracy" if n_val else "")
    return (f"Trained on {metrics['n_train']:,} rows (TRAIN_ROUNDS={rounds}: "
            + {"all": "every view", "clean": "the clean view"}.get(rounds, "the augmented views")
            + " of each training image), scored on "
            f"{n_val:,} validation images (clean views){worth}.")


def read_splits(source: FeatureSource, train_rounds: str = "all", *, load_train: bool = True) -> CacheData:
    """The rows a head needs from an open source; validation and test use the clean view (round 0) only."""
    if train_rounds not in TRAIN_ROUNDS:
        raise ValueError(f"TRAIN_ROUNDS={train_rounds!r} is not one of {', '.join(TRAIN_ROUNDS)}")
    names = ",".join(str(p) for p in source.paths)

    def take(split: str, rounds: str, labelled: bool = False, load: bool = True) -> Split:
        idx = source.rows(split, rounds, labelled)
        X = source.features(idx) if load else None
        if X is not None:
            _check_finite(X, split, names)
        return Split(X, source.labels[idx], source.path_column[idx])

    data = CacheData(source.paths[0], source.configs[0], source.class_names,
                     take("train", train_rounds, load=load_train), take("val", "clean"),
                     take("test", "clean", labelled=True), list(source.paths), source.configs)
    if len(data.train) == 0:
        if train_rounds == "augmented" and len(source.rows("train")):
            raise CacheError(f"{names} has no augmented training rows for TRAIN_ROUNDS=augmented: extract with "
                             f"AUGMENT=<preset> ROUNDS=K, or train on TRAIN_ROUNDS=all or clean")
        raise CacheError(f"{names} has no training rows")
    return data


def load_cache(features: str | os.PathLike | Sequence[str | os.PathLike], train_rounds: str = "all", *,
               load_train: bool = True) -> CacheData:
    """Read the rows a head needs from one cache or several (``'a.h5,b.h5'`` or a list, joined column-wise).

    ``load_train=False`` leaves ``train.X`` as None (streaming heads read it in blocks instead).
    """
    with FeatureSource(feature_paths(features)) as source:
        return read_splits(source, train_rounds, load_train=load_train)


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
    clipped = np.clip(proba, 1e-15, 1)
    clipped /= clipped.sum(axis=1, keepdims=True)
    # A top-5 hit: the top-1 label (argmax, the label predict gives) or at most 5 classes, the true one included,
    # scoring at least the true class's probability. Other ties count against it, so a class given probability 0
    # is no hit because of where it sits in the class order; with 5 classes or fewer, top-5 is 1.0 by definition.
    top1 = np.argmax(proba, 1) == y
    rank = (proba >= proba[np.arange(len(y)), y][:, None]).sum(axis=1)
    return {
        "accuracy": float(np.mean(top1)),
        "top5_accuracy": float(np.mean(top1 | (rank <= 5))),
        "log_loss": float(log_loss(y, clipped, labels=labels)),
    }


def default_run_dir(features: Path | Sequence[Path], head: str) -> Path:
    """``runs/<cache stem>/<head>``; several caches give ``runs/<stem a>+<stem b>/<head>``."""
    paths = [features] if isinstance(features, Path) else list(features)
    return Path("runs") / "+".join(Path(p).stem for p in paths) / head


_COMMA_JOINED = re.compile(r"\s*,\s*(?=[A-Za-z_]\w*=)")  # "64,dropout1=0.3": a second argument after a comma


def parse_head_args(text: str | None) -> dict[str, Any]:
    """``'C=0.5 max_iter=500'`` → ``{'C': 0.5, 'max_iter': 500}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    tokens = (text or "").split()
    for n, token in enumerate(tokens, 1):
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ValueError(f"HEAD_ARGS entry {token!r} is not key=value")
        if _COMMA_JOINED.search(value) or (value.endswith(",") and n < len(tokens)):  # 'units=64, dropout1=0.3'
            fixed = " ".join(_COMMA_JOINED.sub(" ", text).split()).rstrip(",")
            raise ValueError(f"HEAD_ARGS={text!r}: {key}={value!r} holds a comma; head arguments are separated by "
                             f"spaces, not commas (unlike AUGMENT): HEAD_ARGS='{fixed}'")
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


def check_threshold(assert_accuracy: float | None) -> None:
    if assert_accuracy is not None and not 0 <= assert_accuracy <= 1:
        raise ValueError(f"ASSERT_ACCURACY={assert_accuracy} must be a fraction between 0 and 1, e.g. 0.85")


def accuracy_failures(metrics: list[dict[str, Any]], assert_accuracy: float) -> list[str]:
    """One line per head whose val accuracy is below ``assert_accuracy``."""
    return [f"{m['head']} val accuracy {'n/a' if m['val_accuracy'] is None else format(m['val_accuracy'], '.4f')} "
            f"< ASSERT_ACCURACY={assert_accuracy:g}"
            + (f" ({m['note']})" if m["note"] else "")
            for m in metrics if m["val_accuracy"] is None or m["val_accuracy"] < assert_accuracy]


def has_export(run_dir: Path) -> bool:
    """``run_dir/export`` is a real folder holding what `make export` writes (never followed through a symlink)."""
    export = run_dir / EXPORT_DIR
    return export.is_dir() and not export.is_symlink() and any((export / f).exists() for f in EXPORT_FILES)


def head_arguments(head: str, head_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The arguments :func:`train_head` creates ``head`` with: ``head_args``, and seed 0 unless given."""
    args = dict(head_args or {})
    if "seed" in head_params(head) and "seed" not in args:
        args["seed"] = 0
    return args


def work_at_stake(run_dir: Path, head: str, paths: Sequence[Path],
                  head_args: dict[str, Any] | None = None) -> list[str]:
    """What training ``head`` (with ``head_args``, on ``paths``) into ``run_dir`` would destroy and not make again:
    a run there of another head, cache or HEAD_ARGS, and an export/. Empty when ``run_dir`` holds no run, or one
    this training makes again but for TRAIN_ROUNDS (re-running a comparison, with other rounds too, replaces its
    own runs)."""
    if not (run_dir / "run.json").is_file():
        return []
    export = [f"an {EXPORT_DIR}/ made by `make export`"] if has_export(run_dir) else []
    try:
        info = json.loads((run_dir / "run.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return ["a run whose run.json or metrics.json cannot be read", *export]
    lost = []
    files = [str(f) for f in info.get("feature_files") or [info.get("features")]]
    wanted_files = [str(Path(p).resolve()) for p in paths]
    if files != wanted_files:  # a file named as one of these but elsewhere (a moved cache) by its path
        names = {Path(f).name for f in wanted_files}
        lost.append("a run on " + ", ".join(f if Path(f).name in names and f not in wanted_files else Path(f).name
                                            for f in files))
    if info.get("head") != head:
        lost.append(f"a {info.get('head')} head")
    else:
        wanted = json.loads(json.dumps(create_head(head, **head_arguments(head, head_args)).get_params()))
        # as HEAD_ARGS spells them (standardize=false, not Python's False), so the run can be made again
        differ = [f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                  for k, v in (metrics.get("head_args") or {}).items() if wanted.get(k) != v]
        if differ:
            lost.append(f"a run trained with HEAD_ARGS='{' '.join(differ)}'")
    return lost + export


def replace_previous_run(run_dir: Path) -> list[str]:
    """Remove what an earlier train_head left in ``run_dir`` (and its ``export/``), so no file of the old head
    outlives the new one (e.g. training_curves.png of a dense head under a logreg run, or an export of the old
    head). Acts only on a run folder (one holding run.json) and only on the names a run writes; returns those
    removed. Anything else in the folder stays."""
    if not (run_dir / "run.json").is_file():
        return []
    removed = []
    for name in RUN_OUTPUTS + ((EXPORT_DIR,) if has_export(run_dir) else ()):
        path = run_dir / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name)
    return removed


def joined_sizes_note(paths: Sequence[Path], configs: Sequence[dict[str, Any]]) -> str:
    """What joined caches of different SIZEs allow, said before training rather than found at export; "" if one."""
    if len({c["size"] for c in configs}) < 2:
        return ""
    sizes = ", ".join(f"{p.name} at {c['size']} px" for p, c in zip(paths, configs))
    return (f"the joined caches were extracted at different sizes ({sizes}): training and `make predict` work, "
            f"but `make export` builds a model for one image size and will refuse this run. To export, extract "
            f"them at one SIZE=.")


def _predict_timed(model: Head, X: np.ndarray, n_classes: int) -> tuple[np.ndarray, float | None]:
    """``full_proba`` and its milliseconds per row; a warm-up call first (Keras traces its graph once)."""
    if not len(X):
        return full_proba(model, X, n_classes), None
    model.predict_proba(X[:1])
    start = time.perf_counter()
    proba = full_proba(model, X, n_classes)
    return proba, 1000 * (time.perf_counter() - start) / len(X)


def train_head(
    head: str = "logreg",
    features: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    run: str | os.PathLike | None = None,
    *,
    head_args: dict[str, Any] | None = None,
    train_rounds: str = "all",
    cache_dir: str | os.PathLike = DEFAULT_DIR,
    data_root: str | os.PathLike | None = None,
    assert_accuracy: float | None = None,
    plots: bool = True,
    cost_noted: bool = False,
    log: Callable[[str], None] = _log,
) -> TrainResult:
    """Fit head ``head`` on a cache and write ``run`` (default ``runs/<cache stem>/<head>/``).

    ``features`` is one cache, or several of the same images (``'a.h5,b.h5'`` or a list) whose
    features are joined column-wise. The run folder holds the saved head (``head/``),
    ``metrics.json``, ``run.json`` (what ``predict`` needs), a confusion-matrix PNG and, for heads
    with a training history (dense, sgd), training curves. A streaming head (``sgd``) reads
    its training rows from the file in blocks of its ``block_rows``.

    With ``plots`` the run also gets ``report.html`` (:func:`heads.report.write_report`), whose
    gallery shows misclassified validation images from ``data_root`` (default: the image folder
    the cache records); ``run.json`` keeps that folder as ``data_root``.

    When ``run`` already holds a run (it has ``run.json``), the new one replaces it: once the
    head is fitted, every file the old run wrote, and its ``export/``, is removed first
    (:func:`replace_previous_run`), so nothing of the old head survives beside the new one.

    With ``assert_accuracy``, raises :class:`AccuracyBelowThreshold` (after writing the run)
    when val accuracy is lower. ``head`` is matched case-insensitively (``Dense`` is ``dense``).
    A head that would take hours says so in a NOTE before fitting, unless ``cost_noted`` (the caller has
    said it already, as :func:`heads.compare.compare_heads` does before its first head).
    """
    check_threshold(assert_accuracy)
    if isinstance(head_args, str):  # HEAD_ARGS's text, as on the make line; dict('C=0.5') fails obscurely
        try:
            hint = f": head_args={parse_head_args(head_args)!r}"
        except ValueError:
            hint = ", e.g. head_args={'C': 0.5}"
        raise TypeError(f"head_args={head_args!r} is text, as HEAD_ARGS= is on the make line; in Python pass a "
                        f"dict{hint}")
    head = canonical_head(head)
    model = create_head(head, **head_arguments(head, head_args))  # HEAD_ARGS checked before the caches are looked at
    paths = feature_paths(features, cache_dir)
    if features is None or features == "":
        n = len(list(Path(cache_dir).glob("*.h5")))
        log(f"FEATURES not given: using the newest complete cache {paths[0]} (of {n} in {cache_dir}/)")
    run_dir = Path(run) if run else default_run_dir(paths, head)
    names = ",".join(str(p) for p in paths)
    with FeatureSource(paths) as source:
        data = read_splits(source, train_rounds, load_train=not model.streaming)
        if assert_accuracy is not None and not len(data.val):
            raise ValueError(f"ASSERT_ACCURACY={assert_accuracy:g} needs validation rows, but {names} has none; "
                             f"extract with VAL>0")
        n_classes = len(data.class_names)
        log(f"training {head} on {', '.join(p.name for p in paths)}: {len(data.train):,} train rows, "
            f"{len(data.val):,} val rows" + (f", read in blocks of {model.block_rows:,}" if model.streaming else ""))

        note = joined_sizes_note(paths, data.configs)
        if note:
            log(f"NOTE: {note}")
        cost = model.cost_note(len(data.train), n_classes)
        if cost and not cost_noted:  # before the fit, not after hours of silence
            log(f"NOTE: {cost}. HEAD=logreg is the fast linear head.")

        untrained = [name for k, name in enumerate(data.class_names) if k not in set(np.unique(data.train.y).tolist())]
        if untrained:
            log(f"WARNING: {len(untrained)} class{'es have' if len(untrained) > 1 else ' has'} no training row: "
                f"{', '.join(untrained[:10])}; the head gives {'them' if len(untrained) > 1 else 'it'} probability 0 "
                f"(a Kaggle submission's log loss pays for every such image). `make verify FEATURES=...` says why.")
        unseen = [name for k, name in enumerate(data.class_names) if k not in set(data.val.y.tolist())]
        if len(data.val) and unseen:  # the split is by image hash, not stratified: a small class can miss val
            log(f"NOTE: {len(unseen)} class{'es have' if len(unseen) > 1 else ' has'} no validation image: "
                f"{', '.join(unseen[:10])}{', ...' if len(unseen) > 10 else ''}; val accuracy says nothing about "
                f"{'them' if len(unseen) > 1 else 'it'} (a larger VAL= or another SEED= changes the split)")

        def n_zero(X: np.ndarray) -> int:
            return int((~X.reshape(len(X), -1).any(axis=1)).sum()) if len(X) else 0

        zero_rows = {"training": 0 if model.streaming else n_zero(data.train.X), "validation": n_zero(data.val.X)}

        def warn_zero_rows() -> None:
            """Extraction warned once; a cache reused later (compare-backbones) must say it again."""
            shown = [f"{zero_rows[split]:,} of the {len(part):,} {split} rows"
                     for split, part in (("training", data.train), ("validation", data.val)) if zero_rows[split]]
            if shown:
                log("WARNING: " + " and ".join(shown) + f" of {names} have all-zero features: no head can tell them "
                    f"apart, so this run's figures say little. `make verify FEATURES=...` lists them; "
                    f"{ZERO_FEATURES_FIX}")

        if not model.streaming:  # a streaming head's training rows are counted on its train-accuracy pass, below
            warn_zero_rows()
        validation = (data.val.X, data.val.y) if len(data.val) else None
        train_index = source.rows("train", train_rounds)
        # Not on the clock: the first head of a process timed its library's import as fitting (scikit-learn ~1.5 s,
        # Keras ~4 s; compare-heads gave logreg 2.3 s on 129 rows when first, 0.2 s after dense)
        importlib.import_module("keras" if model.uses_keras else "sklearn.base")
        start = time.perf_counter()
        try:
            if model.streaming:
                model.fit_blocks(source.blocks(train_index, int(model.block_rows)), np.unique(data.train.y),
                                 validation)
            else:
                model.fit(data.train.X, data.train.y, validation_data=validation, groups=data.train.paths)
        except RareClassError as err:  # the head saw class indices; the user knows the names
            raise err.named(data.class_names) from None
        fit_seconds = time.perf_counter() - start

        val_proba, predict_ms = _predict_timed(model, data.val.X, n_classes)
        val = evaluate(val_proba, data.val.y)
        test = evaluate(full_proba(model, data.test.X, n_classes), data.test.y)
        if model.streaming:  # one pass gives the accuracy and the all-zero count: no extra read of a big cache
            parts = []
            for X, _ in source.blocks(train_index, int(model.block_rows))():
                zero_rows["training"] += n_zero(X)
                parts.append(full_proba(model, X, n_classes))
            train_proba = np.concatenate(parts)
            warn_zero_rows()
        else:
            train_proba = full_proba(model, data.train.X, n_classes)
        train_acc = evaluate(train_proba, data.train.y)["accuracy"]
    kinds = [c["weights"]["kind"] for c in data.configs]
    metrics = {
        "head": head,
        "head_args": model.get_params(),
        "features": names,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "n_test_labelled": len(data.test),
        "train_accuracy": train_acc,
        "val_accuracy": val["accuracy"],
        "val_top5_accuracy": val["top5_accuracy"],
        "val_log_loss": val["log_loss"],
        "test_accuracy": test["accuracy"] if len(data.test) else None,
        "fit_seconds": round(fit_seconds, 3),
        "predict_ms_per_image": None if predict_ms is None else round(predict_ms, 4),
        "train_rounds": train_rounds,
        "weights": ",".join(kinds),
        "all_zero_rows": sum(zero_rows.values()),
        "note": RANDOM_WEIGHTS_NOTE if "none" in kinds else "",
    }
    if len(paths) > 1:
        metrics["feature_files"] = [str(p) for p in paths]
    if getattr(model, "selected_params_", None):
        metrics["selected_params"] = model.selected_params_
    if getattr(model, "n_epochs_", None):
        metrics["epochs_run"] = model.n_epochs_
    if getattr(model, "best_epoch_", None):
        metrics["best_epoch"] = model.best_epoch_
    if getattr(model, "fit_note_", ""):
        metrics["fit_note"] = model.fit_note_
    if untrained:
        metrics["untrained_classes"] = untrained

    # report.html shows thumbnails from the image folder: DATA= if given, else the one the cache records
    root = find_data_root(data_root, data.path)
    # Only now that the new head is fitted: a failed retrain leaves the previous run whole.
    removed = replace_previous_run(run_dir)
    if removed:
        log(f"replaced the previous run in {run_dir}" + (
            f" (its {EXPORT_DIR}/ removed: re-run `make export RUN={run_dir}`)" if EXPORT_DIR in removed else ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "head")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    # features/cache_config describe the first cache (runs of one cache read as before);
    # feature_files/cache_configs list every cache, in the order their features are joined.
    (run_dir / "run.json").write_text(json.dumps({
        "head": head, "features": str(paths[0].resolve()), "class_names": data.class_names,
        "cache_config": data.config, "feature_files": [str(p.resolve()) for p in paths],
        "cache_configs": data.configs, "data_root": str(root) if root else None,
    }, indent=2))
    if plots:
        from .report import plot_confusion, plot_history, write_report  # noqa: PLC0415

        if len(data.val):
            plot_confusion(data.val.y, val_proba.argmax(1), data.class_names, run_dir / "confusion_matrix.png",
                           title=f"{head}: validation confusion matrix")
        if getattr(model, "history_", None):
            plot_history(model.history_, run_dir / "training_curves.png", title=f"{head} training curves"
                         + (f"\n{metrics['note']}" if metrics["note"] else ""))  # it plots accuracy too
        write_report(run_dir, metrics, data.class_names, data.val.y, val_proba, data.val.paths, data_root=root,
                     history=getattr(model, "history_", None), cache_config=data.configs)
    log(format_summary(metrics, run_dir))
    if assert_accuracy is not None:
        failures = accuracy_failures([metrics], assert_accuracy)
        if failures:
            raise AccuracyBelowThreshold(failures[0])
        log(f"ASSERT_ACCURACY={assert_accuracy:g} passed: {head} val accuracy {metrics['val_accuracy']:.4f}")
    return TrainResult(model, metrics, run_dir)


def _pct(v: float | None) -> str:
    """A percentage with one decimal, or more where one would round a miss up to 100.0% or a hit down to 0.0%
    (3 wrong of 8,165 is 99.96%)."""
    if v is None:
        return "n/a"
    digits = 1
    while 0 < v < 1 and round(100 * v, digits) in (0, 100) and digits < 15:
        digits += 1
    return f"{100 * v:.{digits}f}%"


def format_summary(metrics: dict[str, Any], run_dir: Path) -> str:
    lines = [
        f"{metrics['head']}: val accuracy {_pct(metrics['val_accuracy'])}, top-5 {_pct(metrics['val_top5_accuracy'])}, "
        f"log loss {'n/a' if metrics['val_log_loss'] is None else format(metrics['val_log_loss'], '.4f')}, "
        f"train accuracy {_pct(metrics['train_accuracy'])}"
        + (f", test accuracy {_pct(metrics['test_accuracy'])}" if metrics["test_accuracy"] is not None else ""),
        f"fit in {metrics['fit_seconds']:.2f} s on {metrics['n_train']:,} rows"
        + (f", predict {metrics['predict_ms_per_image']:.3f} ms/image" if metrics.get("predict_ms_per_image") else "")
        + f"; run saved in {run_dir}",
    ]
    if metrics.get("selected_params"):
        lines.append("selected by cross-validation: " + ", ".join(
            f"{k}={v}" for k, v in metrics["selected_params"].items() if not isinstance(v, dict)))
    if metrics.get("fit_note"):
        lines.append(f"NOTE: {metrics['head']}: {metrics['fit_note']}")
    if metrics["note"]:
        lines.append(f"NOTE: {metrics['note']}")
    return "\n".join(lines)
