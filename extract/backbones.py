"""Backbone registry: which frozen CNN turns an image into a feature vector.

Each entry is a frozen :class:`BackboneSpec`. Its ``as_config()`` goes into the cache's
``config`` attribute, so a head or ``predict`` can check it reads the features it expects.
Adding a backbone is one ``register_backbone(BackboneSpec(...))`` line.

TensorFlow is imported only inside :func:`build_backbone`, so reading the registry is cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KERAS_MODELS_DIR = Path("~/.keras/models").expanduser()


@dataclass(frozen=True)
class BackboneSpec:
    """How to build and feed one ``keras.applications`` family member.

    Attributes
    ----------
    name : registry key, e.g. ``"xception"``.
    constructor : dotted path of the Keras constructor, e.g. ``"keras.applications.Xception"``.
    preprocess : dotted path of its ``preprocess_input``.
    default_size, min_size : square input side in pixels.
    feature_width : channels of the last convolutional map (the pooled feature width).
    weights_file : the exact file name Keras caches the headless ImageNet weights under.
    gflops : multiply-adds per image at default_size, where Keras documents it (else None).
    """

    name: str
    constructor: str
    preprocess: str
    default_size: int
    min_size: int
    feature_width: int
    weights_file: str
    gflops: float | None = None

    def as_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _BACKBONES:
        warnings.warn(f"backbone {spec.name!r} registered twice; the later entry wins", stacklevel=2)
    _BACKBONES[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _BACKBONES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown BACKBONE={name!r}; choose one of: {', '.join(list_backbones())}"
        ) from None


register_backbone(BackboneSpec(
    name="xception",
    constructor="keras.applications.Xception",
    preprocess="keras.applications.xception.preprocess_input",
    default_size=299, min_size=71, feature_width=2048,
    weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    gflops=8.4,
))


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither cached locally nor downloadable."""


def _import_attr(dotted: str):
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_identity(spec: BackboneSpec, weights: str) -> dict[str, Any]:
    """Describe ``weights`` so that two caches built from different weights never share a key.

    ``weights`` is ``"imagenet"``, ``"none"`` (random init, seeded) or a path to an ``.h5`` file.
    Raises a :class:`WeightsUnavailableError` / ``FileNotFoundError`` before any work is done.
    """
    if weights == "none":
        return {"kind": "none"}
    if weights == "imagenet":
        cached = KERAS_MODELS_DIR / spec.weights_file
        if not cached.exists():
            _download_imagenet(spec)
        return {"kind": "imagenet", "file": spec.weights_file, "sha256": sha256_file(cached)}
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"WEIGHTS={weights!r} is not a file. Pass WEIGHTS=imagenet, WEIGHTS=none, "
            f"or the path to a headless {spec.name} weights file ({spec.weights_file})."
        )
    return {"kind": "file", "file": path.name, "path": str(path.resolve()), "sha256": sha256_file(path)}


def _download_imagenet(spec: BackboneSpec) -> None:
    from keras.utils import get_file  # noqa: PLC0415  (TensorFlow stays out of cheap imports)

    url = f"https://storage.googleapis.com/tensorflow/keras-applications/{spec.name}/{spec.weights_file}"
    try:
        get_file(spec.weights_file, url, cache_subdir="models")
    except Exception as err:  # noqa: BLE001  (any network failure means the same thing to the user)
        raise WeightsUnavailableError(
            f"cannot get ImageNet weights for {spec.name}: {type(err).__name__}: {err}\n"
            f"No network to download them? Put {spec.weights_file} in {KERAS_MODELS_DIR}/, "
            f"or pass WEIGHTS=<path to the .h5 file>, or WEIGHTS=none (random weights: "
            f"accuracy is then not meaningful)."
        ) from err


def build_backbone(spec: BackboneSpec, size: int, pooling: str, weights: str, seed: int = 0):
    """Build the frozen headless backbone, ``preprocess_input`` applied inside it.

    Returns a Keras model that maps uint8-range float images of shape (batch, size, size, 3)
    to features of shape (batch, feature_width), or (batch, h, w, feature_width) when
    ``pooling == "none"``.
    """
    import keras  # noqa: PLC0415

    if size < spec.min_size:
        raise ValueError(f"SIZE={size} is below the minimum {spec.min_size} for {spec.name}")
    keras.utils.set_random_seed(seed)  # WEIGHTS=none must give the same network in extract and predict
    constructor = _import_attr(spec.constructor)
    preprocess = _import_attr(spec.preprocess)
    file_weights = weights not in ("imagenet", "none")
    try:
        net = constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(size, size, 3),
            pooling=None if pooling == "none" else pooling,
        )
    except Exception as err:
        if weights == "imagenet" and not (KERAS_MODELS_DIR / spec.weights_file).exists():
            raise WeightsUnavailableError(str(err)) from err
        raise
    if file_weights:
        net.load_weights(str(Path(weights).expanduser()))
    net.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    outputs = net(preprocess(inputs), training=False)
    return keras.Model(inputs, outputs, name=f"{spec.name}_{size}_{pooling}")
