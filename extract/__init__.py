"""Stage 1 of headswap: images → frozen backbone → HDF5 feature cache.

Public entry points: :func:`extract_features`, :func:`discover`, :class:`FeatureCache`,
:func:`list_backbones`. TensorFlow is imported only when a backbone is built, so
``from extract.cache import FeatureCache`` stays cheap for scikit-learn heads.
"""

from .backbones import BackboneSpec, WeightsUnavailableError, get_backbone, list_backbones, register_backbone
from .cache import CacheError, FeatureCache
from .discover import DataError, discover
from .pipeline import ExtractResult, extract_features

__all__ = [
    "BackboneSpec", "CacheError", "DataError", "ExtractResult", "FeatureCache", "WeightsUnavailableError",
    "discover", "extract_features", "get_backbone", "list_backbones", "register_backbone",
]
