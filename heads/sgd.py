"""Logistic regression by SGD, trained out of core from the feature cache (scikit-learn, no TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import expit

from .base import BlockSource, Head, array_blocks, flat, load_arrays, save_arrays, standardized_linear
from .registry import Param, register_head


def _mean_log_loss_and_accuracy(proba: np.ndarray, y: np.ndarray, classes: np.ndarray) -> tuple[float, float]:
    pos = np.searchsorted(classes, y)
    picked = np.clip(proba[np.arange(len(y)), pos], 1e-15, 1)
    return float(-np.mean(np.log(picked))), float(np.mean(proba.argmax(1) == pos))


@register_head("sgd")
class SGDHead(Head):
    """``SGDClassifier(loss="log_loss")`` (one-vs-all logistic) fed block by block with ``partial_fit``.

    Streaming: ``train_head`` reads at most ``block_rows`` training rows at a time from the
    HDF5 file, so a cache larger than RAM trains. A first pass computes the standardization
    (``StandardScaler.partial_fit``); then each of ``epochs`` passes visits the rows in a new
    random order, in blocks. ``fit(X, y)`` on arrays runs the same code over in-memory blocks,
    so both give the same model. ``predict_proba`` is scikit-learn's one-vs-all logistic:
    sigmoid of each class's decision value, normalized over classes, in numpy.

    ``history_`` holds per epoch the log loss and accuracy measured on each block just before
    it is learned (``loss``, ``accuracy``), and on validation rows (``val_loss``, ``val_accuracy``).

    Parameters
    ----------
    alpha : L2 regularization strength.
    learning_rate : scikit-learn's step schedule: ``"constant"`` (``eta0`` throughout, the
        default), ``"invscaling"`` (``eta0 / t**0.25``) or ``"optimal"`` (scikit-learn's own
        default, from ``alpha``; on 2048-wide standardized features it took steps so large that
        val log loss was about 9 where a constant 0.001 gave about 1).
    eta0 : initial step size (``"constant"``, ``"invscaling"``).
    epochs : passes over the training rows.
    block_rows : training rows read and learned at a time.
    seed : row order and SGD's random state.
    """

    streaming = True
    param_specs = {"alpha": Param(float, gt=0), "epochs": Param(int, ge=1), "block_rows": Param(int, ge=1),
                   "learning_rate": Param(str, choices=("constant", "invscaling", "optimal")),
                   "eta0": Param(float, gt=0), "seed": Param(int, ge=0)}

    def __init__(self, alpha: float = 1e-4, learning_rate: str = "constant", eta0: float = 1e-3, epochs: int = 5,
                 block_rows: int = 4096, seed: int = 0):
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.eta0 = eta0
        self.epochs = epochs
        self.block_rows = block_rows
        self.seed = seed

    def fit(self, X, y, validation_data=None, groups=None):
        y = np.asarray(y)
        return self.fit_blocks(array_blocks(X, y, int(self.block_rows)), np.unique(y), validation_data)

    def fit_blocks(self, blocks: BlockSource, classes: np.ndarray,
                   validation_data: tuple[np.ndarray, np.ndarray] | None = None):
        """Learn from ``blocks`` (see :data:`heads.base.BlockSource`); ``classes`` are all training labels."""
        from sklearn.linear_model import SGDClassifier  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

        scaler = StandardScaler()
        for X, _ in blocks(None):
            scaler.partial_fit(flat(X))
        if not hasattr(scaler, "mean_"):
            raise ValueError("sgd: no training rows")
        self.classes_ = np.asarray(classes)
        self.mean_, self.scale_ = scaler.mean_, scaler.scale_
        model = SGDClassifier(loss="log_loss", alpha=float(self.alpha), learning_rate=self.learning_rate,
                              eta0=float(self.eta0), random_state=int(self.seed))
        rng = np.random.default_rng(int(self.seed))
        self.history_ = {"loss": [], "accuracy": []}
        val = None
        if validation_data is not None and len(validation_data[1]):
            known = np.isin(validation_data[1], self.classes_)
            val = (validation_data[0][known], np.asarray(validation_data[1])[known])
            self.history_.update(val_loss=[], val_accuracy=[])
        self.n_blocks_ = 0
        n_outputs = 1 if len(self.classes_) == 2 else len(self.classes_)
        for _ in range(int(self.epochs)):
            losses, hits, seen = 0.0, 0.0, 0
            for X, y in blocks(rng):
                Xs = (flat(X) - self.mean_) / self.scale_
                order = rng.permutation(len(y))  # rows of a block arrive sorted by position
                # Before the first partial_fit the model is all zeros, i.e. uniform probabilities.
                z = model.decision_function(Xs) if self.n_blocks_ else np.zeros((len(y), n_outputs))
                loss, acc = _mean_log_loss_and_accuracy(self._proba(z), y, self.classes_)
                losses, hits, seen = losses + loss * len(y), hits + acc * len(y), seen + len(y)
                model.partial_fit(Xs[order], y[order], classes=self.classes_)
                self.n_blocks_ += 1
            self.history_["loss"].append(losses / seen)
            self.history_["accuracy"].append(hits / seen)
            self.coef_, self.intercept_ = model.coef_.copy(), model.intercept_.copy()
            if val is not None and len(val[1]):
                loss, acc = _mean_log_loss_and_accuracy(self.predict_proba(val[0]), val[1], self.classes_)
                self.history_["val_loss"].append(loss)
                self.history_["val_accuracy"].append(acc)
        self.n_epochs_ = int(self.epochs)
        return self

    @staticmethod
    def _proba(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64)
        if z.ndim == 1 or z.shape[1] == 1:
            p = expit(z.reshape(len(z)))
            return np.column_stack([1 - p, p])
        p = expit(z)
        total = p.sum(axis=1, keepdims=True)
        return np.divide(p, total, out=np.full_like(p, 1 / p.shape[1]), where=total != 0)

    def decision_function(self, X) -> np.ndarray:
        """Decision values of shape (n_samples, n_classes), or (n_samples, 1) for two classes."""
        return standardized_linear(X, self.mean_, self.scale_, self.coef_, self.intercept_)

    def predict_proba(self, X) -> np.ndarray:
        return self._proba(self.decision_function(X))

    def _save_state(self, folder: Path) -> None:
        import json  # noqa: PLC0415

        save_arrays(folder / "sgd.npz", mean=self.mean_, scale=self.scale_, coef=self.coef_, intercept=self.intercept_)
        (folder / "history.json").write_text(json.dumps(getattr(self, "history_", {})))

    def _load_state(self, folder: Path) -> None:
        import json  # noqa: PLC0415

        z = load_arrays(folder / "sgd.npz")
        self.mean_, self.scale_, self.coef_, self.intercept_ = z["mean"], z["scale"], z["coef"], z["intercept"]
        hist = folder / "history.json"
        self.history_ = json.loads(hist.read_text()) if hist.is_file() else {}
