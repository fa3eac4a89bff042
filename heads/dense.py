"""The tutorial's small Keras head, trained on cached features. Keras is imported only here, lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Head, holdout_rows
from .registry import Param, register_head

PREDICT_BLOCK_ROWS = 4096  # rows per eager call in predict_proba: 4096 x 2048 float32 features are 32 MB


@register_head("dense")
class DenseHead(Head):
    """Flatten → Dense(units, relu) → Dropout(dropout1) → Dense(units2, relu) → Dropout(dropout2) → softmax.

    The layer sizes are the tutorial's (128 and 128 units); the dropouts 0.2 and 0.5 are ours. ``units2=None``
    means the same width as ``units``. Adam, categorical cross-entropy, at most ``epochs``.
    Early stopping (``patience``, best weights restored) watches the loss on a holdout of
    ``validation_fraction`` of each class's training images (all views of an image on one side),
    as scikit-learn's ``MLPClassifier(early_stopping=True)`` does: the validation split is never
    used to choose the epoch, so its figures stay comparable with the other heads'. The holdout's
    curves are ``holdout_loss``/``holdout_accuracy`` in ``history_``; the kept epoch is
    ``best_epoch_`` (1-based). ``validation_fraction=0``: no holdout, all ``epochs`` run. The
    network is built in ``fit``.

    ``standardize=True`` (default) puts a Normalization layer, adapted on the training
    features, in front of the tutorial's layers; ``standardize=False, dropout1=0, dropout2=0,
    validation_fraction=0`` is the tutorial's plain net, trained for ``epochs``.
    """

    uses_keras = True
    param_specs = {
        "units": Param(int, ge=1), "units2": Param(int, ge=1, none_ok=True), "dropout1": Param(float, ge=0, lt=1),
        "dropout2": Param(float, ge=0, lt=1), "epochs": Param(int, ge=1), "patience": Param(int, ge=0),
        "batch_size": Param(int, ge=1), "learning_rate": Param(float, gt=0), "standardize": Param(bool),
        "validation_fraction": Param(float, ge=0, lt=1), "seed": Param(int, ge=0),
    }

    def __init__(self, units: int = 128, units2: int | None = None, dropout1: float = 0.2, dropout2: float = 0.5,
                 epochs: int = 100, patience: int = 10, batch_size: int = 32, learning_rate: float = 1e-3,
                 standardize: bool = True, validation_fraction: float = 0.1, seed: int = 0):
        self.units = units
        self.units2 = units2
        self.dropout1 = dropout1
        self.dropout2 = dropout2
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.standardize = standardize
        self.validation_fraction = validation_fraction
        self.seed = seed

    def _build(self, X, n_classes):
        import keras  # noqa: PLC0415

        layers = [keras.Input(X.shape[1:]), keras.layers.Flatten()]
        if self.standardize:
            norm = keras.layers.Normalization(axis=-1)
            norm.adapt(X.reshape(len(X), -1))
            layers.append(norm)
        return keras.Sequential([
            *layers,
            keras.layers.Dense(int(self.units), activation="relu"),
            keras.layers.Dropout(float(self.dropout1)),
            keras.layers.Dense(int(self.units if self.units2 is None else self.units2), activation="relu"),
            keras.layers.Dropout(float(self.dropout2)),
            keras.layers.Dense(n_classes, activation="softmax"),
        ], name="dense_head")

    def fit(self, X, y, validation_data=None, groups=None):
        import keras  # noqa: PLC0415

        keras.utils.set_random_seed(int(self.seed))
        X, y = np.asarray(X, np.float32), np.asarray(y)
        self.classes_ = np.unique(y)
        n = len(self.classes_)
        onehot = lambda labels: keras.utils.to_categorical(np.searchsorted(self.classes_, labels), n)  # noqa: E731
        fit_rows, held = holdout_rows(y, float(self.validation_fraction), int(self.seed), groups)
        self.model_ = self._build(X[fit_rows], n)
        self.model_.compile(optimizer=keras.optimizers.Adam(float(self.learning_rate)),
                            loss="categorical_crossentropy", metrics=["accuracy"])
        callbacks, holdout, self.fit_note_ = [], None, ""
        if len(held):
            holdout = (X[held], onehot(y[held]))
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(self.patience), restore_best_weights=True))
        elif float(self.validation_fraction) > 0:
            self.fit_note_ = (f"no early stopping: validation_fraction={self.validation_fraction:g} of each class's "
                              f"training images rounds to none (too few images); all {self.epochs} epochs ran")
        hist = self.model_.fit(X[fit_rows], onehot(y[fit_rows]), validation_data=holdout, epochs=int(self.epochs),
                               batch_size=int(self.batch_size), callbacks=callbacks, verbose=0, shuffle=True)
        # Keras names the holdout's curves val_*: here they are the holdout's, not the validation split's
        self.history_ = {k.replace("val_", "holdout_", 1): [float(v) for v in vs] for k, vs in hist.history.items()}
        self.n_epochs_ = len(hist.history["loss"])
        self.best_epoch_ = callbacks[0].best_epoch + 1 if callbacks else self.n_epochs_
        self.n_holdout_ = len(held)
        return self

    def predict_proba(self, X) -> np.ndarray:
        # The model called eagerly, a block at a time: model.predict traces a tf.function for each model, and
        # a process training several dense heads (a notebook, compare-backbones) got TensorFlow's "triggered
        # tf.function retracing" warning from the sixth on. Same probabilities.
        X = np.asarray(X, np.float32)
        return np.concatenate([np.asarray(self.model_(X[i:i + PREDICT_BLOCK_ROWS], training=False))
                               for i in range(0, max(len(X), 1), PREDICT_BLOCK_ROWS)])

    def _save_state(self, folder: Path) -> None:
        import json  # noqa: PLC0415

        self.model_.save(folder / "model.keras")
        (folder / "history.json").write_text(json.dumps(getattr(self, "history_", {})))

    def _load_state(self, folder: Path) -> None:
        import json  # noqa: PLC0415

        import keras  # noqa: PLC0415

        self.model_ = keras.saving.load_model(folder / "model.keras", safe_mode=True, compile=False)
        hist = folder / "history.json"
        self.history_ = json.loads(hist.read_text()) if hist.is_file() else {}
