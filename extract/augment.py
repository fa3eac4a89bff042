"""Augmented views as Keras 3 preprocessing layers inside the tf.data input pipeline.

``AUGMENT=none|tutorial|epiuse`` or a custom ``'rotation=0.1,zoom=0.2,flip=horizontal'``.
Each view's randomness comes from a stateless seed derived from (SEED, image path, round), so a
view's pixels do not depend on batch size, order, resumes or which other images are extracted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

# Recorded in an augmented cache's config: views drawn another way must never mix in one cache. 2: each random
# value a layer draws has its own seed (1 drew a layer's values from one seed: diagonal shifts, aspect-keeping zoom).
SAMPLER = "keras-layers-2"
FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")
FILLS = ("nearest", "reflect", "wrap", "constant")
# key: (allowed range as text, check)
_FRACTION_KEYS = {
    "rotation": "fraction of a full turn, 0 to 1 (0.15 = up to ±54°)",
    "width_shift": "fraction of the width, 0 to 1",
    "height_shift": "fraction of the height, 0 to 1",
    "zoom": "fraction, 0 to below 1 (0.2 = 80% to 120%)",
    "brightness": "fraction of the 0-255 range, 0 to 1",
    "contrast": "fraction, 0 to 1",
    "shear": "fraction, 0 to 1",
}
ALIASES = {"shift": ("width_shift", "height_shift"), "translation": ("width_shift", "height_shift")}

PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # session-4 tutorial's ImageDataGenerator(width_shift_range=0.2, height_shift_range=0.2, zoom_range=0.2)
    "tutorial": {"width_shift": 0.2, "height_shift": 0.2, "zoom": 0.2, "fill": "nearest"},
    # EPI-USE dog-breed model: RandomRotation(0.15), RandomTranslation(0.1, 0.1), RandomFlip, RandomContrast(0.1)
    "epiuse": {"rotation": 0.15, "width_shift": 0.1, "height_shift": 0.1, "flip": "horizontal", "contrast": 0.1,
               "fill": "nearest"},
}


@dataclass(frozen=True)
class AugmentSpec:
    preset: str
    params: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs

    @property
    def enabled(self) -> bool:
        return any(k != "fill" and v not in (0, 0.0, "none") for k, v in self.params)

    def why_disabled(self, text: str | None) -> str:
        """Why ``AUGMENT=text`` (which parsed to this spec) changes no pixel, for a refusal."""
        return (f"AUGMENT={text or 'none'} changes no pixel" + (" (every value is 0 or none)" if self.params else "")
                + ": set AUGMENT=tutorial, epiuse or key=value pairs with a value above 0")

    def as_config(self) -> dict[str, Any]:
        return {"preset": self.preset, "params": dict(self.params)}


def parse_augment(text: str | None) -> AugmentSpec:
    """``'epiuse'`` or ``'rotation=0.1,zoom=0.2,flip=horizontal'`` → a validated :class:`AugmentSpec`."""
    text = (text or "none").strip()
    if text in PRESETS:
        return AugmentSpec(text, tuple(sorted(PRESETS[text].items())))
    if "=" not in text:
        raise ValueError(f"AUGMENT={text!r} is not a preset ({', '.join(PRESETS)}) nor key=value pairs "
                         f"like 'rotation=0.1,zoom=0.2,flip=horizontal'")
    params: dict[str, Any] = {"fill": "nearest"}
    given: dict[str, str] = {}  # key: the pair that set it
    for token in (t.strip() for t in text.split(",")):
        if not token:  # 'zoom=0.2,' or ',,': an empty pair
            continue
        key, eq, value = (t.strip() for t in token.partition("="))
        if not eq and key in PRESETS:
            spelled = ",".join(f"{k}={v}" for k, v in PRESETS[key].items())
            raise ValueError(f"AUGMENT={text!r}: a preset does not combine with key=value pairs; write its values "
                             f"out instead ({key} is {spelled!r}) and add yours")
        if not eq or "=" in value or ";" in value:
            raise ValueError(f"AUGMENT={text!r}: {token!r} is not one key=value pair; separate the pairs with "
                             f"commas, e.g. 'rotation=0.1,zoom=0.2'")
        for k in ALIASES.get(key, (key,)):
            if k in given:
                raise ValueError(f"AUGMENT={text!r} sets {k} twice ({given[k]!r} and {token!r}); give it once")
            given[k] = token
            params[k] = _check(k, value)
    return AugmentSpec("custom", tuple(sorted(params.items())))


def _check(key: str, value: str) -> Any:
    allowed = ", ".join([*_FRACTION_KEYS, *ALIASES, "flip", "fill"])
    if key == "flip":
        if value not in FLIPS:
            raise ValueError(f"AUGMENT flip={value!r} is not one of {', '.join(FLIPS)}")
        return value
    if key == "fill":
        if value not in FILLS:
            raise ValueError(f"AUGMENT fill={value!r} is not one of {', '.join(FILLS)}")
        return value
    if key not in _FRACTION_KEYS:
        raise ValueError(f"AUGMENT has no key {key!r}; keys are: {allowed}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"AUGMENT {key}={value!r} is not a number; {key} is a {_FRACTION_KEYS[key]}") from None
    if not 0.0 <= number <= 1.0 or (key == "zoom" and number == 1.0):  # zoom=1: a view of 0% to 200% of the image
        raise ValueError(f"AUGMENT {key}={number} is out of range; {key} is a {_FRACTION_KEYS[key]}")
    return number


def view_seed(seed: int, relpath: str, round_: int) -> np.ndarray:
    """Two int32 words of a stateless seed for one view."""
    digest = hashlib.sha256(f"{seed}\0{relpath}\0{round_}".encode("utf-8", "surrogateescape")).digest()
    return np.frombuffer(digest[:8], dtype="<i4").copy()


def build_layers(spec: AugmentSpec) -> list:
    """The Keras 3 preprocessing layers for ``spec``, in application order."""
    import keras  # noqa: PLC0415

    p = dict(spec.params)
    fill = p.get("fill", "nearest")
    layers = []
    if p.get("flip", "none") != "none":
        layers.append(keras.layers.RandomFlip(p["flip"]))
    if p.get("rotation"):
        layers.append(keras.layers.RandomRotation(p["rotation"], fill_mode=fill))
    if p.get("width_shift") or p.get("height_shift"):
        layers.append(keras.layers.RandomTranslation(p.get("height_shift", 0.0), p.get("width_shift", 0.0),
                                                     fill_mode=fill))
    if p.get("zoom"):
        layers.append(keras.layers.RandomZoom(p["zoom"], p["zoom"], fill_mode=fill))
    if p.get("shear"):
        layers.append(keras.layers.RandomShear(p["shear"], p["shear"], fill_mode=fill))
    if p.get("brightness"):
        layers.append(keras.layers.RandomBrightness(p["brightness"], value_range=(0, 255)))
    if p.get("contrast"):
        layers.append(keras.layers.RandomContrast(p["contrast"], value_range=(0, 255)))
    return layers


def make_augmenter(spec: AugmentSpec):
    """A graph function ``(image float32 (h, w, 3), seed int32 (2,)) → augmented image``, for tf.data."""
    import tensorflow as tf  # noqa: PLC0415
    from keras.random import SeedGenerator  # noqa: PLC0415

    class _ViewSeed(SeedGenerator):
        # Keras layers call `seed.next()` once per random value they draw (RandomTranslation: the height shift,
        # then the width shift; RandomZoom and RandomShear likewise). Each draw gets its own stateless seed, folded
        # from the view's seed and the draw's number, so a view depends only on (SEED, path, round), never on
        # batch composition or call order, and a layer's draws are independent (one seed for all of them made
        # every shift diagonal and every zoom keep the aspect).
        def __init__(self, value):  # noqa: D107  (no state variable: the draws are counted while tracing)
            self._value = value
            self._draws = 0

        def next(self, ordered=True):
            self._draws += 1
            return tf.random.experimental.stateless_fold_in(self._value, self._draws)

    layers = build_layers(spec)

    def augment(image, seed):
        x = image[None]
        for i, layer in enumerate(layers):
            view_seed = _ViewSeed(seed + tf.constant([0, 1000003 * (i + 1)], tf.int32))
            transformation = layer.get_random_transformation(x, training=True, seed=view_seed)
            x = layer.transform_images(x, transformation, training=True)
        return tf.clip_by_value(x[0], 0.0, 255.0)

    return augment
