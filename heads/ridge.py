"""Ridge classifier on standardized features (scikit-learn, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import softmax

from .base import Head, collected_warnings, flat, load_arrays, save_arrays, standardized_linear
from .registry import Param, register_head


@register_head("ridge")
class RidgeHead(Head):
    """One-vs-all least squares on ±1 targets (``RidgeClassifier``) on standardized features.

    Ridge has no probabilistic model: ``predict_proba`` is the softmax of the decision values
    (for two classes, of ``[-d, d]``, matching the ±1 coding). The ranking, so accuracy and
    top-5, is exact; the probabilities are not calibrated (the scores are of order ±1, so they
    stay soft), so its log loss is not comparable with logreg's.

    Parameters
    ----------
    alpha : L2 regularization strength.
    """

    param_specs = {"alpha": Param(float, ge=0)}

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, y, validation_data=None, groups=None):
        from sklearn.linear_model import RidgeClassifier  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

        from scipy.linalg import LinAlgWarning  # noqa: PLC0415

        X = flat(X)
        scaler = StandardScaler().fit(X)
        with collected_warnings(LinAlgWarning) as ill:
            model = RidgeClassifier(alpha=float(self.alpha)).fit(scaler.transform(X), y)
        # scipy's own warning names a site-packages line; one note says what it means and what to change
        self.fit_note_ = (f"the least-squares system is ill-conditioned ({str(ill[0]).rstrip('.')}): many "
                          f"nearly collinear features for the rows; the fit may be unstable: raise alpha, e.g. "
                          f"HEAD_ARGS='alpha=10'" if ill else "")
        self.classes_ = model.classes_
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        self.coef_, self.intercept_ = np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
        return self

    def decision_function(self, X) -> np.ndarray:
        """Decision values of shape (n_samples, n_classes), or (n_samples, 1) for two classes."""
        return standardized_linear(X, self.mean_, self.scale_, self.coef_, self.intercept_)

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        if z.shape[1] == 1:
            z = np.column_stack([-z[:, 0], z[:, 0]])
        return softmax(z, axis=1)

    def _save_state(self, folder: Path) -> None:
        save_arrays(folder / "ridge.npz", mean=self.mean_, scale=self.scale_, coef=self.coef_,
                    intercept=self.intercept_)

    def _load_state(self, folder: Path) -> None:
        z = load_arrays(folder / "ridge.npz")
        self.mean_, self.scale_, self.coef_, self.intercept_ = z["mean"], z["scale"], z["coef"], z["intercept"]
