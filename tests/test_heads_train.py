"""train_head beyond one in-memory cache: streaming sgd, joined caches, ASSERT_ACCURACY, compare-heads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, heads_cli

from extract import FeatureCache, extract_features
from extract.cache import Batch, CacheError, HDF5Writer
from heads import create_head, load_head, predict, train_head
from heads import report
from heads.train import RANDOM_WEIGHTS_NOTE, AccuracyBelowThreshold, FeatureSource, load_cache

QUIET = {"log": lambda m: None}
REPO = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c"]


def write_cache(path: Path, X: np.ndarray, y: np.ndarray, split: list[str], *, paths: list[str] | None = None,
                rounds: np.ndarray | None = None, class_names: list[str] = CLASSES, name: str = "synthetic") -> Path:
    """A complete cache of given feature rows, written through the real writer (no backbone)."""
    config = {"backbone": {"name": name}, "size": 0, "pooling": "avg", "weights": {"kind": "none"},
              "dtype": "float32", "precision": "float32", "seed": 0, "val": 0.2}
    writer = HDF5Writer(path, config=config, class_names=class_names, fingerprint="synthetic",
                        feature_shape=X.shape[1:], dtype="float32")
    paths = paths or [f"{class_names[k]}/{i:04d}.png" for i, k in enumerate(y)]
    writer.write(Batch(X.astype(np.float32), np.asarray(y), paths, list(split),
                       np.zeros(len(y), np.int16) if rounds is None else rounds))
    writer.close(True)
    return path


def blobs(n_per_class: int = 100, d: int = 16, seed: int = 0, separable: bool = True):
    """Class-sorted rows (as a folder-per-class cache is) with every 5th row of a class in val."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    X = rng.normal(size=(len(y), d))
    if separable:
        X += 3 * np.eye(d)[y]
    split = np.where(np.arange(len(y)) % 5 == 0, "val", "train")
    return X.astype(np.float32), y, list(split)


@pytest.fixture(scope="module")
def separable_cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("sep") / "sep.h5", *blobs())


@pytest.fixture(scope="module")
def noise_cache(tmp_path_factory) -> Path:
    return write_cache(tmp_path_factory.mktemp("noise") / "noise.h5", *blobs(separable=False, seed=1))


def test_feature_cache_rows_and_column_refuse_names_they_do_not_know(tmp_path):
    """`FeatureCache.rows("validation")` gave no rows and `rows("train", "augmented")` every row, silently; an
    unknown column was h5py's "Unable to synchronously open object"."""
    X, y, split = blobs(n_per_class=2, d=4)
    path = write_cache(tmp_path / "r.h5", X, y, split, rounds=np.array([0, 1, 0, 1, 0, 1], np.int16))
    with FeatureCache(path) as c:
        assert c.rows("train").tolist() == [1, 2, 3, 4] and c.rows("train", "clean").tolist() == [2, 4]
        assert c.rows("train", "augmented").tolist() == [1, 3] and c.rows(None, "augmented").tolist() == [1, 3, 5]
        assert c.rows("val", "clean").tolist() == [0]
        with pytest.raises(ValueError, match=r"split='validation': a cache's splits are train, val, test"):
            c.rows("validation")
        with pytest.raises(ValueError, match=r"rounds='augment': choose one of all, clean, augmented"):
            c.rows("train", "augment")
        with pytest.raises(KeyError, match=r"no column 'breed'; its columns are: label, path, round, split"):
            c.column("breed")


def test_sgd_trains_out_of_core_in_blocks(separable_cache, tmp_path, monkeypatch):
    reads: list[np.ndarray] = []
    real = FeatureCache.features

    def counting(self, index=None):
        reads.append(np.arange(self.n_rows) if index is None else np.asarray(index))
        return real(self, index)

    monkeypatch.setattr(FeatureCache, "features", counting)
    titles: list[str] = []  # the curves plot accuracy: a random-weights cache's say it is not meaningful
    plot = report.plot_history
    monkeypatch.setattr(report, "plot_history", lambda h, out, title="": titles.append(title) or plot(h, out, title))
    result = train_head("sgd", separable_cache, tmp_path / "run", head_args={"block_rows": 32, "epochs": 4}, **QUIET)
    monkeypatch.undo()

    with FeatureCache(separable_cache) as c:
        train_rows = set(c.rows("train").tolist())
    train_reads = [r for r in reads if train_rows & set(r.tolist())]
    n_train = len(train_rows)
    assert n_train == 240
    assert max(len(r) for r in train_reads) <= 32  # never the whole training set at once
    blocks_per_pass = -(-n_train // 32)
    assert len(train_reads) == blocks_per_pass * (1 + 4 + 1)  # statistics, 4 epochs, train accuracy
    assert result.head.n_blocks_ == blocks_per_pass * 4
    m = result.metrics
    assert m["n_train"] == 240 and m["n_val"] == 60 and m["epochs_run"] == 4
    assert m["val_accuracy"] >= 0.9 and m["train_accuracy"] >= 0.9
    assert result.head.coef_.shape == (3, 16)
    assert (tmp_path / "run" / "training_curves.png").is_file()
    assert titles == [f"sgd training curves\n{RANDOM_WEIGHTS_NOTE}"]

    # The same head fit on in-memory arrays sees the same blocks in the same order: the same model.
    data = load_cache(separable_cache)
    in_memory = create_head("sgd", block_rows=32, epochs=4, seed=0).fit(data.train.X, data.train.y)
    np.testing.assert_allclose(in_memory.coef_, result.head.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(load_head(tmp_path / "run" / "head").predict_proba(data.val.X),
                               result.head.predict_proba(data.val.X), atol=1e-9)


def test_two_caches_are_joined_by_path_and_round(tmp_path):
    X, y, split = blobs(n_per_class=20)
    paths = [f"{CLASSES[k]}/{i:04d}.png" for i, k in enumerate(y)]
    a = write_cache(tmp_path / "a.h5", X[:, :10], y, split, paths=paths, name="first")
    order = np.random.default_rng(0).permutation(len(y))  # the second file stores its rows in another order
    b = write_cache(tmp_path / "b.h5", X[order, 10:] * 2, y[order], [split[i] for i in order],
                    paths=[paths[i] for i in order], name="second")

    joined = load_cache(f"{a},{b}")
    val = np.flatnonzero(np.array(split) == "val")
    np.testing.assert_array_equal(joined.val.X, np.hstack([X[val, :10], X[val, 10:] * 2]))
    np.testing.assert_array_equal(joined.val.y, y[val])
    assert [c["backbone"]["name"] for c in joined.configs] == ["first", "second"]

    result = train_head("logreg", [a, b], tmp_path / "run", **QUIET)
    assert result.head.coef_.shape == (3, 16)
    assert result.metrics["feature_files"] == [str(a), str(b)]
    assert result.metrics["features"] == f"{a},{b}"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [c["backbone"]["name"] for c in run["cache_configs"]] == ["first", "second"]
    assert run["cache_config"]["backbone"]["name"] == "first"
    page = (tmp_path / "run" / "report.html").read_text()  # it named the first backbone alone, as if the only one
    assert "cache 1 of 2: backbone first," in page and "cache 2 of 2: backbone second," in page
    streamed = train_head("sgd", f"{a},{b}", tmp_path / "sgd", head_args={"block_rows": 16}, **QUIET)
    assert streamed.head.coef_.shape == (3, 16)


@pytest.mark.parametrize("change,words", [
    ("drop", ["different image sets", "1 row of a.h5 is not in b.h5, e.g. c/0059.png"]),
    ("label", ["1 image has a different label", "a/0000.png: 'a' in a.h5, 'b' in b.h5"]),
    ("split", ["1 image is in another split", "a/0000.png: val in a.h5, train in b.h5", "VAL="]),
    ("classes", ["class names differ (3 in a.h5, 3 in b.h5; only in a.h5: c; only in b.h5: d)"]),
])
def test_joined_caches_of_different_images_are_refused(tmp_path, change, words):
    X, y, split = blobs(n_per_class=20)
    a = write_cache(tmp_path / "a.h5", X, y, split)
    y2, split2, names, keep = y.copy(), list(split), CLASSES, len(y)
    if change == "drop":
        keep -= 1
    elif change == "label":
        y2[0] = 1
    elif change == "split":
        split2[0] = "train"
    else:
        names = ["a", "b", "d"]
    paths = [f"{CLASSES[k]}/{i:04d}.png" for i, k in enumerate(y)]
    b = write_cache(tmp_path / "b.h5", X[:keep], y2[:keep], split2[:keep], paths=paths[:keep], class_names=names)
    with pytest.raises(CacheError) as err:
        train_head("logreg", f"{a},{b}", tmp_path / "run", **QUIET)
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_predict_on_a_run_of_two_caches(folder_data, folder_cache, tmp_path):
    """Two caches of the same images (avg and max pooling): predict builds both backbones and joins them."""
    max_cache = extract_features(folder_data, out=tmp_path / "max.h5", size=SIZE, weights="none", dtype="float32",
                                 pooling="max", batch_size=8, progress=False, **QUIET).path
    result = train_head("logreg", f"{folder_cache},{max_cache}", tmp_path / "run", **QUIET)
    with FeatureCache(folder_cache) as c:
        width = int(np.prod(c.feature_shape))
    assert result.head.coef_.shape[1] == 2 * width

    table = predict(tmp_path / "run", folder_data, **QUIET)
    data = load_cache([folder_cache, max_cache])
    with FeatureCache(folder_cache) as c:
        order = {p: i for i, p in enumerate(c.column("path"))}
    with FeatureSource([folder_cache, max_cache]) as source:
        rel = [str(Path(p).relative_to(folder_data)) for p in table["path"]]
        X = source.features(np.array([order[r] for r in rel]))
    expected = result.head.predict_proba(X)
    assert list(table["label"]) == [data.class_names[k] for k in expected.argmax(1)]
    np.testing.assert_allclose(table["probability"], expected.max(1), atol=1e-4)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "heads", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_assert_accuracy_exit_codes(separable_cache, noise_cache, tmp_path):
    ok = heads_cli("train", "--head", "logreg", "--features", str(separable_cache), "--run", str(tmp_path / "ok"),
              "--assert-accuracy", "0.85")
    assert ok.returncode == 0, ok.stderr
    assert "ASSERT_ACCURACY=0.85 passed" in ok.stderr

    low = _cli("train", "--head", "logreg", "--features", str(noise_cache), "--run", str(tmp_path / "low"),
               "--assert-accuracy", "0.85")
    assert low.returncode == 3, low.stderr
    acc = json.loads((tmp_path / "low" / "metrics.json").read_text())["val_accuracy"]  # the run is still saved
    assert acc < 0.85
    assert f"logreg val accuracy {acc:.4f} < ASSERT_ACCURACY=0.85" in low.stderr

    both = heads_cli("compare", "--features", str(noise_cache), "--heads", "ridge,knn", "--out", str(tmp_path / "cmp"),
                "--assert-accuracy", "0.85")
    assert both.returncode == 3, both.stderr
    assert "ridge val accuracy" in both.stderr and "knn val accuracy" in both.stderr
    assert (tmp_path / "cmp" / "compare.md").is_file()

    bad = heads_cli("train", "--features", str(separable_cache), "--run", str(tmp_path / "bad"),
                    "--assert-accuracy", "85")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr


def test_assert_accuracy_in_the_library(separable_cache, noise_cache, tmp_path):
    from heads.compare import compare_heads

    table = compare_heads(separable_cache, ["logreg", "sgd"], tmp_path / "ok", assert_accuracy=0.85, **QUIET)
    assert (table["val_accuracy"] >= 0.85).all()
    with pytest.raises(AccuracyBelowThreshold, match="ridge val accuracy"):
        train_head("ridge", noise_cache, tmp_path / "low", assert_accuracy=0.85, **QUIET)


def test_compare_heads_never_reads_the_images(folder_data, tmp_path, monkeypatch):
    import extract.pipeline as pipeline
    from heads import list_heads
    from heads.compare import compare_heads

    data = shutil.copytree(folder_data, tmp_path / "shapes")
    cache = extract_features(data, out=tmp_path / "shapes.h5", size=SIZE, weights="none", dtype="float32",
                             batch_size=8, progress=False, **QUIET).path
    shutil.move(data, tmp_path / "moved_away")
    for name in ("embed", "load_backbone", "extract_features"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: pytest.fail("compare-heads ran the backbone"))

    table = compare_heads(cache, out_dir=tmp_path / "cmp", **QUIET)  # default: every registered head
    assert list(table["head"]) == list_heads()
    for column in ("val_accuracy", "val_top5_accuracy", "val_log_loss", "fit_seconds", "predict_ms_per_image"):
        assert table[column].notna().all() and (table[column] >= 0).all()
    assert table["test_accuracy"].isna().all()  # this data set has no labelled test split
    md = (tmp_path / "cmp" / "compare.md").read_text()
    for word in ("val_accuracy", "val_top5_accuracy", "val_log_loss", "test_accuracy", "fit_seconds",
                 "predict_ms_per_image", "compare.png", "not meaningful", *list_heads()):
        assert word in md
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in list_heads():
        metrics = json.loads((tmp_path / "cmp" / name / "metrics.json").read_text())
        assert metrics["val_accuracy"] == pytest.approx(float(table.set_index("head").loc[name, "val_accuracy"]))
    assert not data.exists()


def test_compare_md_reports_test_accuracy_when_test_is_labelled(tmp_path):
    from heads.compare import compare_heads

    X, y, split = blobs(n_per_class=20)
    split = ["test" if i % 7 == 1 else s for i, s in enumerate(split)]
    cache = write_cache(tmp_path / "t.h5", X, y, split)
    table = compare_heads(cache, ["logreg", "knn"], tmp_path / "cmp", **QUIET)
    assert table["test_accuracy"].notna().all() and (table["test_accuracy"] >= 0.9).all()
    rows = [line for line in (tmp_path / "cmp" / "compare.md").read_text().splitlines() if line.startswith("| logreg")]
    assert len(rows) == 1 and "n/a" not in rows[0]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert ("Trained on 41 rows (TRAIN_ROUNDS=all: every view of each training image), scored on 10 validation "
            "images (clean views); one image is 10.0 points of accuracy.") in md


def test_streaming_heads_refuse_nan_training_rows_with_the_cache_message(folder_cache, tmp_path):
    import h5py

    broken = tmp_path / "nan.h5"
    shutil.copy(folder_cache, broken)
    with h5py.File(broken, "a") as f:
        train_row = int(np.flatnonzero(f["split"].asstr()[()] == "train")[0])
        f["features"][train_row, 0] = np.nan
    with pytest.raises(CacheError, match="NaN or inf in its training features.*make verify"):
        train_head("sgd", broken, tmp_path / "run", log=lambda m: None)


def test_summary_prints_log_loss_with_four_decimals(tmp_path):
    from heads.train import format_summary

    metrics = {"head": "logreg", "val_accuracy": 1.0, "val_top5_accuracy": 1.0, "val_log_loss": 0.00001,
               "train_accuracy": 1.0, "test_accuracy": None, "fit_seconds": 0.1, "n_train": 10, "note": ""}
    assert "log loss 0.0000," in format_summary(metrics, tmp_path)
    assert "log loss 0.5000," in format_summary({**metrics, "val_log_loss": 0.5}, tmp_path)
    assert "log loss n/a," in format_summary({**metrics, "val_log_loss": None}, tmp_path)


@pytest.mark.parametrize("head,args,said", [
    ("linear-svm", {"max_iter": 1}, "liblinear stopped at max_iter=1 before converging in 4 of 4 fits"),
    ("logreg", {"max_iter": 1}, "lbfgs stopped at max_iter=1 before converging in 1 of 1 fits"),
    ("logreg", {"max_iter": 1, "C": "auto"}, "lbfgs stopped at max_iter=1 before converging in 13 of 13 fits"),
])
def test_non_convergence_is_one_note_not_a_warning_per_fit(noise_cache, tmp_path, head, args, said):
    import html
    import warnings

    logs: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_head(head, noise_cache, tmp_path / "run", head_args=args, log=logs.append)
    assert not [w for w in caught if w.category.__name__ == "ConvergenceWarning"]
    note = result.metrics["fit_note"]
    assert said in note and "HEAD_ARGS='max_iter=5000'" in note
    assert f"NOTE: {head}: {note}" in logs[-1].splitlines()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fit_note"] == note
    assert f"<th>fit_note</th><td>{html.escape(note)}</td>" in (tmp_path / "run" / "report.html").read_text()
    converged = train_head(head, noise_cache, tmp_path / "ok", plots=False, **QUIET)
    assert "fit_note" not in converged.metrics


def test_knn_says_when_it_has_fewer_rows_than_neighbours(noise_cache, tmp_path):
    result = train_head("knn", noise_cache, tmp_path / "knn", head_args={"n_neighbors": 100_000}, plots=False, **QUIET)
    n = result.metrics["n_train"]
    assert result.metrics["fit_note"] == f"n_neighbors=100000 is more than the {n:,} training rows: all of them vote"
    assert "fit_note" not in train_head("knn", noise_cache, tmp_path / "ok", plots=False, **QUIET).metrics


def test_a_class_with_no_training_row_is_warned_about_and_recorded(tmp_path):
    """Its probability is 0 for every image (a Kaggle log loss of ~34.5 per such image), and nothing said so."""
    X, y, split = blobs(n_per_class=20)
    split = ["val" if k == 2 else s for k, s in zip(y, split)]  # class c: val rows only
    logs: list[str] = []
    result = train_head("logreg", write_cache(tmp_path / "a.h5", X, y, split), tmp_path / "run", log=logs.append)
    assert result.metrics["untrained_classes"] == ["c"]
    assert any(m.startswith("WARNING: 1 class has no training row: c; the head gives it probability 0") for m in logs)
    assert "untrained_classes" not in train_head("logreg", write_cache(tmp_path / "b.h5", *blobs(20)), tmp_path / "ok",
                                                 plots=False, **QUIET).metrics


def test_features_may_start_with_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_cache(tmp_path / "a.h5", *blobs(20))
    assert train_head("ridge", "~/a.h5", tmp_path / "run", plots=False, **QUIET).metrics["features"] == str(
        tmp_path / "a.h5")


def test_top5_accuracy_counts_ties_against_the_true_class():
    """A class given probability 0 is no top-5 hit wherever it sits in the class order (knn gives most classes 0);
    without ties the figure is scikit-learn's top_k_accuracy_score."""
    from sklearn.metrics import top_k_accuracy_score

    from heads.train import evaluate

    zero_first, zero_last = np.array([[0, 0, 0, 0, 0, 0, 1.0]]), np.array([[1.0, 0, 0, 0, 0, 0, 0]])
    assert evaluate(zero_first, np.array([0]))["top5_accuracy"] == 0.0
    assert evaluate(zero_last, np.array([6]))["top5_accuracy"] == 0.0
    knn = np.array([[0.4, 0.15, 0.15, 0.15, 0.15, 0, 0], [0.4, 0.15, 0.15, 0.15, 0.15, 0, 0]])
    assert evaluate(knn, np.array([4, 6]))["top5_accuracy"] == 0.5  # 5th of five voters: a hit; no vote: none
    assert evaluate(np.array([[0.5, 0.5, 0, 0]]), np.array([3]))["top5_accuracy"] == 1.0  # ≤ 5 classes
    uniform = evaluate(np.full((2, 10), 0.1), np.array([0, 9]))  # the top-1 label is always a top-5 hit
    assert uniform["accuracy"] == 0.5 and uniform["top5_accuracy"] == 0.5
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(12), size=200)
    y = rng.integers(0, 12, 200)
    assert evaluate(proba, y)["top5_accuracy"] == top_k_accuracy_score(y, proba, k=5, labels=np.arange(12))


def test_all_zero_feature_rows_are_warned_about_at_training(tmp_path):
    """Extraction warns once; a cache reused later (compare-backbones) trained and tabulated without a word."""
    X, y, split = blobs(n_per_class=20, d=8)
    X[:7] = 0  # 7 rows of class 0: rows 0 and 5 are val, the other 5 train
    cache = write_cache(tmp_path / "zeros.h5", X, y, split)
    for head in ("logreg", "sgd"):  # sgd streams its training rows from the file in blocks
        said: list[str] = []
        result = train_head(head, cache, tmp_path / head, plots=False, log=said.append)
        assert any(m.startswith("WARNING: 5 of the 48 training rows and 2 of the 12 validation rows of ") and
                   "have all-zero features" in m and "make verify" in m for m in said), said
        assert result.metrics["all_zero_rows"] == 7
    clean = train_head("logreg", write_cache(tmp_path / "ok.h5", *blobs(n_per_class=20, d=8)), tmp_path / "ok",
                       plots=False, log=said.append)
    assert clean.metrics["all_zero_rows"] == 0 and sum("all-zero" in m for m in said) == 1


class _Stop(Exception):
    """Stands in for the long fit: the test only needs to see what was said before it."""


def test_linear_svm_says_before_fitting_when_many_classes_would_take_hours(tmp_path, monkeypatch):
    """Kaggle Dog Breed scale (120 classes, ~8,000 rows): linear-svm ran silent for hours; now a NOTE comes first."""
    from heads import compare
    from heads.linear_svm import LinearSVMHead

    names = [f"breed_{k:02d}" for k in range(40)]
    y = np.repeat(np.arange(40), 100)
    X = np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32)
    split = list(np.where(np.arange(len(y)) % 5 == 0, "val", "train"))
    many = write_cache(tmp_path / "many.h5", X, y, split, class_names=names)
    logs: list[str] = []
    said_at_fit: list[list[str]] = []

    def fit(self, *args, **kwargs):
        said_at_fit.append(list(logs))
        raise _Stop

    monkeypatch.setattr(LinearSVMHead, "fit", fit)
    with pytest.raises(_Stop):
        train_head("linear-svm", many, tmp_path / "run", log=logs.append)
    notes = [m for m in said_at_fit[0] if m.startswith("NOTE: linear-svm fits 160 one-vs-rest SVMs (40 classes x 4")]
    assert len(notes) == 1 and "3,200 rows" in notes[0] and notes[0].endswith("HEAD=logreg is the fast linear head.")

    # compare-heads says it before its first head trains, not when linear-svm's turn comes
    logs.clear()
    def first_head(*args, **kwargs):
        said_at_fit.append(list(logs))
        raise _Stop

    monkeypatch.setattr(compare, "train_head", first_head)
    with pytest.raises(_Stop):
        compare.compare_heads(many, ["logreg", "linear-svm"], tmp_path / "cmp", log=logs.append)
    assert any(m.startswith("NOTE: linear-svm fits 160") and "Leave linear-svm out of HEADS=" in m
               for m in said_at_fit[-1])

    # Without HEADS= (every registered head; here ridge and linear-svm) it is left out, and its row says why.
    monkeypatch.undo()
    monkeypatch.setattr(compare, "list_heads", lambda: ["ridge", "linear-svm"])
    logs.clear()
    table = compare.compare_heads(many, None, tmp_path / "default", log=logs.append)
    assert list(table["head"]) == ["ridge", "linear-svm"] and np.isnan(table["val_accuracy"].iloc[1])
    assert table["note"].iloc[1].startswith("left out of the default comparison: linear-svm fits 160")
    assert not (tmp_path / "default" / "linear-svm").exists() and (tmp_path / "default" / "ridge").is_dir()
    assert "HEADS=...,linear-svm compares it anyway" in (tmp_path / "default" / "compare.md").read_text()
    assert logs[-1].startswith("left out linear-svm: it would take hours on this data")

    # a small data set fits in seconds: nothing to say
    logs.clear()
    monkeypatch.undo()
    train_head("linear-svm", write_cache(tmp_path / "few.h5", *blobs(20)), tmp_path / "few", plots=False,
               log=logs.append)
    assert not [m for m in logs if "one-vs-rest" in m]


def test_compare_heads_says_a_named_costly_heads_note_once(tmp_path, monkeypatch):
    """HEADS=logreg,linear-svm printed linear-svm's NOTE before the first head and again when its turn came."""
    from heads import compare
    from heads.linear_svm import LinearSVMHead

    y = np.repeat(np.arange(40), 100)
    X = np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32)
    split = list(np.where(np.arange(len(y)) % 5 == 0, "val", "train"))
    many = write_cache(tmp_path / "many.h5", X, y, split, class_names=[f"breed_{k:02d}" for k in range(40)])
    logs: list[str] = []

    def fit(self, *args, **kwargs):
        logs.append("linear-svm fit starts")
        raise _Stop

    monkeypatch.setattr(LinearSVMHead, "fit", fit)
    with pytest.raises(_Stop):
        compare.compare_heads(many, ["logreg", "linear-svm"], tmp_path / "cmp", log=logs.append)
    said = [m for m in logs if "one-vs-rest SVMs" in m]
    assert len(said) == 1 and said[0].startswith("NOTE: linear-svm fits 160"), said
    assert logs.index(said[0]) < next(i for i, m in enumerate(logs) if m.startswith("training logreg"))
    assert logs[-1] == "linear-svm fit starts"


def test_what_one_val_image_is_worth_keeps_its_digits_on_a_large_val_split():
    """2,054 val images (Kaggle Dog Breed at VAL=0.2): one image is 0.049 points, not '0.0 points'."""
    from heads.train import scored_on

    def worth(n_val: int) -> str:
        return scored_on({"n_val": n_val, "n_train": 8_165}).split("; ")[-1]

    assert worth(2_054) == "one image is 0.049 points of accuracy."
    assert worth(205) == "one image is 0.49 points of accuracy."
    assert worth(64) == "one image is 1.6 points of accuracy."
    assert worth(10) == "one image is 10.0 points of accuracy."
    assert "points" not in scored_on({"n_val": 0, "n_train": 10})


def test_a_percentage_never_rounds_a_miss_to_100_or_a_hit_to_0():
    from heads.train import _pct

    assert _pct(1 - 3 / 8165) == "99.96%" and _pct(1.0) == "100.0%" and _pct(0.9) == "90.0%"
    assert _pct(1 / 8165) == "0.01%" and _pct(0.0) == "0.0%" and _pct(None) == "n/a"
    assert _pct(1 - 1e-7) == "99.99999%"  # 1 wrong of 10 million


def test_linear_svm_cost_note_counts_one_svm_per_fit_for_two_classes():
    """Two classes are one binary SVM per fit, not one per class: the note's product must be the count it says."""
    from heads.linear_svm import LinearSVMHead

    assert LinearSVMHead().cost_note(125_000, 2).startswith(
        "linear-svm fits 4 binary SVMs (2 classes: one SVM x 4: cv=3 calibration folds and the final fit)")
    assert LinearSVMHead().cost_note(124_999, 2) == ""
    assert LinearSVMHead(cv=2).cost_note(50_000, 10).startswith(
        "linear-svm fits 30 one-vs-rest SVMs (10 classes x 3: cv=2 calibration folds and the final fit)")
