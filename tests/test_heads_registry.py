"""The head registry: one conformance test over every head, value checks of HEAD_ARGS, and the no-TensorFlow rule."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from heads import create_head, list_heads, load_head
from heads.registry import head_class

REPO = Path(__file__).resolve().parents[1]
FAST = {"dense": {"epochs": 8}}  # keep the Keras head to seconds
SKLEARN_HEADS = [name for name in list_heads() if not head_class(name).uses_keras]


def toy(n_classes: int, per_class: int = 10, d: int = 8, seed: int = 0, labels=(0, 2, 5)):
    """Separable rows: class means 4 apart on their own axis; labels need not be 0..k-1."""
    rng = np.random.default_rng(seed)
    classes = np.array(labels[:n_classes])
    y = np.repeat(classes, per_class)
    pos = np.searchsorted(classes, y)
    X = (rng.normal(size=(len(y), d)) * 0.5 + 4 * np.eye(d)[pos]).astype(np.float32)
    order = rng.permutation(len(y))
    return X[order], y[order]


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", list_heads())
def test_head_conformance(name, n_classes, tmp_path, monkeypatch):
    X, y = toy(n_classes)
    head = create_head(name, **FAST.get(name, {}))
    assert head.fit(X, y) is head
    np.testing.assert_array_equal(head.classes_, np.unique(y))
    proba = head.predict_proba(X)
    assert proba.shape == (len(X), n_classes)
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    # Columns follow classes_: on separable data the top column is the row's own class.
    assert np.mean(head.classes_[proba.argmax(1)] == y) >= 0.9
    np.testing.assert_array_equal(head.predict(X), head.classes_[proba.argmax(1)])

    head.save(tmp_path / "head")
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    assert json.loads((tmp_path / "head" / "head.json").read_text())["head"] == name

    def refuse(*args, **kwargs):
        raise AssertionError("load_head unpickled something")

    real_load = np.load
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(np, "load", lambda *a, **k: real_load(*a, **{**k, "allow_pickle": False}))
    loaded = load_head(tmp_path / "head")
    monkeypatch.undo()
    assert type(loaded) is type(head)
    assert loaded.get_params() == head.get_params()
    np.testing.assert_array_equal(loaded.classes_, head.classes_)
    np.testing.assert_allclose(loaded.predict_proba(X), proba, atol=1e-6)


def test_sklearn_heads_never_import_tensorflow(folder_cache, tmp_path):
    """Train, save, load and predict every scikit-learn head in one fresh interpreter: no TensorFlow or Keras, and
    scikit-learn imported before the first fit is timed."""
    script = f"""
import sys
import numpy as np
from heads import load_head, train_head
from heads.registry import head_class
first = head_class({SKLEARN_HEADS[0]!r})
method = "fit_blocks" if first.streaming else "fit"
real_fit, at_fit = getattr(first, method), []
def fit(self, *args, **kwargs):  # the first head of a process timed scikit-learn's import (~1.5 s) as fitting
    at_fit.append("sklearn.base" in sys.modules)
    return real_fit(self, *args, **kwargs)
setattr(first, method, fit)
for name in {SKLEARN_HEADS!r}:
    result = train_head(name, {str(folder_cache)!r}, {str(tmp_path)!r} + "/" + name, log=lambda m: None)
    load_head(result.run_dir / "head").predict_proba(np.zeros((2, {_width(folder_cache)}), "float32"))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print("LOADED", loaded[:5], "SKLEARN IMPORTED BEFORE THE FIT CLOCK", at_fit)
sys.exit(1 if loaded or at_fit != [True] else 0)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in SKLEARN_HEADS:
        assert (tmp_path / name / "metrics.json").is_file()
    assert len(SKLEARN_HEADS) >= 5


def _width(cache: Path) -> int:
    from extract import FeatureCache

    with FeatureCache(cache) as c:
        return int(np.prod(c.feature_shape))


@pytest.mark.parametrize("name,args,words", [
    ("logreg", {"C": -1}, ["C=-1", "C must be a number > 0 or 'auto'"]),
    ("logreg", {"C": "abc"}, ["C='abc'", "C must be a number > 0 or 'auto'"]),
    ("logreg", {"max_iter": 2.5}, ["max_iter=2.5", "an integer >= 1"]),
    ("knn", {"weights": "cosine"}, ["weights='cosine'", "one of 'uniform', 'distance'"]),
    ("dense", {"dropout1": 1.0}, ["dropout1=1.0", "a number >= 0 and < 1"]),
    ("dense", {"standardize": "yes"}, ["standardize='yes'", "true or false"]),
    ("sgd", {"block_rows": 0}, ["block_rows=0", "an integer >= 1"]),
    ("ridge", {"C": 1}, ["has no argument C", "valid arguments: alpha=1.0 (a number >= 0)"]),
])
def test_bad_head_args_are_refused_naming_the_key_and_the_allowed_values(name, args, words):
    with pytest.raises(ValueError) as err:
        create_head(name, **args)
    for w in words:
        assert w in str(err.value)


def test_good_head_args_are_coerced():
    assert create_head("logreg", C=2, max_iter=50.0).get_params() == {"C": 2.0, "max_iter": 50}
    assert create_head("logreg", C="auto").C == "auto"
    assert create_head("dense", units2=None, standardize=False).units2 is None


def test_bad_head_args_fail_before_the_cache_is_read(tmp_path, capsys):
    from heads import train_head
    from heads.__main__ import main

    with pytest.raises(ValueError, match="C=-1"):  # the file does not exist: the argument is checked first
        train_head("logreg", tmp_path / "missing.h5", tmp_path / "run", head_args={"C": -1}, log=lambda m: None)
    # Without FEATURES=, before the newest cache is looked for (and said: "FEATURES not given: using ...")
    said: list[str] = []
    with pytest.raises(ValueError, match="C=-1"):
        train_head("logreg", None, tmp_path / "run", head_args={"C": -1}, cache_dir=tmp_path, log=said.append)
    with pytest.raises(ValueError, match="unknown HEAD='logrge'"):
        train_head("logrge", None, tmp_path / "run", cache_dir=tmp_path, log=said.append)
    assert said == []
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--features", str(tmp_path / "missing.h5"), "--head-args", "C=abc max_iter=10"])
    assert exit_.value.code == 2
    assert "C='abc' is not allowed; C must be a number > 0 or 'auto'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_logreg_C_auto_matches_a_grid_search_and_is_recorded(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from heads.logreg import C_GRID

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 15)
    X = (rng.normal(size=(45, 6)) + 0.8 * np.eye(6)[y]).astype(np.float32)  # overlapping: C matters
    head = create_head("logreg", C="auto").fit(X, y)
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                          {"logisticregression__C": list(C_GRID)}, scoring="neg_log_loss",
                          cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(X, y)
    assert head.C_ == search.best_params_["logisticregression__C"]
    np.testing.assert_allclose(list(head.selected_params_["cv_log_loss"].values()),
                               -search.cv_results_["mean_test_score"], rtol=1e-3)
    plain = create_head("logreg", C=head.C_).fit(X, y)
    np.testing.assert_allclose(head.predict_proba(X), plain.predict_proba(X), atol=1e-6)
    head.save(tmp_path / "h")
    assert load_head(tmp_path / "h").C_ == head.C_

    with pytest.raises(ValueError, match="at least 2 training images of every class"):
        create_head("logreg", C="auto").fit(X[:4], np.array([0, 1, 2, 2]))


def test_linear_svm_probabilities_equal_scikit_learns_calibrated_model():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    for n_classes in (2, 3):
        X, y = toy(n_classes, per_class=12, seed=n_classes)
        X += np.random.default_rng(1).normal(size=X.shape).astype(np.float32) * 2  # overlapping classes
        head = create_head("linear-svm").fit(X, y)
        scaled = StandardScaler().fit_transform(X)
        ref = CalibratedClassifierCV(LinearSVC(random_state=0), method="sigmoid", ensemble=False,
                                     cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(scaled, y)
        np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(scaled), atol=1e-6)


def test_sgd_probabilities_equal_scikit_learns_one_vs_all_logistic():
    from sklearn.linear_model import SGDClassifier

    for n_classes in (2, 3):
        X, y = toy(n_classes, seed=n_classes)
        head = create_head("sgd", epochs=3, block_rows=7).fit(X, y)
        ref = SGDClassifier(loss="log_loss")
        ref.coef_, ref.intercept_, ref.classes_ = head.coef_, head.intercept_, head.classes_
        ref.n_features_in_ = X.shape[1]
        np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba((X - head.mean_) / head.scale_),
                                   atol=1e-9)


def test_ridge_probabilities_are_a_softmax_of_its_decision_values():
    from scipy.special import softmax
    from sklearn.linear_model import RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    X, y = toy(3)
    head = create_head("ridge", alpha=0.5).fit(X, y)
    scaled = StandardScaler().fit_transform(X)
    ref = RidgeClassifier(alpha=0.5).fit(scaled, y)
    np.testing.assert_allclose(head.predict_proba(X), softmax(ref.decision_function(scaled), axis=1), atol=1e-6)


def test_knn_is_cosine_and_keeps_its_reference_rows(tmp_path):
    X, y = toy(3)
    head = create_head("knn", n_neighbors=50).fit(X, y)  # more neighbours than rows: all rows vote
    assert head.n_neighbors_ == len(y)
    np.testing.assert_allclose(head.predict_proba(X[:3]), np.full((3, 3), 1 / 3))
    head = create_head("knn", n_neighbors=1).fit(X, y)
    # Cosine ignores length: a scaled copy of a training row is its own nearest neighbour.
    assert head.predict(X[:5] * 7.5).tolist() == y[:5].tolist()
    head.save(tmp_path / "h")
    with np.load(tmp_path / "h" / "knn.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["X"], X)
        np.testing.assert_array_equal(z["y"], y)


def test_dense_widths_dropout_and_epochs_are_settable():
    X, y = toy(3)
    head = create_head("dense", units=16, units2=8, dropout1=0.1, dropout2=0.0, epochs=2, patience=0).fit(X, y)
    dense = [layer for layer in head.model_.layers if type(layer).__name__ == "Dense"]
    drops = [layer for layer in head.model_.layers if type(layer).__name__ == "Dropout"]
    assert [layer.units for layer in dense] == [16, 8, 3]
    assert [layer.rate for layer in drops] == [0.1, 0.0]
    assert head.n_epochs_ == 2


def test_many_dense_heads_in_one_process_predict_without_tensorflow_retracing_warnings():
    """A notebook or compare-backbones trains several dense heads in one process: Keras's model.predict traced a
    tf.function for each model, and TensorFlow warned of "retracing" from the fifth. Heads built without fitting."""
    import logging

    X, y = toy(3)
    warned: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        for seed in range(6):
            head = create_head("dense", seed=seed)
            head.model_, head.classes_ = head._build(X, 3), np.unique(y)
            proba = head.predict_proba(X[: 7 + seed])  # another row count each time, too
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [w for w in warned if "retracing" in w]
    np.testing.assert_array_equal(proba, head.model_.predict(X[:12], verbose=0))
    assert head.predict_proba(X[:0]).shape == (0, 3)


def augmented_toy(seed: int = 4, images: int = 12, views: int = 3):
    """Each image's views are near copies (as augmented rounds' features are): a fold holding one view of an image
    while fitting on another would score the image almost as if it were trained on."""
    rng = np.random.default_rng(seed)
    y_img = np.repeat([0, 1, 2], images)
    X_img = rng.normal(size=(len(y_img), 6)) + 0.8 * np.eye(6)[y_img]
    groups = np.repeat([f"img{i}.jpg" for i in range(len(y_img))], views)
    X = (np.repeat(X_img, views, axis=0) + 0.05 * rng.normal(size=(len(groups), 6))).astype(np.float32)
    return X, np.repeat(y_img, views), groups


def test_cross_validation_keeps_every_view_of_an_image_in_one_fold():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from heads.base import RareClassError, cv_folds
    from heads.logreg import C_GRID

    X, y, groups = augmented_toy()
    folds = cv_folds(y, 3, "test", groups=groups)
    assert len(folds) == 3
    for fit, held in folds:
        assert not set(groups[fit]) & set(groups[held])
    # C=auto with the images named equals scikit-learn's grid search over image-grouped folds
    head = create_head("logreg", C="auto").fit(X, y, groups=groups)
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
                          {"logisticregression__C": list(C_GRID)}, scoring="neg_log_loss",
                          cv=StratifiedGroupKFold(3, shuffle=True, random_state=0)).fit(X, y, groups=groups)
    np.testing.assert_allclose(list(head.selected_params_["cv_log_loss"].values()),
                               -search.cv_results_["mean_test_score"], rtol=1e-3)
    # a class of one image is refused however many views it has (it used to pass as 3 rows)
    with pytest.raises(RareClassError, match="class 2 has 1"):
        cv_folds(np.array([0, 0, 1, 1, 2, 2, 2]), 3, "test", groups=np.array(list("abcdeee")))
    with pytest.raises(RareClassError, match="class 2 has 1"):
        create_head("linear-svm").fit(X[:7], np.array([0, 0, 1, 1, 2, 2, 2]), groups=np.array(list("abcdeee")))


def test_holdout_keeps_images_whole_and_every_class_in_training():
    from heads.base import holdout_rows

    _, y, groups = augmented_toy(images=10)
    fit, held = holdout_rows(y, 0.2, seed=1, groups=groups)
    assert sorted([*fit, *held]) == list(range(len(y))) and not set(groups[fit]) & set(groups[held])
    assert [len(set(groups[held][y[held] == c])) for c in range(3)] == [2, 2, 2]  # 20% of 10 images per class
    fit, held = holdout_rows(np.array([0, 0, 0, 1]), 0.5, groups=np.array(list("aabc")))
    assert list(held) in ([0, 1], [2]) and 3 in fit  # a class of one image is never held out


def test_dense_never_chooses_anything_on_the_validation_split():
    """Early stopping watches a holdout of the training images: the validation rows given to fit, even with
    wrong labels, change nothing."""
    X, y, groups = augmented_toy(images=8)
    kw = dict(epochs=15, patience=2)
    plain = create_head("dense", **kw).fit(X, y, groups=groups)
    wrong_val = (X[:12], (y[:12] + 1) % 3)
    watched = create_head("dense", **kw).fit(X, y, validation_data=wrong_val, groups=groups)
    np.testing.assert_array_equal(plain.predict_proba(X), watched.predict_proba(X))
    assert plain.best_epoch_ <= plain.n_epochs_ and plain.n_holdout_ == 3 * 3  # 1 image of 8 per class, 3 views
    assert "holdout_loss" in plain.history_ and "val_loss" not in plain.history_
    none = create_head("dense", epochs=3, validation_fraction=0).fit(X, y, groups=groups)
    assert none.n_epochs_ == 3 and none.n_holdout_ == 0 and none.fit_note_ == ""


def test_ridge_says_in_one_note_when_its_system_is_ill_conditioned(recwarn):
    """scipy's LinAlgWarning named a site-packages line; the head's fit_note says what to change instead."""
    X, y = toy(3, per_class=10, d=6)
    noise = 1e-4 * np.random.default_rng(1).normal(size=(len(X), 1))
    X = np.column_stack([X, X[:, :1] + noise]).astype(np.float32)  # a near copy of a feature: nearly singular
    head = create_head("ridge", alpha=1e-12).fit(X, y)
    assert head.fit_note_.startswith("the least-squares system is ill-conditioned (An ill-conditioned matrix")
    assert "HEAD_ARGS='alpha=10'" in head.fit_note_
    assert not [w for w in recwarn if "ill-conditioned" in str(w.message)]
    assert create_head("ridge").fit(*toy(3)).fit_note_ == ""


CTRL_C_DURING_A_FOLD = """
import os, signal, threading
import numpy as np
import sklearn.calibration
from heads.linear_svm import LinearSVMHead

# As a terminal's Ctrl-C finds it, whatever the test process passed on (a blocked or ignored SIGINT is inherited)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
signal.signal(signal.SIGINT, signal.default_int_handler)
N = 5000
product = np.zeros((N, N))

def one_long_c_call(self, X, y):  # like liblinear's fold: releases the GIL, never looks at signals (seconds here)
    a = np.ones((N, N))
    # Ctrl-C once the fold has begun (a timer started before the fit raced a fast fold and was heard after it)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    np.matmul(a, a, out=product)  # 250 GFLOP: over a second on any CPU this suite runs on

sklearn.calibration.CalibratedClassifierCV.fit = one_long_c_call
try:
    LinearSVMHead().fit(np.random.default_rng(0).normal(size=(40, 3)), np.repeat([0, 1], 20))
except KeyboardInterrupt:
    print("fold done" if product[-1, -1] == N and product.sum() == float(N)**3 else "fold still running", flush=True)
    os._exit(0)
"""


def test_ctrl_c_stops_linear_svm_without_waiting_for_the_fold():
    """At 120 classes one liblinear fold runs for minutes to hours in a C call that never looks at signals: Ctrl-C
    used to be heard only when it returned. The fit now runs in a thread, and Ctrl-C stops the command at once."""
    env = {**__import__("os").environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CTRL_C_DURING_A_FOLD], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.stdout.strip() == "fold still running", out.stdout + out.stderr[-2000:]
