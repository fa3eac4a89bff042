"""The tutorial's small Keras head, trained on cached features. Keras is imported only here, lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Head
from .registry import register_head


@register_head("dense")
class DenseHead(Head):
    """Flatten → Dense(128, relu) → Dropout(0.2) → Dense(128, relu) → Dropout(0.5) → softmax.

    Adam, categorical cross-entropy; early stopping on validation loss with ``patience``,
    restoring the best weights. The network is built in ``fit``.

    ``standardize=True`` (default) puts a Normalization layer, adapted on the training
    features, in front of the tutorial's layers; ``standardize=False`` is the tutorial's exact net.
    """

    def __init__(self, units: int = 128, dropout1: float = 0.2, dropout2: float = 0.5, epochs: int = 100,
                 patience: int = 10, batch_size: int = 32, learning_rate: float = 1e-3, standardize: bool = True,
                 seed: int = 0):
        self.units = units
        self.dropout1 = dropout1
        self.dropout2 = dropout2
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.standardize = standardize
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
            keras.layers.Dense(int(self.units), activation="relu"),
            keras.layers.Dropout(float(self.dropout2)),
            keras.layers.Dense(n_classes, activation="softmax"),
        ], name="dense_head")

    def fit(self, X, y, validation_data=None):
        import keras  # noqa: PLC0415

        keras.utils.set_random_seed(int(self.seed))
        self.classes_ = np.unique(y)
        n = len(self.classes_)
        onehot = lambda labels: keras.utils.to_categorical(np.searchsorted(self.classes_, labels), n)  # noqa: E731
        self.model_ = self._build(np.asarray(X, np.float32), n)
        self.model_.compile(optimizer=keras.optimizers.Adam(float(self.learning_rate)),
                            loss="categorical_crossentropy", metrics=["accuracy"])
        callbacks, val = [], None
        if validation_data is not None and len(validation_data[0]):
            Xv, yv = validation_data
            known = np.isin(yv, self.classes_)
            val = (Xv[known], onehot(yv[known]))
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(self.patience), restore_best_weights=True))
        hist = self.model_.fit(X, onehot(y), validation_data=val, epochs=int(self.epochs),
                               batch_size=int(self.batch_size), callbacks=callbacks, verbose=0, shuffle=True)
        self.history_ = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
        self.n_epochs_ = len(hist.history["loss"])
        return self

    def predict_proba(self, X) -> np.ndarray:
        return np.asarray(self.model_.predict(np.asarray(X, np.float32), batch_size=256, verbose=0))

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
