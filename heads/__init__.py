"""Stage 2 of headswap: fit cheap classifier heads on cached features.

Public entry points: :func:`train_head`, :func:`create_head`, :func:`list_heads`,
:func:`register_head`, :func:`load_head`, :func:`predict`. Importing this package does
not import TensorFlow; only the ``dense`` head and ``predict`` do, when they run.
"""

from . import dense, knn, linear_svm, logreg, ridge, sgd  # noqa: F401  (registers the heads)
from .base import Head, load_head
from .predict import predict
from .registry import create_head, list_heads, register_head
from .train import TrainResult, train_head

__all__ = ["Head", "TrainResult", "create_head", "list_heads", "load_head", "predict", "register_head", "train_head"]
