"""What `make extract` says and records: its inputs (LABELS, TEST, ID_COL, LABEL_COL), refusals that name
what differs, the classes it found, WORKERS= on little data, and which cache `make train-head` picks next.

One Kaggle-layout extraction (module fixture) serves every test; tests that change a cache work on copies.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import CLASSES, SIZE, draw

from extract import CacheError, FeatureCache, extract_features
from extract.cache import newest_complete
from extract.verify import verify_cache

KW = dict(size=SIZE, weights="none", dtype="float32", progress=False)
N_PER_CLASS, N_BROKEN, N_TEST = 5, 2, 3
INPUT_ATTRS = ("labels_csv", "test_root", "id_col", "label_col")  # root attributes (features_cache/README.md)


def write_inputs(root: Path) -> dict:
    """Kaggle layout with a non-default id column (ID_COL= needed, LABEL_COL= left to discovery), a class whose
    every image is corrupt (no training row), and an unlabelled TEST= folder."""
    rng = np.random.default_rng(3)
    images, test = root / "train", root / "test"
    images.mkdir(parents=True)
    test.mkdir()
    rows = ["file_id,kind"]
    for kind in CLASSES:
        for i in range(N_PER_CLASS):
            draw(kind, rng).save(images / f"{kind}{i}.jpg", quality=95)
            rows.append(f"{kind}{i},{kind}")
    for i in range(N_BROKEN):
        (images / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
        rows.append(f"broken{i},broken")
    for i in range(N_TEST):
        draw(CLASSES[i], rng).save(test / f"t{i}.jpg", quality=95)
    csv = root / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return {"data": images, "labels": csv, "test": test, "id_col": "file_id"}


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("kaggle")
    inputs = write_inputs(root)
    logs: list[str] = []
    # 20 images in one batch of 64: WORKERS=2 has a single batch to give out.
    result = extract_features(**inputs, cache_dir=root / "cache", workers=2, log=logs.append, **KW)
    return {"inputs": inputs, "result": result, "logs": logs, "root": root}


def copy_cache(kaggle: dict, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(kaggle["result"].path, to)
    return to


def test_the_cache_records_labels_test_and_the_columns_used(kaggle):
    inputs = kaggle["inputs"]
    with FeatureCache(kaggle["result"].path) as c:
        assert c.inputs.labels_csv == inputs["labels"].resolve() and c.inputs.labels_csv.is_absolute()
        assert c.inputs.test_root == inputs["test"].resolve()
        assert (c.inputs.id_col, c.inputs.label_col) == ("file_id", "kind")  # as given; discovery's default
        assert {c.attrs[name] for name in ("labels_csv", "test_root")} == {str(inputs["labels"].resolve()),
                                                                         str(inputs["test"].resolve())}


def test_verify_with_no_variables_uses_the_recorded_inputs(kaggle):
    report = verify_cache(kaggle["result"].path)
    assert report["fingerprint"] == "matches DATA", report["problems"]
    assert report["ok"]
    assert report["rows_per_class"]["broken"]["train"] == 0 and report["warnings"]  # whole, with its warning


def test_extract_command_is_complete_enough_to_rerun(kaggle, tmp_path):
    from heads.train import extract_command

    with FeatureCache(kaggle["result"].path) as c:
        line = extract_command(c)
    words = dict(w.split("=", 1) for w in shlex.split(line)[2:])
    inputs = kaggle["inputs"]
    assert words["LABELS"] == str(inputs["labels"].resolve()) and words["TEST"] == str(inputs["test"].resolve())
    assert (words["ID_COL"], words["LABEL_COL"]) == ("file_id", "kind")
    again = extract_features(words["DATA"], words["LABELS"], words["TEST"], out=words["OUT"],
                             id_col=words["ID_COL"], label_col=words["LABEL_COL"], pooling=words["POOLING"],
                             size=int(words["SIZE"]), weights=words["WEIGHTS"], dtype=words["DTYPE"],
                             val=float(words["VAL"]), seed=int(words["SEED"]), progress=False, log=lambda m: None)
    assert again.up_to_date


def test_a_rerun_without_the_recorded_test_folder_is_refused(kaggle, tmp_path):
    inputs = kaggle["inputs"]
    out = copy_cache(kaggle, tmp_path / "c.h5")
    no_test = {k: v for k, v in inputs.items() if k != "test"}
    with pytest.raises(CacheError, match=rf"TEST={inputs['test'].resolve()}, this run has no TEST=.*"
                                         rf"0 added, {N_TEST} removed.*pass TEST=.* again.*OUT=.*OVERWRITE=1"):
        extract_features(**no_test, out=out, log=lambda m: None, **KW)
    other = tmp_path / "other_test"
    shutil.copytree(inputs["test"], other)
    (other / "t0.jpg").unlink()
    with pytest.raises(CacheError, match=rf"this run has TEST={other}"):
        extract_features(**{**inputs, "test": other}, out=out, log=lambda m: None, **KW)
    with FeatureCache(out) as c:  # untouched
        assert int((c.column("split") == "test").sum()) == N_TEST


def test_a_rerun_with_another_label_column_or_csv_that_changes_rows_is_refused(kaggle, tmp_path):
    inputs = kaggle["inputs"]
    out = copy_cache(kaggle, tmp_path / "c.h5")
    relabelled = tmp_path / "labels2.csv"  # a second label column in which circles are squares
    rows = [line.split(",") for line in inputs["labels"].read_text().splitlines()[1:]]
    relabelled.write_text("file_id,kind,shape\n" + "".join(
        f"{i},{k},{'square' if k == 'circle' else k}\n" for i, k in rows))
    with pytest.raises(CacheError, match=rf"LABELS={inputs['labels'].resolve()}, this run has LABELS={relabelled}.*"
                                         r"LABEL_COL=kind, this run has LABEL_COL=shape.*pass LABELS=.* again"):
        extract_features(**{**inputs, "labels": relabelled}, label_col="shape", out=out, log=lambda m: None, **KW)


def test_the_same_rows_under_a_moved_csv_are_recorded_not_refused(kaggle, tmp_path):
    inputs = kaggle["inputs"]
    out = copy_cache(kaggle, tmp_path / "c.h5")
    moved = tmp_path / "moved.csv"
    shutil.copy2(inputs["labels"], moved)
    logs: list[str] = []
    result = extract_features(**{**inputs, "labels": moved}, out=out, log=logs.append, **KW)
    assert any("same images, other paths" in line for line in logs)
    with FeatureCache(out) as c:
        assert c.inputs.labels_csv == moved.resolve() and c.n_rows == result.rows == kaggle["result"].rows


def test_an_older_cache_without_recorded_inputs_still_works(kaggle, tmp_path):
    from heads.train import extract_command

    inputs = kaggle["inputs"]
    out = copy_cache(kaggle, tmp_path / "old.h5")
    with h5py.File(out, "r+") as f:
        for name in INPUT_ATTRS:
            if name in f.attrs:
                del f.attrs[name]
    with FeatureCache(out) as c:
        assert c.inputs is None
        assert "LABELS=" not in extract_command(c)
    report = verify_cache(out, labels=inputs["labels"], test=inputs["test"], id_col="file_id")
    assert report["fingerprint"] == "matches DATA" and report["ok"]
    assert extract_features(**inputs, out=out, log=lambda m: None, **KW).up_to_date
    no_test = {k: v for k, v in inputs.items() if k != "test"}
    with pytest.raises(CacheError, match=rf"holds {N_TEST} unlabelled test rows.*no TEST="):
        extract_features(**no_test, out=out, log=lambda m: None, **KW)


def test_another_config_names_what_differs(kaggle, tmp_path):
    out = copy_cache(kaggle, tmp_path / "c.h5")
    with pytest.raises(CacheError, match=r"another config \(pooling: avg in the file, max asked; "
                                         r"seed: 0 in the file, 1 asked\).*OVERWRITE=1"):
        extract_features(**kaggle["inputs"], out=out, pooling="max", seed=1, log=lambda m: None, **KW)


def test_out_and_cache_dir_expand_the_home_folder(kaggle, tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    copy_cache(kaggle, home / "x.h5")
    copy_cache(kaggle, home / "cc" / kaggle["result"].path.name)
    quiet = dict(log=lambda m: None, **KW)
    assert extract_features(**kaggle["inputs"], out="~/x.h5", **quiet).path == home / "x.h5"
    by_dir = extract_features(**kaggle["inputs"], cache_dir="~/cc", **quiet)
    assert by_dir.up_to_date and by_dir.path == home / "cc" / kaggle["result"].path.name
    assert not (cwd / "~").exists()


def test_workers_beyond_the_batches_are_said_and_one_batch_runs_in_process(kaggle):
    logs = kaggle["logs"]
    n = len(CLASSES) * N_PER_CLASS + N_BROKEN + N_TEST
    assert f"WORKERS=2: only {n} images to extract, 1 batch of BATCH=64; running it in this process" in logs
    assert not [line for line in logs if line.startswith("worker ")]
    assert kaggle["result"].worker_peak_rss_mb == ()  # no worker process


def test_a_class_without_training_rows_in_a_labels_csv_names_its_files_and_the_csv(kaggle):
    warning = next(line for line in kaggle["logs"] if line.startswith("WARNING: 1 class has no training row"))
    assert ": broken; heads cannot learn it. Skipped: broken0.jpg (" in warning and "broken1.jpg (" in warning
    assert "remove their rows from labels.csv" in warning and "folder" not in warning


def test_the_classes_found_are_said_at_the_start(kaggle):
    line = next(line for line in kaggle["logs"] if line.startswith("found "))
    n = len(CLASSES) * N_PER_CLASS + N_BROKEN  # the labelled ones; the unlabelled test images are said apart
    assert line.startswith(f"found {n} images in 4 classes (images train/val/test): broken ")
    with FeatureCache(kaggle["result"].path) as c:
        assert c.class_names == ["broken", *CLASSES]
    for name in ("broken", *CLASSES):
        assert f" {name} " in line
    assert line.endswith(f"; and {N_TEST} unlabelled test images (TEST=)")
    assert kaggle["logs"].index(line) < min(i for i, m in enumerate(kaggle["logs"]) if m.startswith("WORKERS="))


def test_many_classes_are_summarised(kaggle):
    from extract.discover import Discovery, Item
    from extract.pipeline import class_summary

    names = [f"c{i:02d}" for i in range(12)]
    items = [Item(f"{n}/{k}", "", i, "train") for i, n in enumerate(names) for k in range(2 + i)]
    items += [Item(f"{n}/v", "", i, "val") for i, n in enumerate(names) if i != 3]
    text = class_summary(Discovery("d", "/d", names, items), val=0.2)
    assert "12 classes: c00, c01, c02, c03, c04, c05, ... c11" in text
    assert "training images per class: 2 (c00) to 13 (c11)" in text and "1 class has no val image: c03" in text


def test_an_up_to_date_extract_is_the_cache_train_head_takes_next(kaggle, tmp_path):
    from heads.train import train_head

    mine = copy_cache(kaggle, tmp_path / "cache" / kaggle["result"].path.name)
    demo = copy_cache(kaggle, tmp_path / "cache" / "demo-newer.h5")
    os.utime(mine, (1e9, 1e9))
    assert newest_complete(tmp_path / "cache") == demo
    again = extract_features(**kaggle["inputs"], cache_dir=tmp_path / "cache", log=lambda m: None, **KW)
    assert again.up_to_date and again.path == mine
    assert newest_complete(tmp_path / "cache") == mine
    logs: list[str] = []
    train_head("logreg", cache_dir=tmp_path / "cache", run=tmp_path / "run", plots=False, log=logs.append)
    assert f"FEATURES not given: using the newest complete cache {mine} (of 2 in {tmp_path / 'cache'}/)" in logs
