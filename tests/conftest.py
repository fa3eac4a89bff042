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
