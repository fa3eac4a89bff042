"""What every head shares: scikit-learn-style estimator conventions and pickle-free save/load.

A head stores its keyword arguments in ``__init__`` (no logic), learns in ``fit(X, y)`` and
returns ``self``, and keeps learned state in attributes ending in ``_``. ``predict_proba``
columns follow ``classes_``. ``save(dir)`` writes ``head.json`` plus arrays or a ``.keras``
file; ``load_head(dir)`` reads them back without pickle, so a run from elsewhere cannot run code.

``fit`` also takes ``groups`` (n_samples,): the image each row is a view of (the cache's ``path``). With
augmented rounds an image has several rows; a head that holds rows out of its own fitting (cross-validation,
an early-stopping holdout) keeps an image's rows together, so no held-out row has a view of itself in training.

A head with ``streaming = True`` also implements ``fit_blocks(blocks, classes, validation_data)``:
it never sees all training rows at once. ``blocks`` is a :data:`BlockSource`; each call is one
pass over the training rows. ``train_head`` feeds such heads from the HDF5 file block by block.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from .registry import Param, head_class

HEAD_FILE = "head.json"

BlockSource = Callable[[np.random.Generator | None], Iterator[tuple[np.ndarray, np.ndarray]]]
"""``blocks(rng)`` yields (X block, y block) pairs covering the training rows once.

``rng=None`` keeps the stored row order; a generator draws a random row order (each block's
rows are then a random sample, so class-sorted files still give mixed blocks).
"""


class Head(ABC):
    name: str = ""
    #: allowed values of the ``__init__`` arguments, checked by ``create_head``
    param_specs: ClassVar[dict[str, Param]] = {}
    #: True when the head trains with ``fit_blocks`` (out of core) instead of ``fit``
    streaming: ClassVar[bool] = False
    #: True when the head imports TensorFlow/Keras (all others must not)
    uses_keras: ClassVar[bool] = False

    def get_params(self) -> dict[str, Any]:
        from .registry import head_params  # noqa: PLC0415

        return {k: getattr(self, k) for k in head_params(self.name)}

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            groups: np.ndarray | None = None):
        """Learn from X (n_samples, ...) and y (n_samples,); ``validation_data`` is only watched (training
        curves), never used to choose anything; ``groups`` (n_samples,) names each row's image."""

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        ...

    def cost_note(self, n_rows: int, n_classes: int) -> str:
        """Why this head would take long on ``n_rows`` training rows of ``n_classes`` classes, said before fitting
        ("" when it would not): the user can stop it, or pick another head, before waiting. ``make compare-heads``
        leaves such a head out unless HEADS= names it."""
        return ""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class labels of shape (n_samples,)."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # -- persistence ----------------------------------------------------------------------
    @abstractmethod
    def _save_state(self, folder: Path) -> None:
        ...

    @abstractmethod
    def _load_state(self, folder: Path) -> None:
        ...

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"head": self.name, "params": self.get_params(), "classes": self.classes_.tolist()}
        self._save_state(folder)
        (folder / HEAD_FILE).write_text(json.dumps(meta, indent=2))
        return folder


def load_head(folder: str | Path) -> Head:
    """Load a head saved by :meth:`Head.save`; never unpickles."""
    folder = Path(folder)
    meta_file = folder / HEAD_FILE
    if not meta_file.is_file():
        hint = f"; it is a run folder: pass {folder / 'head'}" if (folder / "head" / HEAD_FILE).is_file() else ""
        raise FileNotFoundError(f"{folder} holds no saved head ({HEAD_FILE} is missing){hint}")
    meta = json.loads(meta_file.read_text())
    head = head_class(meta["head"])(**meta["params"])
    head.classes_ = np.asarray(meta["classes"])
    head._load_state(folder)
    return head


def flat(X: np.ndarray) -> np.ndarray:
    """(n, ...) → (n, d) float32."""
    return np.asarray(X, dtype=np.float32).reshape(len(X), -1)


def index_blocks(n: int, block_rows: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    """Positions 0..n-1 in blocks of at most ``block_rows``: in order, or randomly when ``rng`` is given.

    Each block is sorted, so the cache reads its nearby rows together.
    """
    order = np.arange(n) if rng is None else rng.permutation(n)
    for start in range(0, n, block_rows):
        yield np.sort(order[start:start + block_rows])


def array_blocks(X: np.ndarray, y: np.ndarray, block_rows: int) -> BlockSource:
    """A :data:`BlockSource` over in-memory arrays (what ``fit`` of a streaming head uses)."""
    def blocks(rng: np.random.Generator | None = None):
        for idx in index_blocks(len(y), block_rows, rng):
            yield X[idx], y[idx]
    return blocks


def standardized_linear(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                        intercept: np.ndarray) -> np.ndarray:
    """Decision values ((X - mean) / scale) @ coef.T + intercept, of shape (n_samples, n_rows_of_coef)."""
    return ((flat(X) - mean) / scale) @ coef.T + intercept


class RareClassError(ValueError):
    """A class has too few training images for a head (its cross-validation needs 2 of every class).

    Heads see integer labels only, so the message names ``class <label>``; ``train_head`` re-raises
    it with the class's name (:meth:`named`), and ``compare-heads`` skips such a head with the
    message as its note.
    """

    def __init__(self, what: str, label: int, count: int, fix: str = "", name: str | None = None):
        self.what, self.label, self.count, self.fix = what, int(label), int(count), fix
        shown = repr(name) if name is not None else str(self.label)
        super().__init__(f"{what} needs at least 2 training images of every class for cross-validation; "
                         f"class {shown} has {self.count}" + (f": {fix}" if fix else ""))

    def named(self, class_names: list[str]) -> "RareClassError":
        """The same error, naming the class by its name in ``class_names``."""
        return RareClassError(self.what, self.label, self.count, self.fix, class_names[self.label])


def _images_per_class(y: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Classes and how many images (distinct ``groups``; rows when None) each has."""
    if groups is None:
        return np.unique(y, return_counts=True)
    classes, groups = np.unique(y), np.asarray(groups)
    return classes, np.array([len(np.unique(groups[y == c])) for c in classes])


def cv_folds(y: np.ndarray, wanted: int, what: str, seed: int = 0, fix: str = "",
             groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, held-out) row indices, as many folds as the rarest class's images allow (at most
    ``wanted``, at least 2). With ``groups`` holding an image more than once (augmented rounds), the folds
    keep each image's rows in one fold (StratifiedGroupKFold).

    Raises :class:`RareClassError` (``fix``: how to get past it) when a class has fewer than 2 images.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # noqa: PLC0415

    classes, counts = _images_per_class(y, groups)
    if counts.min() < 2:
        raise RareClassError(what, classes[counts.argmin()], counts.min(), fix)
    n_splits = int(min(wanted, counts.min()))
    if groups is None or len(np.unique(groups)) == len(groups):
        return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    return list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(
        np.zeros(len(y)), y, groups))


def holdout_rows(y: np.ndarray, fraction: float, seed: int = 0,
                 groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows): about ``fraction`` of each class's images held out, every view of an image on
    one side, and at least one image of every class left to fit (a class of one image is never held out)."""
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        images = np.unique(groups[rows])
        n = min(int(round(fraction * len(images))), len(images) - 1)
        held[rows] = np.isin(groups[rows], rng.permutation(images)[:n])
    return np.flatnonzero(~held), np.flatnonzero(held)


@contextmanager
def collected_warnings(category: type[Warning]) -> Iterator[list[Warning]]:
    """Collect the warnings of ``category`` raised inside the block in the yielded list (it fills on exit), for a
    head's one-line ``fit_note_`` instead of scikit-learn's or scipy's own lines; any other warning is shown as
    usual."""
    collected: list[Warning] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        yield collected
    for w in caught:
        if issubclass(w.category, category):
            collected.append(w.message)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def unconverged_fits() -> AbstractContextManager[list[Warning]]:
    """:func:`collected_warnings` of scikit-learn's ConvergenceWarning: one per fit that stopped at max_iter."""
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415

    return collected_warnings(ConvergenceWarning)


def max_iter_note(solver: str, max_iter: int, unconverged: int, fits: int) -> str:
    """``fit_note_`` for fits that stopped at ``max_iter`` ("" when all converged)."""
    return (f"{solver} stopped at max_iter={max_iter} before converging in {unconverged} of {fits} fits; raise it, "
            f"e.g. HEAD_ARGS='max_iter=5000', or lower C" if unconverged else "")


def save_arrays(path: Path, **arrays: np.ndarray) -> None:
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read with ``allow_pickle=False``."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
