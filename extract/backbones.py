"""Backbone registry: which frozen CNN turns an image into a feature vector.

Each entry is a frozen :class:`BackboneSpec`. Its ``as_config()`` goes into the cache's
``config`` attribute, so a head or ``predict`` can check it reads the features it expects.
Adding a backbone is one ``register_backbone(BackboneSpec(...))`` entry.

Every number and file name below was read from Keras 3's ``keras/src/applications/*.py`` and
checked by building the network (``tests/test_backbones.py`` checks them against Keras again).

TensorFlow is imported only inside :func:`build_backbone`, so reading the registry is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# Where Keras's ``get_file(..., cache_subdir="models")`` keeps weights: $KERAS_HOME/models, else ~/.keras/models.
KERAS_MODELS_DIR = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models"

_TF_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/"
# Fields that document a backbone but do not change its features: kept out of the cache key,
# so correcting a URL or a GFLOPs figure does not orphan every existing cache.
_NOT_KEYED = {"cache_key": False}


@dataclass(frozen=True)
class BackboneSpec:
    """How to build and feed one ``keras.applications`` family member.

    Attributes
    ----------
    name : registry key, e.g. ``"xception"`` (the Keras class name in lower case).
    constructor : dotted path of the Keras constructor, e.g. ``"keras.applications.Xception"``.
    preprocess : dotted path of its family's ``preprocess_input``.
    default_size, min_size : square input side in pixels; ``min_size`` is the smallest Keras
        accepts with ``include_top=False``.
    feature_width : channels of the last feature map (the pooled feature width).
    weights_file : the exact file name Keras caches the headless ImageNet weights under. May hold
        ``{size}`` when Keras ships one file per input size (MobileNetV2): see ``weights_file_for``.
    weights_base_url : the folder URL Keras downloads ``weights_file`` from.
    weights_sizes : input sizes with their own weights file; any other size uses ``default_size``'s.
    preprocess_in_model : True when the Keras network rescales and normalizes its input itself
        (EfficientNet, EfficientNetV2, MobileNetV3, ConvNeXt). Their ``preprocess_input`` is then a
        no-op kept for compatibility, and the model takes raw 0-255 pixels. Either way the model
        :func:`build_backbone` returns takes raw 0-255 pixels.
    file_weights_graph_differs : True when Keras builds a different network for ``weights="imagenet"``
        than for ``weights=None`` or a file: EfficientNet B0-B7 add a per-channel 1/sqrt(std)
        rescaling only for ``"imagenet"``, so loading the ImageNet file through ``WEIGHTS=<path>``
        would give wrong features. Such backbones take their ImageNet file from the Keras cache only.
    gflops : multiply-adds per image at default_size, where Keras documents it (else None).
    """

    name: str
    constructor: str
    preprocess: str
    default_size: int
    min_size: int
    feature_width: int
    weights_file: str
    weights_base_url: str = field(metadata=_NOT_KEYED)
    weights_sizes: tuple[int, ...] = ()
    preprocess_in_model: bool = False
    file_weights_graph_differs: bool = False
    gflops: float | None = field(default=None, metadata=_NOT_KEYED)

    def weights_file_for(self, size: int | None = None) -> str:
        """The headless ImageNet weights file Keras loads for input side ``size`` (default: default_size)."""
        size = self.default_size if size is None or size not in self.weights_sizes else size
        return self.weights_file.format(size=size)

    def weights_url(self, size: int | None = None) -> str:
        return self.weights_base_url + self.weights_file_for(size)

    def as_config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("cache_key", True)}


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


# keras.io's applications table lists size, accuracy, parameters, depth and time per step but no
# FLOPs; of these families only MobileNetV3's docstring gives multiply-adds. Elsewhere ``gflops``
# stays None rather than a number from another source.
register_backbone(BackboneSpec(
    name="xception", constructor="keras.applications.Xception",
    preprocess="keras.applications.xception.preprocess_input",
    default_size=299, min_size=71, feature_width=2048,
    weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_base_url=_TF_KERAS + "xception/",
))
register_backbone(BackboneSpec(
    name="inceptionv3", constructor="keras.applications.InceptionV3",
    preprocess="keras.applications.inception_v3.preprocess_input",
    default_size=299, min_size=75, feature_width=2048,
    weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_base_url=_TF_KERAS + "inception_v3/",
))
register_backbone(BackboneSpec(
    name="resnet50", constructor="keras.applications.ResNet50",
    preprocess="keras.applications.resnet50.preprocess_input",
    default_size=224, min_size=32, feature_width=2048,
    weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_base_url=_TF_KERAS + "resnet/",
))
register_backbone(BackboneSpec(
    name="resnet50v2", constructor="keras.applications.ResNet50V2",
    preprocess="keras.applications.resnet_v2.preprocess_input",
    default_size=224, min_size=32, feature_width=2048,
    weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_base_url=_TF_KERAS + "resnet/",
))
for _variant, _size, _width in (("b0", 224, 1280), ("b1", 240, 1280), ("b2", 260, 1408), ("b3", 300, 1536)):
    register_backbone(BackboneSpec(
        name=f"efficientnet{_variant}", constructor=f"keras.applications.EfficientNet{_variant.upper()}",
        preprocess="keras.applications.efficientnet.preprocess_input",
        default_size=_size, min_size=32, feature_width=_width,
        weights_file=f"efficientnet{_variant}_notop.h5",  # Keras: model name + "_notop.h5"
        weights_base_url="https://storage.googleapis.com/keras-applications/",
        preprocess_in_model=True, file_weights_graph_differs=True,
    ))
register_backbone(BackboneSpec(
    name="efficientnetv2s", constructor="keras.applications.EfficientNetV2S",
    preprocess="keras.applications.efficientnet_v2.preprocess_input",
    default_size=384, min_size=32, feature_width=1280,
    weights_file="efficientnetv2-s_notop.h5",
    weights_base_url=_TF_KERAS + "efficientnet_v2/",
    preprocess_in_model=True,
))
register_backbone(BackboneSpec(
    name="mobilenetv2", constructor="keras.applications.MobileNetV2",
    preprocess="keras.applications.mobilenet_v2.preprocess_input",
    default_size=224, min_size=32, feature_width=1280,
    # Keras ships one headless file per input side in weights_sizes and loads the 224 one otherwise.
    weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5",
    weights_base_url=_TF_KERAS + "mobilenet_v2/",
    weights_sizes=(96, 128, 160, 192, 224),
))
register_backbone(BackboneSpec(
    name="mobilenetv3large", constructor="keras.applications.MobileNetV3Large",
    preprocess="keras.applications.mobilenet_v3.preprocess_input",
    default_size=224, min_size=32, feature_width=960,
    weights_file="weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    weights_base_url=_TF_KERAS + "mobilenet_v3/",
    preprocess_in_model=True,
    gflops=0.217,  # "mobilenet_v3_large_1.0_224 | 217" MACs(M), with the classifier, in Keras's docstring
))
register_backbone(BackboneSpec(
    name="densenet121", constructor="keras.applications.DenseNet121",
    preprocess="keras.applications.densenet.preprocess_input",
    default_size=224, min_size=32, feature_width=1024,
    weights_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_base_url=_TF_KERAS + "densenet/",
))
register_backbone(BackboneSpec(
    name="convnexttiny", constructor="keras.applications.ConvNeXtTiny",
    preprocess="keras.applications.convnext.preprocess_input",
    default_size=224, min_size=32, feature_width=768,
    weights_file="convnext_tiny_notop.h5",
    weights_base_url=_TF_KERAS + "convnext/",
    preprocess_in_model=True,
))
register_backbone(BackboneSpec(
    name="vgg16", constructor="keras.applications.VGG16",
    preprocess="keras.applications.vgg16.preprocess_input",
    default_size=224, min_size=32, feature_width=512,
    weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    weights_base_url=_TF_KERAS + "vgg16/",
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


def weights_identity(spec: BackboneSpec, weights: str, size: int | None = None) -> dict[str, Any]:
    """Describe ``weights`` so that two caches built from different weights never share a key.

    ``weights`` is ``"imagenet"``, ``"none"`` (random init, seeded) or a path to an ``.h5`` file;
    ``size`` (default: the spec's default) matters where Keras ships one file per input size.
    Raises a :class:`WeightsUnavailableError` / ``FileNotFoundError`` before any work is done.
    """
    if weights == "none":
        return {"kind": "none"}
    file_name = spec.weights_file_for(size)
    if weights == "imagenet":
        cached = KERAS_MODELS_DIR / file_name
        if not cached.exists():
            _download_imagenet(spec, size)
        return {"kind": "imagenet", "file": file_name, "sha256": sha256_file(cached)}
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"WEIGHTS={weights!r} is not a file. Pass WEIGHTS=imagenet, WEIGHTS=none, "
            f"or the path to a headless {spec.name} weights file ({file_name})."
        )
    if spec.file_weights_graph_differs and path.name == file_name:
        raise ValueError(
            f"WEIGHTS={weights} is Keras's ImageNet file for {spec.name}, but Keras builds {spec.name} "
            f"with an extra input rescaling only for WEIGHTS=imagenet, so loading it from a path gives "
            f"wrong features. Copy it to {KERAS_MODELS_DIR}/ and pass WEIGHTS=imagenet."
        )
    return {"kind": "file", "file": path.name, "path": str(path.resolve()), "sha256": sha256_file(path)}


class WeightsChangedError(ValueError):
    """The weights a cache was extracted with are not the weights a rebuild of its backbone would load."""


def check_recorded_weights(spec: BackboneSpec, recorded: dict[str, Any], weights: str,
                           size: int | None = None) -> None:
    """Refuse to rebuild ``spec`` from ``weights`` unless they are the ``recorded`` ones (a cache config's
    ``weights``, from :func:`weights_identity` at extraction).

    A head only fits features of the weights it was trained on, and a file replaced at the same path (or a
    re-downloaded Keras file) would otherwise change every prediction silently. The kind and the file's
    sha256 identify the weights; the file name and path only say where they were. Raises
    ``FileNotFoundError`` (the file is gone), :class:`WeightsUnavailableError` (the Keras file is neither
    cached nor downloadable) or :class:`WeightsChangedError` (another file), each saying how to fix it.
    """
    kind = recorded.get("kind")
    if kind == "none":
        return
    # ImageNet weights are wherever Keras loads them from now; a file is where extraction read it.
    where = str(KERAS_MODELS_DIR / spec.weights_file_for(size)) if kind == "imagenet" else recorded.get("path")
    sha = recorded.get("sha256")
    given = f"WEIGHTS=imagenet (Keras's file {where}, " if kind == "imagenet" else f"WEIGHTS={where} ("
    needs = f"this cache (and every run trained on it) was extracted with {given}sha256 {sha or '?'})"

    def refit(arg: str) -> str:
        return (f"or re-extract with the weights you have now (`make extract ... WEIGHTS={arg}`: a new cache, "
                f"the weights' hash is part of its key) and train the head again on it")

    try:
        current = weights_identity(spec, weights, size)
    except FileNotFoundError:
        raise FileNotFoundError(f"{needs}, but {where} does not exist any more. Put that file back at {where}, "
                                f"{refit('<your weights file>')}.") from None
    except WeightsUnavailableError as err:
        reason = str(err).splitlines()[0]
        raise WeightsUnavailableError(f"{needs}, but it is not there and cannot be downloaded ({reason}). Put "
                                      f"that file back at {where}, {refit('<your weights file>')}.") from err
    if current.get("kind") != kind or (sha is not None and current.get("sha256") != sha):
        raise WeightsChangedError(
            f"{needs}, but {where} now holds other weights (sha256 {current.get('sha256')}): the backbone "
            f"would compute other features than the head was trained on. Put the original file back at "
            f"{where}, {refit(weights)}."
        )


def _unavailable(spec: BackboneSpec, size: int | None, err: BaseException) -> WeightsUnavailableError:
    file_name = spec.weights_file_for(size)
    by_path = "" if spec.file_weights_graph_differs else "or pass WEIGHTS=<path to the .h5 file>, "
    return WeightsUnavailableError(
        f"cannot get ImageNet weights for {spec.name}: {type(err).__name__}: {err}\n"
        f"No network to download them? Put {file_name} in {KERAS_MODELS_DIR}/ (it is "
        f"{spec.weights_url(size)}), {by_path}or pass WEIGHTS=none (random weights: accuracy is "
        f"then not meaningful)."
    )


def _download_imagenet(spec: BackboneSpec, size: int | None = None) -> None:
    from keras.utils import get_file  # noqa: PLC0415  (TensorFlow stays out of cheap imports)

    file_name = spec.weights_file_for(size)
    try:
        get_file(file_name, spec.weights_url(size), cache_dir=str(KERAS_MODELS_DIR.parent),
                 cache_subdir=KERAS_MODELS_DIR.name)
    except Exception as err:  # noqa: BLE001  (any network failure means the same thing to the user)
        raise _unavailable(spec, size, err) from err
    if not (KERAS_MODELS_DIR / file_name).exists():  # get_file falls back to /tmp when the folder is read-only
        raise WeightsUnavailableError(
            f"downloaded {file_name}, but not into {KERAS_MODELS_DIR}/ (is it writable?). "
            f"Move it there, or pass WEIGHTS=<path to the .h5 file>."
        )


# PRECISION= value → Keras dtype policy the backbone is built under (None: plain float32).
PRECISION_POLICIES = {"float32": None, "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def build_backbone(spec: BackboneSpec, size: int, pooling: str, weights: str, seed: int = 0,
                   precision: str = "float32"):
    """Build the frozen headless backbone, ``preprocess_input`` applied inside it.

    Returns a Keras model that maps uint8-range float images of shape (batch, size, size, 3)
    to features of shape (batch, feature_width), or (batch, h, w, feature_width) when
    ``pooling == "none"``. For ``preprocess_in_model`` families the wrapped ``preprocess_input``
    is Keras's no-op and the network's own first layers rescale the 0-255 pixels.
    ``precision="bfloat16"`` (CPUs with AVX-512 BF16 or AMX) or ``"float16"`` (GPUs) computes under
    Keras's mixed policy with float32 weights; the features are always returned as float32.
    """
    import keras  # noqa: PLC0415

    if size < spec.min_size:
        raise ValueError(f"SIZE={size} is below the minimum {spec.min_size} for {spec.name}")
    keras.utils.set_random_seed(seed)  # WEIGHTS=none must give the same network in extract and predict
    constructor = _import_attr(spec.constructor)
    preprocess = _import_attr(spec.preprocess)
    file_weights = weights not in ("imagenet", "none")
    if file_weights and spec.file_weights_graph_differs:
        warnings.warn(
            f"WEIGHTS={weights}: Keras builds {spec.name} without its ImageNet input rescaling when weights "
            f"come from a file. Right for weights trained on that network; for Keras's ImageNet file use "
            f"WEIGHTS=imagenet with the file in {KERAS_MODELS_DIR}/.", stacklevel=2,
        )
    if precision not in PRECISION_POLICIES:
        raise ValueError(f"PRECISION={precision!r} is not one of {', '.join(PRECISION_POLICIES)}")
    previous_policy = keras.config.dtype_policy()
    if PRECISION_POLICIES[precision]:
        keras.config.set_dtype_policy(PRECISION_POLICIES[precision])
    try:
        net = constructor(
            include_top=False,
            weights="imagenet" if weights == "imagenet" else None,
            input_shape=(size, size, 3),
            pooling=None if pooling == "none" else pooling,
        )
    except Exception as err:
        if weights == "imagenet" and not (KERAS_MODELS_DIR / spec.weights_file_for(size)).exists():
            raise _unavailable(spec, size, err) from err
        raise
    finally:
        keras.config.set_dtype_policy(previous_policy)
    if file_weights:
        _load_weights_file(net, spec, weights, size)
    net.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    outputs = keras.ops.cast(net(preprocess(inputs), training=False), "float32")
    return keras.Model(inputs, outputs, name=f"{spec.name}_{size}_{pooling}")


class WeightsFileError(ValueError):
    """A ``WEIGHTS=<file>`` Keras cannot load into the backbone: not a Keras weights file, or another network's."""


def _keras_reader(name: str) -> str | None:
    """The reader Keras 3's ``load_weights`` picks for a file of this name (it never looks inside first)."""
    if name.endswith(".keras"):
        return ".keras"
    if name.endswith((".weights.h5", ".weights.json")):  # .json: an index of sharded .h5 files
        return name[name.rindex(".weights."):]
    if name.endswith((".h5", ".hdf5")):
        return ".h5"  # the legacy Keras 2 format, also keras.applications' ImageNet downloads
    return None


def _fix_hint(spec: BackboneSpec, size: int | None) -> str:
    ctor = f"{spec.constructor}(include_top=False)"
    if spec.file_weights_graph_differs:
        return (f"pass weights saved from {ctor} (Keras's ImageNet file {spec.weights_file_for(size)} goes in "
                f"{KERAS_MODELS_DIR}/, with WEIGHTS=imagenet)")
    return (f"pass the headless weights file of {spec.name} ({spec.weights_file_for(size)}, or one saved "
            f"from {ctor})")


def _weights_format(path: Path, weights: str, spec: BackboneSpec, size: int | None) -> str:
    """The file name suffix Keras needs to read ``path``, found from its content (``OSError``: not HDF5,
    :class:`WeightsFileError`: HDF5 without Keras weights)."""
    import h5py  # noqa: PLC0415

    if zipfile.is_zipfile(path):
        return ".keras"
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or "model_weights" in f:
                return ".h5"
            if "layers" in f or "vars" in f:
                return ".weights.h5"
    except OSError as err:  # an OSError still, as h5py's was: callers and extract workers treat it as before
        raise OSError(f"WEIGHTS={weights} is not a Keras weights file (not HDF5: {str(err).splitlines()[0]}); "
                      f"{_fix_hint(spec, size)}") from None
    raise WeightsFileError(f"WEIGHTS={weights} is an HDF5 file without Keras weights (a feature cache?); "
                           f"{_fix_hint(spec, size)}")


@contextlib.contextmanager
def _named_for_keras(path: Path, suffix: str) -> Iterator[Path]:
    """``path`` under a name Keras reads as ``suffix``: itself, or a link to it in a temporary folder."""
    if _keras_reader(path.name) == suffix:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="headswap-weights-") as tmp:
        link = Path(tmp) / f"weights{suffix}"
        try:
            link.symlink_to(path.resolve())
        except OSError:  # no symlinks on this file system
            shutil.copyfile(path, link)
        yield link


def _short(err: BaseException, limit: int = 240) -> str:
    """The gist of a Keras loading error, whose message can list every layer (kilobytes)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    gist = lines[0] + (" " + lines[1] if lines[0].endswith(":") and len(lines) > 1 else "")
    return gist if len(gist) <= limit else gist[:limit - 1] + "…"


def _load_weights_file(net, spec: BackboneSpec, weights: str, size: int | None) -> None:
    """``net.load_weights(weights)``, whatever the file's name, failing with one line that says what to pass.

    Keras 3 picks the reader by the name alone, so a ``save_weights`` file renamed to ``x.h5`` failed with
    "found 0 saved layers" (and Keras's ImageNet file renamed to ``x.weights.h5`` the other way round): the
    format is read from the content instead. Another network's file made Keras warn once per layer and then
    list every layer in its error; warnings saying it skipped layers mean the features would be wrong too.
    """
    path = Path(weights).expanduser()
    sharded = _keras_reader(path.name) == ".weights.json"
    suffix = ".weights.json" if sharded else _weights_format(path, weights, spec, size)

    def refused(reason: str) -> WeightsFileError:
        return WeightsFileError(f"WEIGHTS={weights} does not hold {spec.name} weights ({reason}); "
                                f"{_fix_hint(spec, size)}")

    with _named_for_keras(path, suffix) as readable, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            net.load_weights(str(readable))
        except Exception as err:  # noqa: BLE001  (Keras raises ValueError, KeyError, TypeError... for a wrong file)
            raise refused(_short(err)) from None
    skipped = [w for w in caught if issubclass(w.category, UserWarning) and str(w.message).startswith("Skipping")]
    if skipped:
        raise refused(f"Keras left {len(skipped)} parts unloaded, e.g. {_short(skipped[0].message)}")
    for w in caught:  # anything else is not ours to hide
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@contextlib.contextmanager
def fused_batch_norm() -> Iterator[None]:
    """While active, Keras 3 computes batch normalization of 4-D float32 tensors with TensorFlow's fused
    inference kernel (a no-op if Keras's internals have moved).

    Keras 3 runs BatchNormalization as separate multiply and add passes over every activation. Keras 2
    called ``fused_batch_norm``, one op that TensorFlow's graph optimiser also folds into the convolution
    before it; on this project's 2-core CPU that is 7-11% more images/s for Xception, at no memory cost
    (``make bench``). Keras casts bfloat16 and float16 activations to float32 for batch normalization
    and the result back to the layer's compute dtype; the fused kernel takes the bfloat16/float16
    tensor itself instead (it computes in float32 inside) and returns that dtype, so both casts go:
    +3% for PRECISION=bfloat16 at 100 and 299 px here (keeping the cast back to float32 was 10% slower
    than Keras's way). Better still, a low-precision batch norm right after a convolution is folded into it
    (:func:`_folded_into_conv`). The BatchNormalization layer, Keras's only caller, casts the output to its
    compute dtype either way. The maths is the same: features agree with the plain Keras call to float
    rounding (``tests/test_backbones.py``: every backbone with random batch-norm statistics, and
    bfloat16 and float16).

    For tracing inference graphs only (the fused inference kernel passes no gradient to the mean and
    variance), and not thread-safe: it swaps a Keras module attribute. Use it inside the traced Python
    function, as :func:`backbone_function` does, so it is active while tracing and never at run time.
    """
    import tensorflow as tf  # noqa: PLC0415

    try:
        from keras.src import backend  # noqa: PLC0415

        original = backend.nn.batch_normalization
    except (ImportError, AttributeError):
        yield
        return

    def batch_normalization(x, mean, variance, axis, offset=None, scale=None, epsilon=1e-3):
        if (len(x.shape) == 4 and axis in (-1, 3)
                and all(t.dtype == tf.float32 for t in (x, mean, variance, offset, scale) if t is not None)):
            scale = tf.ones_like(variance) if scale is None else scale  # e.g. InceptionV3: scale=False
            offset = tf.zeros_like(mean) if offset is None else offset
            folded = _folded_into_conv(x, mean, variance, offset, scale, epsilon)
            if folded is not None:
                return folded
            return tf.compat.v1.nn.fused_batch_norm(_low_precision_source(x), scale, offset, mean=mean,
                                                    variance=variance, epsilon=epsilon, is_training=False)[0]
        return original(x, mean, variance, axis, offset, scale, epsilon)

    backend.nn.batch_normalization = batch_normalization
    try:
        yield
    finally:
        backend.nn.batch_normalization = original


def _folded_into_conv(x, mean, variance, offset, scale, epsilon):
    """Batch norm of a bfloat16/float16 convolution's output folded into that convolution, else ``None``.

    TensorFlow's graph optimiser folds batch norm into a float32 convolution but not into a bfloat16 one,
    and oneDNN then runs it as a separate pass (on 728 channels a slow generic kernel): a third of an
    Xception call at 299 px here. Folded, the convolution's kernel is scaled per output channel (in float32,
    rounded once to the low precision) and the shift is added after it: as an Add, since a BiasAdd there made
    grappler's remapper fail on Xception's residual adds ("Mutation::Apply error", TF 2.21), at the same speed.
    Handles Conv2D and DepthwiseConv2dNative, with or without a BiasAdd, when nothing else reads them.
    """
    import tensorflow as tf  # noqa: PLC0415

    source = _low_precision_source(x)
    if source is x or len(source.consumers()) != 1:
        return None
    node, bias = source.op, None
    if node.type == "BiasAdd" and len(node.inputs[0].consumers()) == 1:
        node, bias = node.inputs[0].op, tf.cast(node.inputs[1], tf.float32)
    if node.type not in ("Conv2D", "DepthwiseConv2dNative") or node.get_attr("data_format") != b"NHWC":
        return None
    inputs, kernel = node.inputs
    factor = scale * tf.math.rsqrt(variance + epsilon)  # per output channel
    shift = offset - mean * factor if bias is None else offset + (bias - mean) * factor
    per_kernel = factor if node.type == "Conv2D" else tf.reshape(factor, kernel.shape[2:])  # (in, multiplier)
    kernel = tf.cast(tf.cast(kernel, tf.float32) * per_kernel, kernel.dtype)
    attrs = {key: node.get_attr(key) for key in ("strides", "padding", "explicit_paddings", "dilations")}
    out = getattr(tf.raw_ops, node.type)(input=inputs, filter=kernel, data_format="NHWC", **attrs)
    return tf.add(out, tf.cast(shift, out.dtype))


def _low_precision_source(x):
    """The bfloat16/float16 tensor a traced float32 ``x`` was cast from, else ``x`` itself."""
    import tensorflow as tf  # noqa: PLC0415

    if tf.executing_eagerly() or x.op.type != "Cast":
        return x
    source = x.op.inputs[0]
    return source if source.dtype in (tf.bfloat16, tf.float16) else x


def inference_call(model):
    """``model(x, training=False)`` for a ``tf.function`` body: traced with :func:`fused_batch_norm`.

    ``x`` holds 0-255 pixels, uint8 or float32 (cast to float32 in the graph).
    """
    import tensorflow as tf  # noqa: PLC0415

    def call(x):
        with fused_batch_norm():  # runs while tracing only: a traced function does not re-run Python
            return model(tf.cast(x, tf.float32), training=False)

    return call


class BackboneFunction:
    """The traced backbone (see :func:`backbone_function`), run by TensorFlow's single-threaded executor.

    That executor runs the graph's ops one after another on the calling thread, in one fixed topological
    order, each op still using every core (intra-op threads). The default executor picks the order as ops
    become ready, so which activations are alive together varied from run to run: at 299 px about one
    extraction in five peaked ~350 MB higher (measured with VmHWM per batch), at the same speed.
    """

    def __init__(self, concrete, model):
        self.concrete = concrete
        self.graph = concrete.graph
        self.model = model  # the graph holds the variables weakly: keep them alive as long as the function
        try:
            from tensorflow.python.eager.context import function_executor_type  # noqa: PLC0415
        except ImportError:  # a TensorFlow without it: the default executor (same features)
            function_executor_type = None
        self._executor = function_executor_type

    def __call__(self, images):
        if self._executor is None:
            return self.concrete(images)
        with self._executor("SINGLE_THREADED_EXECUTOR"):
            return self.concrete(images)


def backbone_function(model, dtype="float32") -> BackboneFunction:
    """The backbone as one traced TensorFlow graph: images (b, s, s, 3) of ``dtype`` (uint8 or float32,
    0-255) → float32 features.

    Traced once for any batch size (see :func:`inference_call`) and run by the single-threaded executor
    (see :class:`BackboneFunction`).
    """
    import tensorflow as tf  # noqa: PLC0415

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.as_dtype(dtype))
    return BackboneFunction(tf.function(inference_call(model)).get_concrete_function(spec), model)
