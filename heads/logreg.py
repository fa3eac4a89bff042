"""Logistic regression on standardized features (scikit-learn, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import expit, softmax

from .base import Head, cv_folds, flat, load_arrays, max_iter_note, save_arrays, standardized_linear, unconverged_fits
from .registry import Param, register_head

C_GRID = (0.01, 0.1, 1.0, 10.0)
CV_FOLDS = 3


@register_head("logreg")
class LogisticRegressionHead(Head):
    """Multinomial logistic regression (lbfgs) on standardized features.

    Parameters
    ----------
    C : inverse regularization strength, or ``"auto"``: stratified 3-fold cross-validation (2 folds
        when a class has only 2 images; an image's augmented rows stay in one fold) picks the C of
        0.01, 0.1, 1, 10 with the lowest held-out log loss, then fits on all rows. The chosen C is
        ``C_``; it and the loss per C go into ``selected_params_`` (and so into metrics.json).
    max_iter : lbfgs iterations.
    """

    param_specs = {"C": Param(float, gt=0, choices=("auto",)), "max_iter": Param(int, ge=1)}

    def __init__(self, C: float | str = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def _select_C(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> tuple[float, int]:
        """The C of ``C_GRID`` with the lowest mean held-out log loss, and the number of fits made (each fold
        walks the grid with warm starts; an image's rows stay in one fold)."""
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        from sklearn.metrics import log_loss  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

        losses = np.zeros(len(C_GRID))
        folds = cv_folds(y, CV_FOLDS, "C=auto",
                         fix="add training images of that class, or set C to a number, e.g. C=1", groups=groups)
        for train, held_out in folds:
            scaler = StandardScaler().fit(X[train])
            model = LogisticRegression(max_iter=int(self.max_iter), warm_start=True)
            for k, C in enumerate(C_GRID):  # from strong to weak regularization: each fit starts near the last
                model.set_params(C=C).fit(scaler.transform(X[train]), y[train])
                proba = model.predict_proba(scaler.transform(X[held_out]))
                losses[k] += log_loss(y[held_out], proba, labels=model.classes_) / len(folds)
        best = float(C_GRID[int(np.argmin(losses))])
        self.selected_params_ = {
            "C": best, "cv_log_loss": {f"{c:g}": round(float(v), 6) for c, v in zip(C_GRID, losses)},
        }
        return best, len(folds) * len(C_GRID)

    def fit(self, X, y, validation_data=None, groups=None):
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        X = flat(X)
        # lbfgs makes many small BLAS calls; threaded BLAS on a busy 2-core machine made them
        # 10-70x slower (0.3 s vs 21 s for one fit on the demo cache), one thread never hurt much.
        with threadpool_limits(1, user_api="blas"), unconverged_fits() as unconverged:
            self.C_, fits = self._select_C(X, y, groups) if self.C == "auto" else (float(self.C), 0)
            scaler = StandardScaler().fit(X)
            model = LogisticRegression(C=self.C_, max_iter=int(self.max_iter))
            model.fit(scaler.transform(X), y)
        # scikit-learn's own warning would advise scaling the data, which this head has already done
        self.fit_note_ = max_iter_note("lbfgs", int(self.max_iter), len(unconverged), fits + 1)
        self.classes_ = model.classes_
        self.mean_, self.scale_ = scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32)
        self.coef_, self.intercept_ = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def decision_function(self, X) -> np.ndarray:
        return standardized_linear(X, self.mean_, self.scale_, self.coef_, self.intercept_)

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        if z.shape[1] == 1:  # binary: scikit-learn's coef_ holds one row
            p = expit(z[:, 0])
            return np.column_stack([1 - p, p])
        return softmax(z, axis=1)

    def _save_state(self, folder: Path) -> None:
        save_arrays(folder / "logreg.npz", mean=self.mean_, scale=self.scale_, coef=self.coef_,
                    intercept=self.intercept_, C=np.float64(self.C_))

    def _load_state(self, folder: Path) -> None:
        z = load_arrays(folder / "logreg.npz")
        self.mean_, self.scale_ = z["mean"], z["scale"]
        self.coef_, self.intercept_ = z["coef"], z["intercept"]
        if "C" in z:  # runs saved before C=auto existed lack it
            self.C_ = float(z["C"])
