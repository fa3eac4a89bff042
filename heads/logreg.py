"""Logistic regression on standardized features (scikit-learn, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import expit, softmax

from .base import Head, flat
from .registry import register_head


@register_head("logreg")
class LogisticRegressionHead(Head):
    """Multinomial logistic regression (lbfgs) on standardized features.

    Parameters
    ----------
    C : inverse regularization strength.
    max_iter : lbfgs iterations.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, X, y, validation_data=None):
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

        X = flat(X)
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(C=float(self.C), max_iter=int(self.max_iter))
        model.fit(scaler.transform(X), y)
        self.classes_ = model.classes_
        self.mean_, self.scale_ = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
        self.coef_, self.intercept_ = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def decision_function(self, X) -> np.ndarray:
        return ((flat(X) - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        if z.shape[1] == 1:  # binary: scikit-learn's coef_ holds one row
            p = expit(z[:, 0])
            return np.column_stack([1 - p, p])
        return softmax(z, axis=1)

    def _save_state(self, folder: Path) -> None:
        np.savez(folder / "logreg.npz", mean=self.mean_, scale=self.scale_, coef=self.coef_,
                 intercept=self.intercept_)

    def _load_state(self, folder: Path) -> None:
        with np.load(folder / "logreg.npz", allow_pickle=False) as z:
            self.mean_, self.scale_ = z["mean"], z["scale"]
            self.coef_, self.intercept_ = z["coef"], z["intercept"]
