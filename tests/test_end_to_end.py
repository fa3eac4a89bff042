"""extract → heads → predict, through the Python API and through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SIZE, write_class_folders, write_kaggle

from extract import FeatureCache, extract_features
from heads import load_head, predict, train_head
from heads.train import full_proba

QUIET = {"log": lambda m: None}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    images, csv = write_kaggle(root / "dogs", per_class=8)
    test = root / "dogs" / "test"
    test.mkdir()
    for p in sorted(images.iterdir())[:4]:
        shutil.copy(p, test / p.name)
    cache = extract_features(images, csv, test, out=root / "dogs.h5", size=SIZE, weights="none",
                             dtype="float32", progress=False, **QUIET).path
    return images, csv, test, cache


@pytest.mark.rebuild  # predict builds the backbone again: its features must be the cached ones
@pytest.mark.parametrize("head_name,args", [("logreg", {}), ("dense", {"epochs": 20})])
def test_heads_train_and_predict_matches_the_cached_features(kaggle, tmp_path, head_name, args, monkeypatch):
    images, csv, test, cache = kaggle
    result = train_head(head_name, cache, tmp_path / "run", head_args=args, **QUIET)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("head", "features", "n_train", "n_val", "val_accuracy", "val_top5_accuracy", "val_log_loss",
                "test_accuracy", "fit_seconds"):
        assert key in metrics
    assert metrics["n_train"] + metrics["n_val"] == 24
    assert metrics["test_accuracy"] is None  # Kaggle's test/ is unlabelled
    assert "not meaningful" in metrics["note"]
    assert (tmp_path / "run" / "confusion_matrix.png").stat().st_size > 1000
    assert (tmp_path / "run" / "training_curves.png").exists() == (head_name == "dense")

    seen = []  # the head classifies each batch as the backbone gives it: predict holds one batch's features
    monkeypatch.setattr(sys.modules["heads.predict"], "full_proba",
                        lambda head, X, n: seen.append(len(X)) or full_proba(head, X, n))
    table = predict(tmp_path / "run", images, tmp_path / "pred.csv", batch_size=5, **QUIET)
    assert seen == [5, 5, 5, 5, 4]
    with FeatureCache(cache) as c:
        order = {p: i for i, p in enumerate(c.column("path"))}
        X = c.features()
    rows = [order[Path(p).name] for p in table["path"]]
    expected = result.head.predict_proba(X[rows])
    names = np.array(json.loads((tmp_path / "run" / "run.json").read_text())["class_names"])
    assert list(table["label"]) == list(names[expected.argmax(1)])
    np.testing.assert_allclose(table["probability"], expected.max(1), atol=1e-4)
    assert pd.read_csv(tmp_path / "pred.csv").shape == (24, 5)

    reloaded = load_head(tmp_path / "run" / "head")
    np.testing.assert_allclose(reloaded.predict_proba(X[rows[:5]]), expected[:5], atol=1e-6)


def test_kaggle_submission_format(kaggle, tmp_path, monkeypatch):
    images, csv, test, cache = kaggle
    train_head("logreg", cache, tmp_path / "run", **QUIET)
    predict(tmp_path / "run", test, tmp_path / "sub.csv", submission=True, **QUIET)
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["id", "circle", "square", "stripes"]
    assert sorted(sub["id"]) == sorted(p.stem for p in test.iterdir())
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-6)

    # Without IMAGES=: the test rows cached by TEST= give the same submission, with no image opened and no
    # backbone built (the features above were computed again from the files; same dtype rounding).
    import PIL.Image

    from extract import pipeline

    def untouchable(*args, **kwargs):
        raise AssertionError("opened an image or built a backbone")

    monkeypatch.setattr(PIL.Image, "open", untouchable)
    monkeypatch.setattr(pipeline, "load_backbone", untouchable)
    seen = []  # read and classified in blocks: memory stays flat however many test rows the cache holds
    predict_module = sys.modules["heads.predict"]
    monkeypatch.setattr(predict_module, "TEST_BLOCK_ROWS", 3)
    monkeypatch.setattr(predict_module, "full_proba", lambda head, X, n: seen.append(len(X)) or full_proba(head, X, n))
    cached = predict(tmp_path / "run", None, tmp_path / "cached.csv", submission=True, **QUIET)
    assert len(cached) == len(sub) == 4 and not cached["error"].any() and seen == [3, 1]
    again = pd.read_csv(tmp_path / "cached.csv").set_index("id").loc[sub["id"]]
    np.testing.assert_allclose(again.to_numpy(), sub.set_index("id").to_numpy(), atol=1e-6)


def test_a_second_head_never_opens_an_image_nor_builds_a_backbone(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "d", per_class=5)
    cache = extract_features(data, out=tmp_path / "c.h5", size=SIZE, weights="none", progress=False, **QUIET).path
    train_head("logreg", cache, tmp_path / "r1", **QUIET)
    shutil.move(data, tmp_path / "moved_away")

    import PIL.Image

    from extract import backbones

    def forbidden(*a, **kw):
        raise AssertionError("stage 2 must not touch images or the backbone")

    monkeypatch.setattr(PIL.Image, "open", forbidden)
    monkeypatch.setattr(backbones, "build_backbone", forbidden)
    second = train_head("dense", cache, tmp_path / "r2", head_args={"epochs": 3}, **QUIET)
    assert second.metrics["n_train"] + second.metrics["n_val"] == 15


def test_incomplete_cache_is_refused_by_heads(tmp_path, folder_cache):
    import h5py

    from extract import CacheError

    broken = tmp_path / "partial.h5"
    shutil.copy(folder_cache, broken)
    with h5py.File(broken, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(CacheError, match="incomplete.*Rerun the same `make extract`"):
        train_head("logreg", broken, tmp_path / "run", **QUIET)


def _run(args, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(args, capture_output=True, text=True, cwd=kw.pop("cwd", REPO), env=env, timeout=300, **kw)


def test_cli_class_folders_with_test_split(tmp_path):
    """The commands `make extract/train-head/predict` run, on the train/ + test/ layout."""
    write_class_folders(tmp_path / "d" / "train", per_class=6)
    write_class_folders(tmp_path / "d" / "test", per_class=2, seed=3)
    py = sys.executable
    out = _run([py, "-m", "extract", "--data", str(tmp_path / "d"), "--size", str(SIZE), "--weights", "none",
                "--cache-dir", str(tmp_path / "fc"), "--no-progress"])
    assert out.returncode == 0, out.stderr
    assert "0 of 24 images skipped" in out.stderr and "random weights" in out.stderr
    cache = next((tmp_path / "fc").glob("d-xception-71-avg-*.h5"))
    run = tmp_path / "run"
    out = _run([py, "-m", "heads", "train", "--head", "logreg", "--cache-dir", str(tmp_path / "fc"), "--run", str(run)])
    assert out.returncode == 0, out.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["features"] == str(cache) and metrics["test_accuracy"] is not None
    assert "not meaningful" in out.stderr
    out = _run([py, "-m", "heads", "predict", "--run", str(run), "--images", str(tmp_path / "d" / "test" / "circle"),
                "--out", str(tmp_path / "p.csv")])
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 2


def test_cli_errors_are_one_clear_line(tmp_path):
    out = _run([sys.executable, "-m", "extract", "--data", str(tmp_path / "nowhere"), "--weights", "none"])
    assert out.returncode == 2
    expected = f"error: DATA={tmp_path / 'nowhere'} does not exist. Point DATA= at your image folder."
    assert out.stderr.strip().splitlines()[-1] == expected
    out = _run([sys.executable, "-m", "heads", "train", "--cache-dir", str(tmp_path)])
    assert out.returncode == 2 and "no complete feature cache" in out.stderr


def test_make_help_lists_targets():
    out = _run(["make", "help"])
    for target in ("extract", "train-head", "predict", "demo", "test", "setup"):
        assert f"make {target}" in out.stdout


def test_predict_from_the_cached_test_rows_keeps_skipped_test_images(tmp_path):
    """A Kaggle test image the extraction skipped still gets its (uniform) submission row; a notes.txt does not."""
    images, csv = write_kaggle(tmp_path / "dogs", per_class=3)
    test = tmp_path / "dogs" / "test"
    test.mkdir()
    for p in sorted(images.iterdir())[:2]:
        shutil.copy(p, test / p.name)
    (test / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (test / "notes.txt").write_text("to do")
    cache = extract_features(images, csv, test, out=tmp_path / "d.h5", size=SIZE, weights="none", progress=False,
                             **QUIET).path
    train_head("ridge", cache, tmp_path / "run", plots=False, **QUIET)
    table = predict(tmp_path / "run", out=tmp_path / "sub.csv", submission=True, **QUIET)
    assert sorted(Path(p).name for p in table["path"]) == sorted(p.name for p in test.iterdir())
    sub = pd.read_csv(tmp_path / "sub.csv").set_index("id")
    assert sorted(sub.index) == sorted(["broken", *(p.stem for p in sorted(images.iterdir())[:2])])
    np.testing.assert_allclose(sub.loc["broken"], 1 / 3)

    no_test = extract_features(images, csv, out=tmp_path / "n.h5", size=SIZE, weights="none", progress=False,
                               **QUIET).path
    train_head("ridge", no_test, tmp_path / "run2", plots=False, **QUIET)
    with pytest.raises(ValueError, match=r"has no test rows; extract them with `make extract … TEST="):
        predict(tmp_path / "run2", **QUIET)


def test_predict_with_random_weights_warns_about_predictions_not_accuracy(kaggle, tmp_path):
    """predict computes no accuracy: its WEIGHTS=none warning speaks of the predictions, as export's note does."""
    images, csv, test, cache = kaggle
    train_head("logreg", cache, tmp_path / "run", plots=False, **QUIET)
    said = []
    predict(tmp_path / "run", test, log=said.append)
    warning = next(m for m in said if "WEIGHTS=none" in m)
    assert warning.startswith("WARNING: ") and "predictions are not meaningful" in warning
    assert "accuracy" not in warning
