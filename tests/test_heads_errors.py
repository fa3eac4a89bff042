"""User errors of train-head, compare-heads and predict: one clear line that says what to do, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import heads_cli
from test_heads_train import blobs, write_cache

from extract.cache import CacheError
from heads import load_head, predict, train_head
from heads.base import RareClassError

QUIET = {"log": lambda m: None}
REPO = Path(__file__).resolve().parents[1]
RARE_CLASSES = ["ant", "bee", "cat", "eel"]


_cli = heads_cli


def _assert_one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    for word in words:
        assert word in line, line
    return line


@pytest.fixture(scope="module")
def rare_cache(tmp_path_factory) -> Path:
    """Four classes; the last one, 'eel', has a single training row (and none in val)."""
    X, y, split = blobs(n_per_class=10, d=8)
    X = np.concatenate([X, np.full((1, 8), 3.0, np.float32)])
    y = np.concatenate([y, [3]])
    return write_cache(tmp_path_factory.mktemp("rare") / "rare.h5", X, y, [*split, "train"],
                       class_names=RARE_CLASSES)


@pytest.fixture(scope="module")
def logreg_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    cache = write_cache(folder / "sep.h5", *blobs(n_per_class=10))
    return train_head("logreg", cache, folder / "runs" / "sep" / "logreg", plots=False, **QUIET).run_dir


def test_predict_refuses_an_empty_image_folder(logreg_run, tmp_path):
    empty = tmp_path / "new_photos"
    empty.mkdir()
    (empty / ".hidden").write_text("not an image")
    with pytest.raises(ValueError, match=r"IMAGES=.*new_photos has no images"):
        predict(logreg_run, empty, **QUIET)
    _assert_one_error_line(_cli("predict", "--run", str(logreg_run), "--images", str(empty)),
                           f"IMAGES={empty} has no images")


def test_predict_says_a_folder_is_not_a_run(logreg_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here: the hint says how to make one
    missing = tmp_path / "nonexist"
    with pytest.raises(FileNotFoundError, match=r"RUN=.*nonexist is not a run folder \(no run.json\).*make train-head"):
        predict(missing, tmp_path, **QUIET)
    # runs/<cache> holds one run per head: the message lists them
    with pytest.raises(FileNotFoundError, match=rf"it holds the runs logreg, e.g. RUN={logreg_run}"):
        predict(logreg_run.parent, tmp_path, **QUIET)
    # The run's head/ folder, as heads.load_head takes it, and the other way round
    with pytest.raises(FileNotFoundError, match=rf"it is the head/ folder of the run {logreg_run}: pass "
                                                rf"RUN={logreg_run}$"):
        predict(logreg_run / "head", tmp_path, **QUIET)
    with pytest.raises(FileNotFoundError, match=rf"it is a run folder: pass {logreg_run / 'head'}$"):
        load_head(logreg_run)
    line = _assert_one_error_line(_cli("predict", "--run", str(missing), "--images", str(tmp_path)),
                                  f"RUN={missing} is not a run folder", "runs/<cache>/<head>/")
    assert "Errno" not in line
    # A typo where runs/ exists: the hint lists the runs in it, to copy one
    monkeypatch.chdir(logreg_run.parents[2])
    with pytest.raises(FileNotFoundError, match=r"RUN=runs/typo/logreg is not a run folder \(no run.json\); "
                                                r"the runs under runs/, newest first: runs/sep/logreg$"):
        predict(Path("runs/typo/logreg"), tmp_path, **QUIET)


def test_features_that_is_a_directory_lists_its_caches(tmp_path):
    folder = tmp_path / "caches"
    folder.mkdir()
    with pytest.raises(CacheError, match=r"FEATURES=.*caches is a directory and holds no .h5 cache"):
        train_head("logreg", folder, tmp_path / "run", **QUIET)
    for name in ("b.h5", "a.h5"):
        write_cache(folder / name, *blobs(n_per_class=5))
    with pytest.raises(CacheError, match=rf"is a directory; pass one .h5 cache file in it, "
                                         rf"e.g. FEATURES={folder / 'a.h5'} \(it holds a.h5, b.h5\)"):
        train_head("logreg", folder, tmp_path / "run", **QUIET)
    _assert_one_error_line(_cli("train", "--features", str(folder), "--run", str(tmp_path / "run")),
                           "is a directory", "a.h5, b.h5")


def test_a_features_typo_lists_the_caches_beside_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no features_cache/ here
    folder = tmp_path / "caches"
    folder.mkdir()
    with pytest.raises(CacheError, match=r"FEATURES=.*dgos.h5 does not exist. Run `make extract DATA=...` first.$"):
        train_head("logreg", folder / "dgos.h5", tmp_path / "run", **QUIET)
    for age, name in enumerate(("dogs.h5", "cats.h5")):
        write_cache(folder / name, *blobs(n_per_class=5))
        os.utime(folder / name, (1e9 - age, 1e9 - age))  # dogs.h5 is the newer
    message = f"FEATURES={folder / 'dgos.h5'} does not exist. The caches in {folder}/, newest first: " \
              f"{folder / 'dogs.h5'}, {folder / 'cats.h5'}."
    with pytest.raises(CacheError) as err:
        train_head("logreg", folder / "dgos.h5", tmp_path / "run", **QUIET)
    assert str(err.value) == message
    _assert_one_error_line(_cli("train", "--features", str(folder / "dgos.h5"), "--run", str(tmp_path / "run")),
                           message)


def test_heads_name_the_class_that_is_too_rare(rare_cache, tmp_path):
    with pytest.raises(RareClassError, match="linear-svm calibration needs at least 2 training images of every "
                                             "class for cross-validation; class 'eel' has 1: add training images"):
        train_head("linear-svm", rare_cache, tmp_path / "svm", **QUIET)
    with pytest.raises(RareClassError, match="C=auto .* class 'eel' has 1: .*set C to a number"):
        train_head("logreg", rare_cache, tmp_path / "auto", head_args={"C": "auto"}, **QUIET)
    assert not (tmp_path / "svm").exists()
    # a single train-head still fails: exit 2 with the named class
    _assert_one_error_line(_cli("train", "--head", "linear-svm", "--features", str(rare_cache),
                                "--run", str(tmp_path / "cli")), "class 'eel' has 1")


def test_a_class_without_validation_images_is_named(rare_cache, tmp_path):
    said: list[str] = []
    train_head("ridge", rare_cache, tmp_path / "r", plots=False, log=said.append)
    assert ("NOTE: 1 class has no validation image: eel; val accuracy says nothing about it (a larger VAL= or "
            "another SEED= changes the split)") in said


def test_compare_heads_skips_a_head_that_cannot_fit_the_data(rare_cache, tmp_path):
    from heads.compare import compare_heads

    logs: list[str] = []
    table = compare_heads(rare_cache, ["knn", "linear-svm", "logreg", "ridge"], tmp_path / "cmp", log=logs.append)
    assert list(table["head"]) == ["knn", "linear-svm", "logreg", "ridge"]
    rows = table.set_index("head")
    assert np.isnan(rows.loc["linear-svm", "val_accuracy"])
    assert rows.loc["linear-svm", "note"].startswith("skipped: linear-svm calibration needs")
    assert "class 'eel' has 1" in rows.loc["linear-svm", "note"]
    for name in ("knn", "logreg", "ridge"):  # the heads after the skipped one are trained too
        assert rows.loc[name, "val_accuracy"] >= 0.9 and rows.loc[name, "note"] == ""
        assert json.loads((tmp_path / "cmp" / name / "metrics.json").read_text())["head"] == name
    assert not (tmp_path / "cmp" / "linear-svm").exists()
    assert any(m.startswith("skipping linear-svm: ") and "'eel'" in m for m in logs)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    (svm_row,) = [line for line in md.splitlines() if line.startswith("| linear-svm")]
    assert "n/a" in svm_row and "skipped: " in svm_row and "class 'eel' has 1" in svm_row
    assert (tmp_path / "cmp" / "compare.png").is_file()
    # As a gate, a skipped head fails like an n/a accuracy: it was not shown to reach the threshold.
    from heads.train import AccuracyBelowThreshold

    with pytest.raises(AccuracyBelowThreshold, match=r"^linear-svm skipped: .*'eel'"):
        compare_heads(rare_cache, ["knn", "linear-svm"], tmp_path / "gate", assert_accuracy=0.0, **QUIET)

    # nothing left to compare: the error itself, as train-head gives it
    with pytest.raises(RareClassError, match="class 'eel' has 1"):
        compare_heads(rare_cache, ["linear-svm"], tmp_path / "none", **QUIET)
    cli = _cli("compare", "--features", str(rare_cache), "--heads", "linear-svm,knn", "--out", str(tmp_path / "c"))
    assert cli.returncode == 0, cli.stderr
    assert "skipping linear-svm: " in cli.stderr and (tmp_path / "c" / "compare.md").is_file()
