"""Export a trained run as one Keras model, image → class probabilities, that serves without scikit-learn.

The model is the run's whole inference path:

    uint8 image (b, size, size, 3) → backbone (rebuilt from the run's cache config by
    ``extract.pipeline.load_backbone``, ``preprocess_input`` inside) → rounding through the cache
    dtype (the head was fitted on features stored as float16/float32) → the head as Keras layers

Heads become layers by an exporter registered per head name (``@register_exporter``). Linear heads
(logreg, ridge, linear-svm, sgd) go through one function, :func:`linear_head`, that turns
(mean, scale, coef, intercept, output) into Rescaling → Rescaling → Dense → output activation
with the head's own numbers; adding a linear head is one :func:`register_linear` line. ``knn``
keeps its reference features in a :class:`CosineKNNVote` layer; ``dense`` reuses its Keras model.

Written to ``out`` (default ``<run>/export``):

- ``model.keras``: input ``image`` uint8 (b, size, size, 3), output probabilities (b, n_labels)
- ``saved_model/``: signatures ``serving_default`` (``image_bytes``: tf.string (b,) of encoded
  JPEG/PNG/GIF/BMP/WebP files → ``probabilities`` (b, n_labels) float32, ``label`` (b,) string)
  and ``serve_images`` (``image``: uint8 (b, size, size, 3) → the same outputs)
- ``model.tflite``: the image model, when the TFLite converter manages it
- ``labels.json``: class names in output column order
- ``export.json``: what was written, the input contract, and the agreement measured on cached images

TensorFlow is imported when this module is imported; ``heads`` itself never imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from .base import Head, load_head
from .predict import read_run_info
from .registry import list_heads
from .train import EXPORT_FILES, EXPORT_FORMAT_FILES, RANDOM_WEIGHTS_PREDICTIONS_NOTE, ZERO_FEATURES_FIX

OUTPUTS = ("softmax", "softmax-pm", "ovr-sigmoid")
FORMATS = ("keras", "saved_model", "tflite")
# How a linear head with one coef row (two classes) scores its two columns: (first, second) × z.
_BINARY_COLUMNS = {"softmax": (0.0, 1.0), "softmax-pm": (-1.0, 1.0), "ovr-sigmoid": (0.0, 1.0)}
CHECK_IMAGES = 8
# make predict's limit (extract.decode.DEFAULT_MAX_PIXELS, Pillow's decompression-bomb limit), kept here so that
# serving needs no Pillow import; a test checks the two are equal.
MAX_PIXELS = 89_478_485
CHECK_TOLERANCE = 1e-3  # largest probability difference the self-check lets pass without a warning


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- heads as Keras layers ------------------------------------------------------------------
HeadExporter = Callable[[Head], Callable[[Any], Any]]
_EXPORTERS: dict[str, HeadExporter] = {}


def register_exporter(name: str) -> Callable[[HeadExporter], HeadExporter]:
    """``exporter(head)`` returns a callable mapping the features tensor to probabilities (over ``classes_``)."""
    def add(fn: HeadExporter) -> HeadExporter:
        _EXPORTERS[name] = fn
        return fn
    return add


def exportable_heads() -> list[str]:
    """Registered heads that have an exporter."""
    return [name for name in list_heads() if name in _EXPORTERS]


def linear_head(mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                output: str = "softmax", name: str = "linear_head") -> Callable[[Any], Any]:
    """The Keras form of a standardized linear head: z = ((x - mean) / scale) @ coef.T + intercept.

    Returns a callable mapping features (b, ...) to probabilities (b, n_classes): Flatten, then a
    ``keras.Sequential`` named ``name`` of Rescaling → Rescaling → Dense → output activation.

    Parameters
    ----------
    mean, scale : arrays of shape (n_features,), the StandardScaler's ``mean_`` and ``scale_``.
    coef : array of shape (n_outputs, n_features); intercept : array of shape (n_outputs,).
    output : what turns z into probabilities:

        - ``"softmax"``: softmax(z); one coef row (two classes) is binary logistic, [1 - σ(z), σ(z)];
        - ``"softmax-pm"``: softmax(z); one row scores the classes [-z, z] (ridge's ±1 coding);
        - ``"ovr-sigmoid"``: one-vs-all, σ(z_k) / Σ σ(z_j) (computed as softmax(log σ(z)));
          one row is [1 - σ(z), σ(z)].

    The input is flattened, so (b, h, w, c) features of ``POOLING=none`` work too. Mean and
    scale stay separate layers (subtract, then multiply by 1/scale) rather than being folded into
    the Dense kernel: near-constant features have tiny scales, and folding would cancel large terms.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} is not one of {', '.join(OUTPUTS)}")
    coef = np.atleast_2d(np.asarray(coef, np.float64))
    intercept = np.atleast_1d(np.asarray(intercept, np.float64))
    if len(coef) == 1:
        a, b = _BINARY_COLUMNS[output]
        coef, intercept = np.concatenate([a * coef, b * coef]), np.array([a * intercept[0], b * intercept[0]])
        output = "softmax"  # σ(z) = softmax([0, z])[1] and softmax([-z, z]) are both two-way softmaxes
    n_out, n_features = coef.shape
    dense = keras.layers.Dense(n_out, name="coef")
    layers = [
        keras.Input((n_features,)),
        keras.layers.Rescaling(1.0, offset=-np.asarray(mean, np.float32), name="subtract_mean"),
        keras.layers.Rescaling(1.0 / np.asarray(scale, np.float32), name="divide_by_scale"),
        dense,
    ]
    if output == "ovr-sigmoid":
        layers.append(keras.layers.Activation("log_sigmoid", name="log_sigmoid"))
    layers.append(keras.layers.Activation("softmax", name="probabilities"))
    model = keras.Sequential(layers, name=name)
    dense.set_weights([coef.T.astype(np.float32), intercept.astype(np.float32)])
    return _flattened(model)


def _flattened(head_model: keras.Model) -> Callable[[Any], Any]:
    return lambda features: head_model(keras.layers.Flatten(name="flatten_features")(features))


def register_linear(name: str, params: Callable[[Head], tuple]) -> None:
    """Export head ``name`` with :func:`linear_head`; ``params(head)`` gives its arguments in order."""
    register_exporter(name)(lambda head: linear_head(*params(head), name=f"{name}_head"))


register_linear("logreg", lambda h: (h.mean_, h.scale_, h.coef_, h.intercept_, "softmax"))
register_linear("ridge", lambda h: (h.mean_, h.scale_, h.coef_, h.intercept_, "softmax-pm"))
register_linear("sgd", lambda h: (h.mean_, h.scale_, h.coef_, h.intercept_, "ovr-sigmoid"))
# Platt-calibrated: p_k ∝ σ(-(a_k d_k + b_k)) with d = the SVM's decision values.
register_linear("linear-svm", lambda h: (h.mean_, h.scale_, -h.calib_a_[:, None] * h.coef_,
                                         -(h.calib_a_ * h.intercept_ + h.calib_b_), "ovr-sigmoid"))


@register_exporter("dense")
def _dense(head: Head) -> Callable[[Any], Any]:
    return head.model_


@keras.saving.register_keras_serializable(package="headswap")
class CosineKNNVote(keras.layers.Layer):
    """k-nearest-neighbour vote by cosine similarity against stored, L2-normalized reference rows.

    Input (b, n_features) → output (b, n_classes): the share of each class among the ``k``
    most similar references (``weights="uniform"``) or weighted by 1 / cosine distance
    (``"distance"``; an exact match takes all the weight), as scikit-learn's
    ``KNeighborsClassifier(metric="cosine")`` does. The references (n_refs, n_features) and their
    one-hot labels (n_refs, n_classes) are weights of the layer, so ``model.keras`` holds them.
    Loading a ``.keras`` file with this layer needs ``import heads.export`` first (it registers it).
    """

    def __init__(self, n_refs: int, n_features: int, n_classes: int, k: int, weights: str = "uniform", **kwargs):
        super().__init__(**kwargs)
        self.n_refs, self.n_features, self.n_classes = int(n_refs), int(n_features), int(n_classes)
        self.k, self.weights_mode = int(k), weights
        self.references = self.add_weight(shape=(self.n_refs, self.n_features), initializer="zeros",
                                          trainable=False, name="references")
        self.onehot = self.add_weight(shape=(self.n_refs, self.n_classes), initializer="zeros",
                                      trainable=False, name="onehot")

    def call(self, x):
        ops = keras.ops
        norm = ops.sqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-30))
        similarity = ops.matmul(x / norm, ops.transpose(self.references))
        top, idx = ops.top_k(similarity, self.k)
        votes = ops.take(self.onehot, idx, axis=0)  # (b, k, n_classes)
        if self.weights_mode == "distance":
            dist = ops.maximum(1.0 - top, 0.0)
            exact = ops.cast(ops.equal(dist, 0.0), x.dtype)
            any_exact = ops.max(exact, axis=-1, keepdims=True)
            w = ops.where(any_exact > 0, exact, 1.0 / ops.maximum(dist, 1e-30))
        else:
            w = ops.ones_like(top)
        scores = ops.sum(votes * w[..., None], axis=1)
        return scores / ops.sum(scores, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_classes)

    def get_config(self):
        return {**super().get_config(), "n_refs": self.n_refs, "n_features": self.n_features,
                "n_classes": self.n_classes, "k": self.k, "weights": self.weights_mode}


@register_exporter("knn")
def _knn(head: Head) -> Callable[[Any], Any]:
    refs = np.asarray(head.fit_X_, np.float32).reshape(len(head.fit_X_), -1)
    norms = np.linalg.norm(refs, axis=1, keepdims=True)
    refs = refs / np.where(norms == 0, 1, norms)
    onehot = (np.asarray(head.fit_y_)[:, None] == np.asarray(head.classes_)[None, :]).astype(np.float32)
    layer = CosineKNNVote(len(refs), refs.shape[1], len(head.classes_), head.n_neighbors_, head.weights,
                          name="knn_vote")
    layer.build((None, refs.shape[1]))
    layer.set_weights([refs, onehot])
    return lambda features: layer(keras.layers.Flatten(name="flatten_features")(features))


# -- images → features ----------------------------------------------------------------------
def _tiff_tag(data: tf.Tensor, marker: str, tag: int, long: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """(found, value) of ``tag`` in IFD0 of the TIFF block after the first ``marker`` in an encoded JPEG
    (scalar tf.string): an EXIF (``Exif\\0\\0``) or MPF (``MPF\\0``) block. Little or big endian, within the
    block's first 1 KiB; ``long`` reads a 32-bit value, else 16-bit. ``found`` is False (value 0) when the
    block or the tag is absent or the TIFF header is not valid."""
    window = 1024
    parts = tf.strings.split(tf.reshape(data, [1]), sep=marker, maxsplit=1).flat_values
    tiff = tf.strings.substr(tf.strings.join([parts[-1], tf.constant(b"\x00" * window)]), 0, window)
    b = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int64)
    little = tf.equal(b[0], 0x49)

    def u16(i):
        i = tf.clip_by_value(i, 0, window - 2)
        lo, hi = tf.gather(b, i), tf.gather(b, i + 1)
        return tf.where(little, lo + 256 * hi, 256 * lo + hi)

    def u32(i):
        return tf.where(little, u16(i) + 65536 * u16(i + 2), 65536 * u16(i) + u16(i + 2))

    ifd = u32(tf.constant(4, tf.int64))
    count = tf.minimum(u16(ifd), (window - 2 - ifd) // 12)
    entries = ifd + 2 + 12 * tf.range(tf.maximum(count, 0))
    hits = tf.where(tf.equal(u16(entries), tag))[:, 0]
    read = u32 if long else u16
    value = tf.cond(tf.size(hits) > 0, lambda: read(tf.gather(entries, hits[0]) + 8),
                    lambda: tf.constant(0, tf.int64))
    found = (tf.size(parts) > 1) & tf.equal(u16(tf.constant(2, tf.int64)), 42) & (tf.size(hits) > 0)
    return found, tf.where(found, value, 0)


def _exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """EXIF orientation tag (1..8) of an encoded JPEG (scalar tf.string); 1 when absent or unreadable."""
    found, value = _tiff_tag(data, "Exif\x00\x00", 0x0112)
    return tf.cast(tf.where(found & (value >= 1) & (value <= 8), value, 1), tf.int32)


def _apply_orientation(img: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """What PIL's ``ImageOps.exif_transpose`` does, for orientations 1..8."""
    branches = [
        lambda: img,
        lambda: tf.image.flip_left_right(img),
        lambda: tf.image.rot90(img, 2),
        lambda: tf.image.flip_up_down(img),
        lambda: tf.image.transpose(img),
        lambda: tf.image.rot90(img, 3),
        lambda: tf.image.rot90(tf.image.transpose(img), 2),
        lambda: tf.image.rot90(img, 1),
    ]
    return tf.switch_case(orientation - 1, branches)


_DRAFT_RATIOS = (1, 2, 4, 8)


def _jpeg_draft_index(data: tf.Tensor, size: int) -> tf.Tensor:
    """Index in ``_DRAFT_RATIOS`` of the DCT scale Pillow's ``JpegImageFile.draft("RGB", (size, size))`` picks.

    Pillow takes ``min(width // size, height // size)`` of the stored (not EXIF-rotated) frame and
    the largest of 8, 4, 2, 1 not above it: a JPEG is scaled only when at least twice ``size`` on
    both sides, and never below ``size``. ``load_rgb`` drafts only format "JPEG", not MPO (:func:`_is_mpo`).
    """
    shape = tf.io.extract_jpeg_shape(data)
    scale = tf.minimum(shape[1] // size, shape[0] // size)
    index = tf.reduce_sum(tf.cast(scale >= tf.constant(_DRAFT_RATIOS[1:]), tf.int32))
    return tf.where(_is_mpo(data), 0, index)


def _is_mpo(data: tf.Tensor) -> tf.Tensor:
    """Whether Pillow opens this JPEG as an MPO (format "MPO"), which ``load_rgb`` decodes without ``draft``.

    Pillow does when an APP2 ``MPF\\0`` block's MP index (a TIFF IFD) gives NumberOfImages (tag
    0xB001) above 1, unless an APP1 holds Ultra HDR's `` hdrgm:Version="`` (looked for anywhere here).
    """
    parts = tf.strings.split(tf.reshape(data, [1]), sep="MPF\x00", maxsplit=1).flat_values
    before = tf.strings.substr(parts[0], tf.maximum(tf.strings.length(parts[0]) - 4, 0), 2)
    found, images = _tiff_tag(data, "MPF\x00", 0xB001, long=True)
    ultra_hdr = tf.size(tf.strings.split(tf.reshape(data, [1]), sep=' hdrgm:Version="', maxsplit=1).flat_values) > 1
    return found & tf.equal(before, b"\xff\xe2") & (images > 1) & ~ultra_hdr


def _decode_jpeg_draft(data: tf.Tensor, size: int) -> tf.Tensor:
    """A JPEG (scalar tf.string) → uint8 (h, w, 3), decoded as :func:`extract.decode.load_rgb` does.

    ``load_rgb`` asks for ``draft("RGB", (size, size))``: libjpeg's scaled IDCT at 1/2, 1/4 or 1/8
    (:func:`_jpeg_draft_index`), giving ``ceil(width / ratio)`` × ``ceil(height / ratio)`` pixels.
    ``ratio`` is a static attribute of DecodeJpeg, hence one branch per scale.
    """
    branches = [
        (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method="INTEGER_ACCURATE"))
        for r in _DRAFT_RATIOS
    ]
    return tf.switch_case(_jpeg_draft_index(data, size), branches)


def _declared_pixels(data: tf.Tensor) -> tf.Tensor:
    """Width x height an encoded JPEG, PNG or GIF declares in its header (int64), read before decoding; 0 for
    other formats. Every image's decoded size is checked too (a GIF frame can exceed its declared screen)."""
    b = tf.cast(tf.io.decode_raw(tf.strings.substr(tf.strings.join([data, tf.constant(b"\x00" * 32)]), 0, 32),
                                 tf.uint8), tf.int64)
    be32 = lambda i: ((b[i] * 256 + b[i + 1]) * 256 + b[i + 2]) * 256 + b[i + 3]  # noqa: E731
    png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    gif = tf.equal(tf.strings.substr(data, 0, 3), b"GIF")
    return tf.case([
        (tf.io.is_jpeg(data), lambda: tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64))),
        (png, lambda: be32(16) * be32(20)),
        (gif, lambda: (b[6] + 256 * b[7]) * (b[8] + 256 * b[9])),
    ], default=lambda: tf.constant(0, tf.int64))


def _within_pixel_limit(pixels: tf.Tensor) -> tf.Operation:
    return tf.debugging.assert_less_equal(
        pixels, tf.constant(MAX_PIXELS, tf.int64),
        message=f"too many pixels (width x height, first value) for the limit {MAX_PIXELS:,} (second value) that "
                f"make predict applies too; resize the image before sending it")


def decode_image_bytes(data: tf.Tensor, size: int) -> tf.Tensor:
    """One encoded image (scalar tf.string) → uint8 (size, size, 3), in TensorFlow ops.

    Mirrors :func:`extract.decode.load_array` (Pillow): JPEGs are decoded with the accurate
    integer DCT and the DCT scaling of Pillow's ``draft`` (:func:`_decode_jpeg_draft`) and turned
    by their EXIF orientation; grayscale becomes RGB;
    alpha is composited on white; then an antialiased bilinear resize (Pillow's bilinear filter
    also widens with the downscale factor) in two passes, each rounded to uint8 as in Pillow.
    Pillow's fixed-point filter weights still make a few pixels differ by one grey level
    (measured in the README). Not mirrored: EXIF orientation of non-JPEG files, CMYK JPEGs,
    GIF transparency, 16-bit PNG scaling (may differ by one level).

    An image of more than ``MAX_PIXELS`` pixels fails (InvalidArgumentError "too many pixels"), as in
    ``make predict``: for JPEG and PNG from the header, before anything is decoded (a 140 KB PNG can
    declare 144 million pixels); for other formats once decoded, before the float copies (a GIF's header
    gives its screen size, which its frames can exceed: that check is a first filter only).
    """
    with tf.control_dependencies([_within_pixel_limit(_declared_pixels(data))]):
        is_jpeg = tf.io.is_jpeg(data)
        img = tf.cond(
            is_jpeg,
            lambda: _decode_jpeg_draft(data, size),
            lambda: tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False),
        )
    shape = tf.cast(tf.shape(img), tf.int64)
    with tf.control_dependencies([_within_pixel_limit(shape[0] * shape[1])]):
        img = tf.cond(is_jpeg, lambda: _apply_orientation(img, _exif_orientation(data)), lambda: img)
    img = tf.cast(img, tf.float32)

    def on_white(rgb, alpha):
        return tf.round(rgb * alpha / 255.0 + 255.0 * (1.0 - alpha / 255.0))

    branches = [
        lambda: tf.tile(img[..., :1], [1, 1, 3]),
        lambda: on_white(tf.tile(img[..., :1], [1, 1, 3]), img[..., 1:2]),
        lambda: img[..., :3],
        lambda: on_white(img[..., :3], img[..., 3:4]),
    ]
    rgb = tf.switch_case(tf.shape(img)[-1] - 1, branches)
    rgb.set_shape((None, None, 3))

    def resize(x, shape):  # Pillow's filter is the antialiased triangle; each of its passes rounds to uint8
        return tf.clip_by_value(tf.round(tf.image.resize(x, shape, method="bilinear", antialias=True)), 0, 255)

    wide = resize(rgb, (tf.shape(rgb)[0], size))  # Pillow resizes horizontally first, then vertically
    return tf.cast(resize(wide, (size, size)), tf.uint8)


def decode_images(images: Sequence[str | os.PathLike | bytes], size: int) -> np.ndarray:
    """Files or encoded bytes → uint8 array (n, size, size, 3) for ``model.keras``, via TF ops.

    This is the decoding of the SavedModel's ``serving_default`` signature. For bit-exact
    training-time decoding use ``extract.decode.load_array(path, size)`` (Pillow) instead.
    """
    out = np.zeros((len(images), size, size, 3), np.uint8)
    for i, item in enumerate(images):
        data = item if isinstance(item, bytes) else Path(item).read_bytes()
        out[i] = decode_image_bytes(tf.constant(data), size).numpy()
    return out


def _cache_configs(info: dict[str, Any]) -> list[dict[str, Any]]:
    configs = info.get("cache_configs") or [info["cache_config"]]
    sizes = {c["size"] for c in configs}
    if len(sizes) > 1:
        raise ValueError(f"the run's caches were extracted at different sizes ({sorted(sizes)}); one exported "
                         f"model takes one image size, so export runs on caches of a single SIZE")
    return configs


def _features(image, config: dict[str, Any], index: int):
    """Backbone features of the cache ``config``, rounded through the cache's storage dtype."""
    from extract.pipeline import load_backbone  # noqa: PLC0415

    backbone = load_backbone(config)
    backbone.name = f"backbone_{index}_{backbone.name}"
    feats = backbone(image)
    if config["dtype"] != "float32":
        feats = keras.layers.Identity(dtype=config["dtype"], name=f"round_to_{config['dtype']}_{index}")(feats)
        feats = keras.layers.Identity(dtype="float32", name=f"features_{index}")(feats)
    return feats


@dataclass
class ExportedModel:
    model: keras.Model
    labels: list[str]
    size: int
    head: Head
    info: dict[str, Any] = field(repr=False)


def build_export_model(run: str | os.PathLike) -> ExportedModel:
    """The Keras model of run ``run``: uint8 images (b, size, size, 3) → probabilities (b, n_labels)."""
    run = Path(run)
    info = read_run_info(run)
    head = load_head(run / "head")
    if head.name not in _EXPORTERS:
        raise ValueError(f"head {head.name!r} cannot be exported yet; exportable heads: "
                         f"{', '.join(exportable_heads())}")
    configs = _cache_configs(info)
    size = int(configs[0]["size"])
    image = keras.Input((size, size, 3), dtype="uint8", name="image")
    pixels = keras.layers.Rescaling(1.0, name="to_float")(image)  # uint8 → float32, values unchanged
    parts = [_features(pixels, c, i) for i, c in enumerate(configs)]
    feats = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="joined_features")(
        [keras.layers.Flatten()(p) for p in parts])
    probs = _EXPORTERS[head.name](head)(feats)
    model = keras.Model(image, probs, name=f"headswap_{head.name.replace('-', '_')}")
    labels = [info["class_names"][int(c)] for c in head.classes_]
    return ExportedModel(model, labels, size, head, info)


# -- writing ---------------------------------------------------------------------------------
@dataclass
class ExportResult:
    out_dir: Path
    model: keras.Model = field(repr=False)
    files: dict[str, str]
    checks: dict[str, Any]
    seconds: float


def _write_saved_model(model: keras.Model, labels: list[str], size: int, path: Path) -> None:
    """A SavedModel with signatures ``serving_default`` (encoded bytes) and ``serve_images`` (uint8 pixels).

    Written with ``tf.saved_model.save`` rather than ``model.export``/``ExportArchive``: in Keras
    3.15 those store every weight twice (keras-team/keras#23553), doubling the file and the
    memory of every server that loads it. Tracking the raw ``tf.Variable``s, which the traced
    functions capture, stores each once.
    """
    label_table = tf.constant(labels)

    def outputs(images):
        # An empty batch (a batching server's) gets empty outputs: the folded batch norm cannot take 0 rows.
        probs = tf.cond(tf.shape(images)[0] > 0, lambda: model(images, training=False),
                        lambda: tf.zeros((0, len(labels)), tf.float32))
        return {"probabilities": probs, "label": tf.gather(label_table, tf.argmax(probs, axis=-1))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(image_bytes):
        return outputs(tf.map_fn(lambda b: decode_image_bytes(b, size), image_bytes,
                                 fn_output_signature=tf.TensorSpec((size, size, 3), tf.uint8)))

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="image")])
    def serve_images(image):
        # a loaded signature does not enforce its declared shape: pixels of another SIZE would be read silently
        return outputs(tf.ensure_shape(image, [None, size, size, 3]))

    module = tf.Module()
    module.model_variables = [v.value for v in model.variables]
    module.serve, module.serve_images = serve, serve_images
    if path.exists():
        shutil.rmtree(path)
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve.get_concrete_function(),
                                                       "serve_images": serve_images.get_concrete_function()})


def _open_features(files: list[str]):
    """The run's cache, or its caches joined column-wise as train_head joined them."""
    if len(files) == 1:
        from extract.cache import FeatureCache  # noqa: PLC0415

        return FeatureCache(files[0])
    from .train import FeatureSource  # noqa: PLC0415

    return FeatureSource(files)


def _check_images(info: dict[str, Any], n: int, usable: Callable[[Path, str], bool] = lambda p, rel: True,
                  ) -> tuple[list[Path], np.ndarray, str]:
    """Up to ``n`` cached images that still exist and are ``usable`` (val rows first), and their cached features.

    ``usable(path, rel)`` gets each image's path and its path relative to the image folder (as the cache names it).
    """
    from .report import find_data_root  # noqa: PLC0415

    files = info.get("feature_files") or [info.get("features")]
    missing = [f for f in files if not f or not Path(f).is_file()]
    if missing:
        return [], np.zeros(0), f"cache {missing[0]} is not available"
    root = find_data_root(info.get("data_root"), files)
    if root is None or not root.is_dir():
        return [], np.zeros(0), f"image folder {root} is not available"
    with _open_features(files) as source:
        rel = source.column("path") if hasattr(source, "column") else source.path_column
        order = np.concatenate([source.rows(s, "clean") for s in ("val", "train")])
        chosen = []
        for i in order:
            if len(chosen) == n:
                break
            if (root / rel[i]).is_file() and usable(root / rel[i], str(rel[i])):
                chosen.append(i)
        if not chosen:
            return [], np.zeros(0), f"no cached image is left under {root} that both decoders read"
        chosen = np.sort(chosen)
        return [root / rel[i] for i in chosen], source.features(chosen), ""


def _tflite_outputs(path: Path, images: np.ndarray) -> np.ndarray:
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():  # tf.lite.Interpreter announces its move to ai_edge_litert
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def _previous_export(out_dir: Path, writes: Sequence[str]) -> list[str]:
    """What a headswap export wrote into ``out_dir`` (its ``export.json`` lists it), to remove before writing anew.

    A file this export ``writes`` (names in ``EXPORT_FILES``) that no export wrote (no readable ``export.json``
    lists it) is the user's: refused, not replaced. Any other file stays, e.g. a ``saved_model/`` of the user's
    beside ``FORMATS=keras``; a later export that would write it refuses it then.
    """
    listed: list[str] = []
    manifest = out_dir / "export.json"
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text()).get("files", {})
        except (ValueError, AttributeError):
            files = None
        if isinstance(files, dict):
            listed = [name for name in EXPORT_FILES if name == "export.json" or name in files.values()]
    clash = [name for name in EXPORT_FILES if name in writes and name not in listed
             and ((out_dir / name).exists() or (out_dir / name).is_symlink())]
    if clash:
        why = "its export.json does not list them" if listed else "it has no readable export.json"
        raise ValueError(f"OUT={out_dir} holds {', '.join(clash)} that no headswap export wrote ({why}); this export "
                         f"would overwrite them. Choose another OUT= (a new folder), or remove them first")
    return listed


def _check_warnings(checks: dict[str, Any], files: dict[str, str], reduced_precision: list[str]) -> list[str]:
    """What the export's self-check has to warn about: each difference above ``CHECK_TOLERANCE``, with its likely
    cause (the run's reduced ``PRECISION``, or another TensorFlow/Keras) and what serves the exported ``files``."""
    warnings = []
    if checks["keras_vs_head_max_abs_diff"] > CHECK_TOLERANCE:
        if reduced_precision:  # 8 or 11 significant bits: the rebuilt graph rounds unlike extraction's
            cause = (f"most likely the rounding of the run's PRECISION={','.join(reduced_precision)} "
                     f"backbone: its features differ from the cached ones by several float16 steps where a "
                     f"float32 backbone's differ by one at most; expected, see the README's make export")
        else:
            cause = "another TensorFlow/Keras version? the weights file itself is checked before building"
        warnings.append(f"the exported model differs from the head on cached features by up to "
                        f"{checks['keras_vs_head_max_abs_diff']:.2g} in probability: the rebuilt backbone computes "
                        f"other features than extraction did ({cause})")
    if checks["bytes_path_vs_pillow_path_max_abs_diff"] > CHECK_TOLERANCE:
        # The check runs model.keras on decode_images' pixels: serving_default's decoding, written or not.
        if "saved_model" in files:
            path = "the SavedModel's bytes path (TF decode + resize, signature serving_default)"
            served, fix = "served from encoded bytes", "call the serve_images signature (or model.keras)"
        else:
            path = ("TensorFlow's decode + resize (heads.export.decode_images, the decoding a SavedModel's "
                    "serving_default does; no saved_model/ was written)")
            written = " or ".join(EXPORT_FORMAT_FILES[f] for f in ("keras", "tflite") if f in files)
            served, fix = "on images decoded that way", f"feed those pixels to {written or 'the model'}"
        warnings.append(
            f"{path} moves probabilities by up to {checks['bytes_path_vs_pillow_path_max_abs_diff']:.2g} against the "
            f"Pillow-decoded pixels of the same {checks['images']} images (pixels differ by up to "
            f"{checks['tf_decode_vs_pillow_max_pixel_diff']} grey levels): predictions {served} can differ from "
            f"`make predict`'s (a voting head such as knn can flip on one grey level). Where they must agree, "
            f"decode with extract.decode.load_array and {fix}.")
    return warnings


def _provenance(run: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What a deployment records beside the model: when and with what it was made (a SavedModel or .keras file
    needs a TensorFlow/Keras at least as new to load), the backbone(s) and their weights, and the run's metrics."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        headswap = version("headswap")
    except PackageNotFoundError:
        headswap = None
    metrics_file = run / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    except ValueError:
        metrics = {}
    keep = ("n_train", "n_val", "val_accuracy", "val_top5_accuracy", "val_log_loss", "test_accuracy")
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"headswap": headswap, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "python": sys.version.split()[0]},
        "backbones": [{"name": c["backbone"]["name"], "size": c["size"], "pooling": c["pooling"],
                       "dtype": c["dtype"], "precision": c.get("precision", "float32"), "weights": c["weights"]}
                      for c in _cache_configs(info)],
        "metrics": {k: metrics[k] for k in keep if k in metrics},
    }


def export_run(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    formats: Sequence[str] = FORMATS,
    check: bool = True,
    log: Callable[[str], None] = _log,
) -> ExportResult:
    """Write run ``run`` as ``model.keras``, a SavedModel and TFLite (see the module docstring).

    ``formats`` picks among ``keras``, ``saved_model`` and ``tflite``. A failed TFLite
    conversion is logged and recorded in ``export.json``; the other formats are still written.
    With ``check=True``, up to 8 cached images that still exist are run through the exported
    model(s) and compared with the head on their cached features; ``export.json`` records the
    largest probability differences and warns above 1e-3: model vs head (the rebuilt backbone differs), and
    the SavedModel's bytes path vs the Pillow path (served predictions can then differ from ``make predict``'s).
    """
    from extract.decode import DecodeError, load_array  # noqa: PLC0415

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    start = time.perf_counter()
    run = Path(run)
    out_dir = Path(out).expanduser() if out else run / "export"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT={out_dir} is a file; export writes a folder (labels.json, export.json and the models). "
                         f"Choose a folder, e.g. OUT={out_dir.parent / 'export'}")
    planned = {"labels": "labels.json", **{f: EXPORT_FORMAT_FILES[f] for f in FORMATS if f in formats}}
    stale = _previous_export(out_dir, ["export.json", *planned.values()])
    exp = build_export_model(run)
    model, size = exp.model, exp.size
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = []  # an interrupted export's export.json lists files it never wrote
    for name in stale:  # an earlier export (maybe of another head) must not stay beside this one
        target = out_dir / name
        if not (target.exists() or target.is_symlink()):
            continue
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        removed.append(name)
    if removed:
        log(f"replaced the previous export in {out_dir} ({', '.join(removed)})")
    # Listed before anything is written: an export that stops half-way (an error, a kill) leaves an export.json
    # naming its files, so the next export replaces them instead of refusing them as the user's.
    (out_dir / "export.json").write_text(json.dumps(
        {"files": planned, "incomplete": "this export did not finish; run `make export` again"}, indent=2))
    files: dict[str, str] = {}
    (out_dir / "labels.json").write_text(json.dumps(exp.labels, indent=2))
    files["labels"] = "labels.json"
    if "keras" in formats:
        model.save(out_dir / EXPORT_FORMAT_FILES["keras"])
        files["keras"] = EXPORT_FORMAT_FILES["keras"]
    if "saved_model" in formats:
        _write_saved_model(model, exp.labels, size, out_dir / EXPORT_FORMAT_FILES["saved_model"])
        files["saved_model"] = EXPORT_FORMAT_FILES["saved_model"]
    tflite_error = ""
    reduced_precision = sorted({c.get("precision", "float32") for c in _cache_configs(exp.info)} - {"float32"})
    if "tflite" in formats:
        try:
            model.export(str(out_dir / EXPORT_FORMAT_FILES["tflite"]), format="litert", verbose=False)
            # The converter can write a file the TFLite interpreter cannot run (Select TF ops: a bfloat16 or
            # float16 backbone); loading it here finds that now, not on the device.
            _tflite_outputs(out_dir / EXPORT_FORMAT_FILES["tflite"], np.zeros((1, size, size, 3), np.uint8))
            files["tflite"] = EXPORT_FORMAT_FILES["tflite"]
        except Exception as err:  # noqa: BLE001  (TFLite is a bonus: any converter failure is reported, not fatal)
            (out_dir / EXPORT_FORMAT_FILES["tflite"]).unlink(missing_ok=True)
            tflite_error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            if reduced_precision:
                tflite_error += (f" (the run's PRECISION={','.join(reduced_precision)} backbone needs TensorFlow "
                                 f"ops the TFLite interpreter lacks; model.keras and saved_model serve it)")
            log(f"TFLite conversion failed, skipped: {tflite_error}")

    checks: dict[str, Any] = {}
    if check:
        left_out: list[str] = []
        by_pillow: dict[Path, np.ndarray] = {}  # each chosen image's pixels as each decoder made them
        by_tf: dict[Path, np.ndarray] = {}

        def both_decoders_read(path: Path, rel: str) -> bool:
            """Pillow (extract's decoder) and TensorFlow's (serving_default's): TIFF, ICO or AVIF were cached but
            cannot be served as bytes; a file emptied since extraction cannot be checked. Named by ``rel``, the
            path under the image folder: class folders often hold files of the same name."""
            try:
                by_pillow[path] = load_array(str(path), size)
            except DecodeError as err:
                left_out.append(f"{rel} ({err.reason})")
                return False
            try:
                by_tf[path] = decode_images([path], size)[0]
            except (tf.errors.OpError, ValueError) as err:
                left_out.append(f"{rel} (serving_default cannot decode it: "
                                f"{str(err).strip().splitlines()[0][:160]})")
                return False
            return True

        paths, cached, why = _check_images(exp.info, CHECK_IMAGES, both_decoders_read)
        if left_out:
            checks["left_out"] = left_out
            log(f"the export's check left out {len(left_out)} cached image{'s' if len(left_out) > 1 else ''} it "
                f"could not decode: " + "; ".join(left_out[:5]) + ("; ..." if len(left_out) > 5 else "")
                + ". serving_default decodes JPEG, PNG, GIF, BMP and WebP only: send other formats converted, or "
                  "their pixels to serve_images")
        if why:
            checks["skipped"] = why
            log(f"NOTE: the export's check was skipped ({why}): nothing compared the exported model with the head. "
                f"It runs cached images from the run's data_root (run.json), which `make train-head DATA=<folder>` "
                f"sets")
        else:
            images = np.stack([by_pillow[p] for p in paths])
            probs = np.asarray(model(images, training=False))
            checks["images"] = len(paths)
            checks["keras_vs_head_max_abs_diff"] = float(np.abs(probs - exp.head.predict_proba(cached)).max())
            decoded = np.stack([by_tf[p] for p in paths])
            checks["tf_decode_vs_pillow_max_pixel_diff"] = int(np.abs(decoded.astype(int) - images).max())
            checks["bytes_path_vs_pillow_path_max_abs_diff"] = float(
                np.abs(np.asarray(model(decoded, training=False)) - probs).max())
            if "tflite" in files:
                checks["tflite_vs_keras_max_abs_diff"] = float(
                    np.abs(_tflite_outputs(out_dir / EXPORT_FORMAT_FILES["tflite"], images) - probs).max())
            for warning in _check_warnings(checks, files, reduced_precision):
                log(f"WARNING: {warning}")
            flat_features = np.asarray(cached, np.float32).reshape(len(cached), -1)
            if len(cached) > 1 and not np.ptp(flat_features, axis=0).any():  # every image the same to the head
                checks["identical_features"] = True
                log(f"WARNING: the {len(cached)} cached images the check ran on have identical features"
                    + (" (all zero)" if not flat_features.any() else "") + ": the head gives each the same "
                    f"probabilities, so the check's agreement proves little. train-head warned of such rows; "
                    f"{ZERO_FEATURES_FIX}")
    random_weights = any(c["weights"]["kind"] == "none" for c in _cache_configs(exp.info))
    manifest = {
        "run": str(run.resolve()),
        "head": exp.head.name,
        "labels": exp.labels,
        **_provenance(run, exp.info),
        "files": files,
        "tflite_error": tflite_error or None,
        "keras_input": {"name": "image", "dtype": "uint8", "shape": [None, size, size, 3],
                        "meaning": "RGB pixels, already resized to size x size (extract.decode.load_array "
                                   "or heads.export.decode_images)"},
        "saved_model_signatures": {
            "serving_default": {"inputs": {"image_bytes": "tf.string (batch,): encoded image files"},
                                "outputs": {"probabilities": f"float32 (batch, {len(exp.labels)})",
                                            "label": "tf.string (batch,)"}},
            "serve_images": {"inputs": {"image": f"uint8 (batch, {size}, {size}, 3)"},
                             "outputs": {"probabilities": f"float32 (batch, {len(exp.labels)})",
                                         "label": "tf.string (batch,)"}},
        },
        "checks": checks,
        "note": RANDOM_WEIGHTS_PREDICTIONS_NOTE if random_weights else "",
    }
    (out_dir / "export.json").write_text(json.dumps(manifest, indent=2))
    seconds = time.perf_counter() - start
    log(f"exported {exp.head.name} ({len(exp.labels)} labels, input {size}x{size}) to {out_dir}: "
        + ", ".join(files.values()) + f" in {seconds:.1f} s")
    if checks and "skipped" not in checks:
        log("check on {images} cached images: max |Δp| model vs head {keras_vs_head_max_abs_diff:.2g}, "
            "bytes path vs Pillow path {bytes_path_vs_pillow_path_max_abs_diff:.2g}".format(**checks)
            + (f", TFLite vs Keras {checks['tflite_vs_keras_max_abs_diff']:.2g}"
               if "tflite_vs_keras_max_abs_diff" in checks else ""))
    if manifest["note"]:
        log(f"NOTE: {manifest['note']}")
    return ExportResult(out_dir, model, files, checks, seconds)
