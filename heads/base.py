"""What every head shares: scikit-learn-style estimator conventions and pickle-free save/load.

A head stores its keyword arguments in ``__init__`` (no logic), learns in ``fit(X, y)`` and
returns ``self``, and keeps learned state in attributes ending in ``_``. ``predict_proba``
columns follow ``classes_``. ``save(dir)`` writes ``head.json`` plus arrays or a ``.keras``
file; ``load_head(dir)`` reads them back without pickle, so a run from elsewhere cannot run code.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from .registry import head_class

HEAD_FILE = "head.json"


class Head(ABC):
    name: str = ""

    def get_params(self) -> dict[str, Any]:
        from .registry import head_params  # noqa: PLC0415

        return {k: getattr(self, k) for k in head_params(self.name)}

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray] | None = None):
        ...

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        ...

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
        raise FileNotFoundError(f"{folder} holds no saved head ({HEAD_FILE} is missing)")
    meta = json.loads(meta_file.read_text())
    head = head_class(meta["head"])(**meta["params"])
    head.classes_ = np.asarray(meta["classes"])
    head._load_state(folder)
    return head


def flat(X: np.ndarray) -> np.ndarray:
    """(n, ...) → (n, d) float32."""
    return np.asarray(X, dtype=np.float32).reshape(len(X), -1)
