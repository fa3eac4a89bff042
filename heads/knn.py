"""k nearest neighbours by cosine distance (scikit-learn, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Head, flat, load_arrays, save_arrays
from .registry import Param, register_head


@register_head("knn")
class KNNHead(Head):
    """``KNeighborsClassifier(metric="cosine", algorithm="brute")`` on the raw features.

    The head keeps its reference set: ``fit_X_`` (n_train, d) float32 and ``fit_y_`` (n_train,)
    are saved in ``knn.npz`` (so a knn run folder is as large as the training features), and
    loading refits the classifier on them, which gives exactly the same predictions.
    ``predict_proba`` is the (``weights="distance"``: 1/distance weighted) share of each class
    among the ``n_neighbors`` nearest training rows (all rows when there are fewer).

    Parameters
    ----------
    n_neighbors : neighbours that vote.
    weights : ``"uniform"`` or ``"distance"``.
    """

    param_specs = {"n_neighbors": Param(int, ge=1), "weights": Param(str, choices=("uniform", "distance"))}

    def __init__(self, n_neighbors: int = 5, weights: str = "uniform"):
        self.n_neighbors = n_neighbors
        self.weights = weights

    def _fit_model(self) -> None:
        from sklearn.neighbors import KNeighborsClassifier  # noqa: PLC0415

        self.n_neighbors_ = int(min(int(self.n_neighbors), len(self.fit_y_)))
        self.fit_note_ = (f"n_neighbors={int(self.n_neighbors)} is more than the {len(self.fit_y_):,} training rows: "
                          f"all of them vote" if self.n_neighbors_ < int(self.n_neighbors) else "")
        self.model_ = KNeighborsClassifier(n_neighbors=self.n_neighbors_, weights=self.weights,
                                           metric="cosine", algorithm="brute").fit(self.fit_X_, self.fit_y_)

    def fit(self, X, y, validation_data=None, groups=None):
        self.fit_X_, self.fit_y_ = flat(X), np.asarray(y)
        self.classes_ = np.unique(self.fit_y_)
        self._fit_model()
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(flat(X))

    def _save_state(self, folder: Path) -> None:
        save_arrays(folder / "knn.npz", X=self.fit_X_, y=self.fit_y_)

    def _load_state(self, folder: Path) -> None:
        z = load_arrays(folder / "knn.npz")
        self.fit_X_, self.fit_y_ = z["X"], z["y"]
        self._fit_model()
