"""Linear SVM with sigmoid-calibrated probabilities (scikit-learn, no TensorFlow)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from scipy.special import expit

from .base import Head, cv_folds, flat, load_arrays, max_iter_note, save_arrays, standardized_linear, unconverged_fits
from .registry import Param, register_head


@register_head("linear-svm")
class LinearSVMHead(Head):
    """``LinearSVC`` on standardized features, probabilities by Platt (sigmoid) calibration.

    ``CalibratedClassifierCV(method="sigmoid", ensemble=False)``: one SVM is fit on all
    training rows, and one sigmoid per class (one for two classes) on cross-validated decision
    values. The state is plain numbers, ``mean_``, ``scale_``, ``coef_``, ``intercept_`` and the
    sigmoids' ``calib_a_``, ``calib_b_``; ``predict_proba`` is computed from them in numpy as
    scikit-learn does: p_k = 1 / (1 + exp(a_k d_k + b_k)), normalized over classes.

    Parameters
    ----------
    C : inverse regularization strength.
    max_iter : liblinear iterations.
    cv : calibration folds (fewer when a class has fewer training images; every class needs 2;
        an image's augmented rows stay in one fold).
    seed : fold shuffling and liblinear's random state.
    """

    param_specs = {"C": Param(float, gt=0), "max_iter": Param(int, ge=1), "cv": Param(int, ge=2),
                   "seed": Param(int, ge=0)}

    def __init__(self, C: float = 1.0, max_iter: int = 1000, cv: int = 3, seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.cv = cv
        self.seed = seed

    #: rows × liblinear fits from which ``cost_note`` speaks: on 120 classes of 8,165 rows (2,048 random-weight
    #: features, 71 px) one class's SVM took 120-142 s at max_iter=1000 and 21-22 s at max_iter=100, one core
    SLOW_ROW_FITS = 500_000

    def cost_note(self, n_rows: int, n_classes: int) -> str:
        per_fit = 1 if n_classes <= 2 else n_classes  # two classes: one binary SVM, not one per class
        fits = per_fit * (int(self.cv) + 1)
        if fits * n_rows < self.SLOW_ROW_FITS:
            return ""
        if per_fit == 1:
            kind, per = "binary", f"{n_classes} classes: one SVM"
        else:
            kind, per = "one-vs-rest", f"{n_classes:,} classes"
        return (f"linear-svm fits {fits:,} {kind} SVMs ({per} x {int(self.cv) + 1}: cv={self.cv} "
                f"calibration folds and the final fit) of up to max_iter={self.max_iter} passes over {n_rows:,} rows, "
                f"one after another on one core, with no progress output: this can take hours (120 classes of 8,165 "
                f"rows: about 2 hours even at max_iter=100; Ctrl-C stops it)")

    def fit(self, X, y, validation_data=None, groups=None):
        """Fit; Ctrl-C stops it at once (see :func:`heard_on_ctrl_c`)."""
        from sklearn.calibration import CalibratedClassifierCV  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
        from sklearn.svm import LinearSVC  # noqa: PLC0415

        X = flat(X)
        scaler = StandardScaler().fit(X)
        svc = LinearSVC(C=float(self.C), max_iter=int(self.max_iter), random_state=int(self.seed))
        folds = cv_folds(y, int(self.cv), "linear-svm calibration", int(self.seed),
                         fix="add training images of that class, or use another head, e.g. HEAD=logreg",
                         groups=groups)
        # liblinear warns once per fit (each fold and the final one) when it stops at max_iter:
        # one line in fit_note_ (train_head prints it and writes it to metrics.json) says it instead.
        with unconverged_fits() as unconverged:
            model = CalibratedClassifierCV(svc, method="sigmoid", ensemble=False, cv=folds)
            heard_on_ctrl_c(model.fit, scaler.transform(X), y)
        self.fit_note_ = max_iter_note("liblinear", int(self.max_iter), len(unconverged), len(folds) + 1)
        (calibrated,) = model.calibrated_classifiers_
        self.classes_ = model.classes_
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        self.coef_, self.intercept_ = calibrated.estimator.coef_, calibrated.estimator.intercept_
        self.calib_a_ = np.array([c.a_ for c in calibrated.calibrators], np.float64)
        self.calib_b_ = np.array([c.b_ for c in calibrated.calibrators], np.float64)
        return self

    def decision_function(self, X) -> np.ndarray:
        """SVM decision values of shape (n_samples, n_classes), or (n_samples, 1) for two classes."""
        return standardized_linear(X, self.mean_, self.scale_, self.coef_, self.intercept_)

    def predict_proba(self, X) -> np.ndarray:
        p = expit(-(self.calib_a_ * self.decision_function(X) + self.calib_b_))
        if p.shape[1] == 1:
            return np.column_stack([1 - p[:, 0], p[:, 0]])
        total = p.sum(axis=1, keepdims=True)
        # Where every sigmoid gives 0, scikit-learn falls back to uniform probabilities.
        return np.divide(p, total, out=np.full_like(p, 1 / p.shape[1]), where=total != 0)

    def _save_state(self, folder: Path) -> None:
        save_arrays(folder / "linear_svm.npz", mean=self.mean_, scale=self.scale_, coef=self.coef_,
                    intercept=self.intercept_, calib_a=self.calib_a_, calib_b=self.calib_b_)

    def _load_state(self, folder: Path) -> None:
        z = load_arrays(folder / "linear_svm.npz")
        self.mean_, self.scale_, self.coef_, self.intercept_ = z["mean"], z["scale"], z["coef"], z["intercept"]
        self.calib_a_, self.calib_b_ = z["calib_a"], z["calib_b"]


def heard_on_ctrl_c(fit, *args):
    """``fit(*args)`` in a thread, waited for from this one, so that Ctrl-C stops the command at once.

    liblinear runs a whole fold (every class of it: minutes to hours at 120 classes) in one C call that releases
    the GIL but never looks at signals, so Ctrl-C in the calling thread was heard only when the fold returned.
    Here the calling thread waits in short, interruptible steps; on Ctrl-C the fit left running is a daemon
    thread, which ends with the command (in a notebook it runs on until its fold returns).
    """
    done, out = threading.Event(), {}

    def run():
        try:
            out["value"] = fit(*args)
        except BaseException as err:  # noqa: BLE001  (raised again in the calling thread)
            out["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="linear-svm-fit", daemon=True).start()
    while not done.wait(0.2):
        pass
    if "error" in out:
        raise out["error"]
    return out["value"]
