"""train_head guards: joined caches of two versions of an image, a retrain over an exported run, HEAD_ARGS/HEAD."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, draw, write_class_folders

from extract import extract_features
from extract.cache import Batch, CacheError, HDF5Writer
from heads import train_head
from heads.train import parse_head_args

QUIET = {"log": lambda m: None}
REPO = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c"]


def write_cache(path: Path, stamps: list[str], *, pooling: str = "avg", seed: int = 0) -> Path:
    """A complete synthetic cache of 60 separable rows (every 5th in val) whose rows carry ``stamps``."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 20)
    X = (rng.normal(size=(len(y), 8)) + 3 * np.eye(8)[y]).astype(np.float32)
    split = ["val" if i % 5 == 0 else "train" for i in range(len(y))]
    config = {"backbone": {"name": "synthetic"}, "size": 71, "pooling": pooling, "weights": {"kind": "none"},
              "dtype": "float32", "precision": "float32", "seed": 0, "val": 0.2}
    writer = HDF5Writer(path, config=config, class_names=CLASSES, fingerprint="synthetic", feature_shape=(8,),
                        dtype="float32", data_root="/data/shapes")
    writer.write(Batch(X, y, [f"{CLASSES[k]}/{i:04d}.png" for i, k in enumerate(y)], split,
                       np.zeros(len(y), np.int16), stamps))
    writer.close(True)
    return path


OLD = [f"{100 + i}:1700000000000000000" for i in range(60)]


# -- 1. joined caches must hold features of the same version of every image --------------------------------------

def test_joined_caches_of_two_versions_of_an_image_are_refused(tmp_path):
    new = list(OLD)
    new[3] = "222:1800000000000000000"  # a/0003.png overwritten, then re-extracted into b.h5 only
    a = write_cache(tmp_path / "a.h5", OLD)
    b = write_cache(tmp_path / "b.h5", new, pooling="max", seed=1)
    with pytest.raises(CacheError) as err:
        train_head("logreg", [b, a], tmp_path / "run", **QUIET)
    said = str(err.value)
    for words in ("b.h5 and a.h5 are not caches of the same images", "1 row holds features of different versions of its image file",
                  "e.g. a/0003.png", "b.h5 has the newer version of the file, a.h5 an older one", "Re-extract a.h5 ",
                  "updates only the changed images", f"POOLING=avg WEIGHTS=none DTYPE=float32 PRECISION=float32 "
                  f"VAL=0.2 SEED=0 OUT={tmp_path / 'a.h5'}`", "`make extract DATA=/data/shapes BACKBONE=synthetic"):
        assert words in said, said
    assert "b.h5 " not in said.split("Re-extract")[1].split("`")[0]  # b.h5 is the fresh one: not asked to re-extract
    assert not (tmp_path / "run").exists()


def test_joined_caches_with_equal_or_unrecorded_stamps_train(tmp_path):
    a = write_cache(tmp_path / "a.h5", OLD)
    b = write_cache(tmp_path / "b.h5", OLD, pooling="max", seed=1)
    none = write_cache(tmp_path / "none.h5", [], seed=2)  # a cache written without stamps: nothing to compare
    assert train_head("logreg", [b, a, none], tmp_path / "run", plots=False, **QUIET).head.coef_.shape == (3, 24)


@pytest.mark.slow
def test_an_image_changed_and_re_extracted_into_one_cache_only(tmp_path):
    """The user's walkthrough: caches of one folder by two backbones, an image overwritten, only one re-extracted."""
    data = write_class_folders(tmp_path / "shapes", per_class=2)
    kwargs = {"size": SIZE, "weights": "none", "dtype": "float32", "batch_size": 8, "progress": False, **QUIET}
    xc = extract_features(data, out=tmp_path / "xception.h5", **kwargs).path
    mn = extract_features(data, out=tmp_path / "mobilenet.h5", backbone="mobilenetv2", **kwargs).path
    image = data / "circle" / "circle_01.png"
    draw("square", np.random.default_rng(7)).save(image)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # a later mtime, surely
    logs: list[str] = []
    extract_features(data, out=mn, backbone="mobilenetv2", **{**kwargs, "log": logs.append})
    assert any("1 modified" in line for line in logs), logs

    with pytest.raises(CacheError, match=r"1 row holds features of different versions.*circle/circle_01\.png.*"
                                         r"Re-extract xception\.h5 .*BACKBONE=xception SIZE=71"):
        train_head("logreg", [mn, xc], tmp_path / "run", **QUIET)
    extract_features(data, out=xc, **kwargs)  # the fix the message gives
    train_head("logreg", [mn, xc], tmp_path / "run", plots=False, **QUIET)


# -- 2. a retrain replaces the whole previous run, export/ included ------------------------------------------------

def _fake_export(run: Path) -> None:
    """What `make export RUN=<run>` leaves in <run>/export (the real one builds a backbone)."""
    (run / "export" / "saved_model").mkdir(parents=True)
    for name in ("model.keras", "labels.json", "export.json"):
        (run / "export" / name).write_text("{}")


def test_retraining_a_run_folder_removes_what_the_old_run_left(tmp_path):
    cache = write_cache(tmp_path / "a.h5", OLD)
    run = tmp_path / "run"
    logs: list[str] = []
    train_head("sgd", cache, run, head_args={"epochs": 2}, log=logs.append)
    assert not any("replaced" in line for line in logs)  # a new folder: nothing replaced
    assert (run / "training_curves.png").is_file() and (run / "head" / "sgd.npz").is_file()
    _fake_export(run)
    (run / "predictions.csv").write_text("path,label\n")  # the user's own file (make predict OUT=)

    logs.clear()
    train_head("logreg", cache, run, head_args={"C": 0.01}, log=logs.append)
    assert f"replaced the previous run in {run} (its export/ removed: re-run `make export RUN={run}`)" in logs
    assert not (run / "export").exists()
    assert not (run / "training_curves.png").exists()  # the sgd head's curves, not the logreg's
    assert sorted(p.name for p in (run / "head").iterdir()) == ["head.json", "logreg.npz"]
    assert json.loads((run / "metrics.json").read_text())["head_args"]["C"] == 0.01
    assert (run / "predictions.csv").is_file() and (run / "report.html").is_file()

    logs.clear()
    train_head("logreg", cache, run, plots=False, log=logs.append)  # no plots: the old report must not stay
    assert f"replaced the previous run in {run}" in logs
    assert not (run / "report.html").exists() and not (run / "confusion_matrix.png").exists()


def test_compare_heads_refuses_to_replace_a_tuned_or_exported_run_before_training(tmp_path, monkeypatch):
    """compare-heads trains into runs/<cache>/<head>, train-head's folder: it replaced a tuned run and deleted its
    export/, saying so only afterwards."""
    from heads import compare

    cache = write_cache(tmp_path / "a.h5", OLD)
    other = write_cache(tmp_path / "b.h5", OLD)
    monkeypatch.chdir(tmp_path)
    runs = Path("runs") / "a"
    train_head("logreg", cache, runs / "logreg", head_args={"C": 0.1}, plots=False, **QUIET)
    train_head("ridge", cache, runs / "ridge", plots=False, **QUIET)  # defaults, as compare-heads trains it...
    _fake_export(runs / "ridge")  # ...but exported
    train_head("knn", other, runs / "knn", plots=False, **QUIET)  # another cache, in this cache's folder
    train_head("sgd", cache, runs / "sgd", plots=False, **QUIET)  # what compare-heads itself would write
    before = {p: p.stat().st_mtime_ns for p in Path("runs").rglob("*") if p.is_file()}
    trained: list[str] = []
    monkeypatch.setattr(compare, "train_head", lambda name, *a, **k: trained.append(name))
    with pytest.raises(ValueError) as err:
        compare.compare_heads(cache, ["logreg", "ridge", "knn", "sgd"], **QUIET)
    assert str(err.value) == (
        "compare-heads trains each head into runs/a/<head> with its default arguments, which would replace work it "
        "cannot make again: runs/a/logreg holds a run trained with HEAD_ARGS='C=0.1'; runs/a/ridge holds an export/ "
        "made by `make export`; runs/a/knn holds a run on b.h5. Pass OUT=<another folder> (--out, out_dir=) to "
        "compare there, or move those runs away; nothing was trained")
    assert trained == [] and before == {p: p.stat().st_mtime_ns for p in Path("runs").rglob("*") if p.is_file()}
    monkeypatch.undo()  # the real train_head again
    # Over its own runs (default arguments, this cache, no export) a comparison runs again, replacing them
    monkeypatch.chdir(tmp_path)
    table = compare.compare_heads(cache, ["sgd"], **QUIET)
    assert list(table["head"]) == ["sgd"] and (runs / "compare.md").is_file()
    assert compare.compare_heads(cache, ["sgd"], **QUIET)["val_accuracy"].tolist() == table["val_accuracy"].tolist()
    compare.compare_heads(cache, ["sgd"], train_rounds="clean", **QUIET)  # other rounds: still its own run
    # OUT= elsewhere leaves the user's runs alone
    compare.compare_heads(cache, ["logreg", "ridge"], "elsewhere", **QUIET)
    assert json.loads((runs / "logreg" / "metrics.json").read_text())["head_args"]["C"] == 0.1
    assert (runs / "ridge" / "export" / "model.keras").is_file()

def _dense_run(run: Path, cache: Path, **changed) -> None:
    """A dense run's run.json and metrics.json (all work_at_stake reads), trained on ``cache`` with ``changed``."""
    from heads.registry import create_head

    run.mkdir()
    (run / "run.json").write_text(json.dumps({"head": "dense", "feature_files": [str(cache.resolve())]}))
    (run / "metrics.json").write_text(json.dumps({"head_args": {**create_head("dense", seed=0).get_params(), **changed},
                                                  "train_rounds": "all"}))


def test_work_at_stake_names_head_args_as_head_args_spells_them(tmp_path):
    """It said HEAD_ARGS='standardize=False', Python's spelling, which HEAD_ARGS refuses."""
    from heads.train import work_at_stake

    _dense_run(tmp_path / "dense", tmp_path / "a.h5", units=64, units2=16, standardize=False)
    assert work_at_stake(tmp_path / "dense", "dense", [tmp_path / "a.h5"]) == [
        "a run trained with HEAD_ARGS='units=64 units2=16 standardize=false'"]
    assert parse_head_args("units=64 units2=16 standardize=false") == {"units": 64, "units2": 16, "standardize": False}

def test_work_at_stake_names_the_path_of_another_cache_of_the_same_name(tmp_path):
    """A run on another a.h5 (the cache folder renamed, the clone moved) said 'a run on a.h5' to a comparison on
    a.h5."""
    from heads.train import work_at_stake

    old, new = tmp_path / "old" / "a.h5", tmp_path / "new" / "a.h5"
    _dense_run(tmp_path / "dense", old)
    assert work_at_stake(tmp_path / "dense", "dense", [new]) == [f"a run on {old.resolve()}"]
    assert work_at_stake(tmp_path / "dense", "dense", [tmp_path / "b.h5"]) == ["a run on a.h5"]
    assert work_at_stake(tmp_path / "dense", "dense", [old]) == []


def test_a_folder_that_is_not_a_run_is_left_alone(tmp_path):
    cache = write_cache(tmp_path / "a.h5", OLD)
    run = tmp_path / "mine"
    _fake_export(run)  # no run.json: not a run folder, so its export/ is not ours to remove
    (run / "report.html").write_text("mine")
    train_head("logreg", cache, run, plots=False, **QUIET)
    assert (run / "export" / "model.keras").is_file() and (run / "report.html").read_text() == "mine"

    shutil.rmtree(run / "export")
    (run / "export").mkdir()
    (run / "export" / "notes.txt").write_text("not an export")  # a folder make export did not write
    train_head("logreg", cache, run, plots=False, **QUIET)
    assert (run / "export" / "notes.txt").is_file()


def test_a_failed_retrain_keeps_the_previous_run(tmp_path):
    cache = write_cache(tmp_path / "a.h5", OLD)
    run = tmp_path / "run"
    train_head("logreg", cache, run, plots=False, **QUIET)
    _fake_export(run)
    with pytest.raises(ValueError, match="n_neighbors"):
        train_head("knn", cache, run, head_args={"n_neighbors": 0}, **QUIET)
    assert (run / "export" / "model.keras").is_file() and (run / "head" / "logreg.npz").is_file()


# -- 3. HEAD_ARGS separated by commas, HEAD in another case --------------------------------------------------------

@pytest.mark.parametrize("text,fixed", [
    ("units=64,dropout1=0.3", "units=64 dropout1=0.3"),
    ("units=64, dropout1=0.3", "units=64 dropout1=0.3"),
    ("C=0.5,max_iter=500 seed=1", "C=0.5 max_iter=500 seed=1"),
])
def test_head_args_joined_by_commas_say_they_are_space_separated(text, fixed):
    with pytest.raises(ValueError) as err:
        parse_head_args(text)
    assert "separated by spaces, not commas" in str(err.value)
    assert f"HEAD_ARGS='{fixed}'" in str(err.value)
    assert parse_head_args(fixed)  # the suggestion parses


def test_head_args_values_without_a_second_argument_still_parse():
    assert parse_head_args("units=64 dropout1=0.3 weights=distance") == {
        "units": 64, "dropout1": 0.3, "weights": "distance"}


def test_head_args_given_as_text_in_python_say_to_pass_a_dict(tmp_path):
    """train_head(..., head_args="C=0.5") failed with "dictionary update sequence element #0 has length 1"."""
    cache = write_cache(tmp_path / "a.h5", OLD)
    with pytest.raises(TypeError, match=r"head_args='C=0.5 max_iter=50' is text, .* pass a dict: "
                                        r"head_args=\{'C': 0.5, 'max_iter': 50\}"):
        train_head("logreg", cache, tmp_path / "run", head_args="C=0.5 max_iter=50", **QUIET)
    with pytest.raises(TypeError, match=r"pass a dict, e.g. head_args=\{'C': 0.5\}"):
        train_head("logreg", cache, tmp_path / "run", head_args="C", **QUIET)
    assert not (tmp_path / "run").exists()


def test_head_args_with_commas_on_the_command_line(tmp_path, capsys):
    from heads.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--head", "dense", "--features", str(write_cache(tmp_path / "a.h5", OLD)), "--run",
              str(tmp_path / "run"), "--head-args", "units=64,dropout1=0.3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "HEAD_ARGS='units=64 dropout1=0.3'" in err and "is not allowed" not in err


def test_head_names_are_case_insensitive(tmp_path, monkeypatch):
    cache = write_cache(tmp_path / "a.h5", OLD)
    monkeypatch.chdir(tmp_path)
    result = train_head("LogReg", cache, plots=False, **QUIET)
    assert result.run_dir == Path("runs") / "a" / "logreg"
    assert result.metrics["head"] == "logreg"
    assert json.loads((result.run_dir / "run.json").read_text())["head"] == "logreg"
    assert train_head("Linear_SVM", cache, plots=False, **QUIET).metrics["head"] == "linear-svm"
    with pytest.raises(ValueError, match="unknown HEAD='Denser'"):
        train_head("Denser", cache, **QUIET)
    from heads.compare import compare_heads

    table = compare_heads(cache, ["Ridge", "LOGREG"], tmp_path / "cmp", log=lambda m: None)
    assert list(table["head"]) == ["ridge", "logreg"] and (tmp_path / "cmp" / "ridge" / "run.json").is_file()
    # HEADS=logreg,LogReg trained logreg twice into one run folder and tabulated it twice; an empty name
    # (HEADS=logreg, with a trailing comma) stopped with "unknown HEAD=''": now left out, as BACKBONES= does
    with pytest.raises(ValueError, match="HEADS= names logreg twice"):
        compare_heads(cache, ["logreg", "", "LogReg", "ridge"], tmp_path / "twice", log=lambda m: None)
    assert not (tmp_path / "twice").exists()
