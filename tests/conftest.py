"""Tiny synthetic data sets made in tmp folders; no network, random backbone weights, small sizes."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

SIZE = 71  # Xception's minimum input: the fastest size that still runs the real network
CLASSES = ("circle", "square", "stripes")


def draw(kind: str, rng: np.random.Generator, w: int = 64, h: int = 48) -> Image.Image:
    """A small picture whose class is visible: a disc, a square, or stripes, in random colours."""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = rng.integers(0, 256, 3)
    fg = 255 - bg
    cx, cy, r = w / 2 + rng.integers(-6, 7), h / 2 + rng.integers(-5, 6), min(w, h) / 3
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    elif kind == "square":
        mask = (abs(xx - cx) < r) & (abs(yy - cy) < r)
    else:
        mask = (xx // 4) % 2 == 0
    arr = np.where(mask[..., None], fg, bg).astype(np.uint8)
    return Image.fromarray(arr)


def write_class_folders(root: Path, per_class: int = 8, seed: int = 0, fmt: str = "png") -> Path:
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(kind, rng).save(root / kind / f"{kind}_{i:02d}.{fmt}")
    return root


def write_kaggle(root: Path, per_class: int = 6, seed: int = 1) -> tuple[Path, Path]:
    """Kaggle layout: ``root/train/<id>.jpg`` and ``root/labels.csv`` with ``id,breed``."""
    rng = np.random.default_rng(seed)
    images = root / "train"
    images.mkdir(parents=True)
    rows = ["id,breed"]
    for kind in CLASSES:
        for i in range(per_class):
            image_id = f"{rng.integers(1 << 60):016x}"
            draw(kind, rng).save(images / f"{image_id}.jpg", quality=95)
            rows.append(f"{image_id},{kind}")
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return images, csv


def randomize_batch_norm(model, seed: int = 0) -> int:
    """Give every BatchNormalization layer random statistics, scale and offset (variance kept positive), so a
    comparison would catch swapped arguments: untrained layers (mean 0, variance 1, scale 1, offset 0) would
    not. Returns how many layers it changed."""
    import keras

    rng = np.random.default_rng(seed)
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        for var in layer.weights:
            shape = tuple(var.shape)
            if "variance" in var.path:
                var.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
            elif "gamma" in var.path:
                var.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            else:  # beta, moving_mean
                var.assign(rng.normal(0.0, 0.5, shape).astype("float32"))
    return len(layers)


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("folders") / "shapes")


@pytest.fixture(scope="session")
def folder_cache(folder_data, tmp_path_factory) -> Path:
    """A complete float32 cache of ``folder_data`` (random weights, SIZE px)."""
    from extract import extract_features

    out = tmp_path_factory.mktemp("cache") / "shapes.h5"
    result = extract_features(folder_data, out=out, size=SIZE, weights="none", dtype="float32",
                              batch_size=8, progress=False, log=lambda m: None)
    return result.path


def heads_cli(*args: str):
    """``python -m heads ARGS`` run in this process: its exit code, stdout and stderr as a CompletedProcess.

    A fresh interpreter per call cost seconds of imports (TensorFlow for predict); the real subprocess path
    is covered by test_end_to_end and test_assert_accuracy_exit_codes.
    """
    import contextlib
    import io
    import subprocess

    from heads.__main__ import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return subprocess.CompletedProcess(["python", "-m", "heads", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True, scope="session")
def reuse_random_backbones():
    """Within one test process, ``extract.pipeline.load_backbone`` (extract, predict, export) builds each
    ``WEIGHTS=none`` backbone once and hands the same model, and its traced function, to later calls.

    Building Xception costs ~1.1 s here (its 21M weights' initialisers) and tracing plus the first call ~0.6 s,
    about a hundred times in the suite. ``WEIGHTS=none`` is seeded, so a second build gives the same weights:
    test_extract's ``test_a_random_backbone_rebuilds_with_the_same_weights`` builds twice for real, tests marked
    ``rebuild`` (predict against the cache) build every time, and so does every test's subprocess. A hit still
    reseeds and restores the random state a real build leaves behind. Weights files, ImageNet and distribution
    strategies always build, and a test that patches ``extract.backbones.build_backbone`` gets its patch. Tests
    that change a model's weights build their own with ``extract.backbones.build_backbone``, left alone here.
    """
    import random
    from collections import OrderedDict

    from extract import backbones, pipeline  # neither imports TensorFlow until a backbone is built

    real_build, real_trace = backbones.build_backbone, backbones.backbone_function
    built: OrderedDict = OrderedDict()  # key → (model, its name, the random state a real build left)
    traced: dict = {}  # (id(model), dtype) → BackboneFunction, for models held in ``built`` only

    def random_state():
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator

        gen = global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)
        return random.getstate(), np.random.get_state(), None if gen is None else gen.state.numpy()

    def build(spec, size, pooling, weights, seed=0, precision="float32"):
        import tensorflow as tf

        if (backbones.build_backbone is not real_build or weights != "none" or tf.distribute.has_strategy()
                or _REBUILD[0]):
            return backbones.build_backbone(spec, size, pooling, weights, seed=seed, precision=precision)
        key = (spec.name, size, pooling, seed, precision)
        if key not in built:
            model = real_build(spec, size, pooling, weights, seed=seed, precision=precision)
            built[key] = (model, model.name, random_state())
            while len(built) > 6:  # a few MB to ~100 MB each: keep the recent ones
                old = id(built.popitem(last=False)[1][0])
                for stale in [k for k in traced if k[0] == old]:  # whatever dtypes it was traced for
                    del traced[stale]
            return model
        import keras
        from keras.src.random import seed_generator

        built.move_to_end(key)
        model, name, (py_state, np_state, keras_state) = built[key]
        keras.utils.set_random_seed(seed)
        if keras_state is not None:
            seed_generator.global_seed_generator().state.assign(keras_state)
        random.setstate(py_state), np.random.set_state(np_state)
        model.name = name  # export renames the backbone it wraps
        return model

    def trace(model, dtype="float32"):
        if not any(model is entry[0] for entry in built.values()):
            return real_trace(model, dtype)
        key = (id(model), str(getattr(dtype, "name", dtype)))
        if key not in traced:
            traced[key] = real_trace(model, dtype)
        return traced[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "build_backbone", build)
        patch.setattr(pipeline, "backbone_function", trace)
        yield


_REBUILD = [False]  # set for tests marked ``rebuild``


@pytest.fixture(autouse=True)
def rebuild_marker(request):
    """``@pytest.mark.rebuild``: this test's backbones are built for real, never reused (see above)."""
    _REBUILD[0] = request.node.get_closest_marker("rebuild") is not None
    yield
    _REBUILD[0] = False
