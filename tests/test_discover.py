"""Discovery of awkward data sets: symlinked folders, loops, unreadable folders, empty class folders, empty CSVs."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, SIZE, draw, write_class_folders, write_kaggle

from extract import DataError, FeatureCache, discover, extract_features
from extract.cli_util import run_cli


def _discover_within(seconds: float, *args, **kwargs):
    """``discover`` in a daemon thread, so that a walk that never ends fails the test instead of hanging it."""
    out: dict = {}

    def go():
        try:
            out["found"] = discover(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001  (re-raised below, in the test's thread)
            out["error"] = err

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"discover did not finish within {seconds} s (following a symlink loop?)"
    if "error" in out:
        raise out["error"]
    return out["found"]


def _symlinked_set(tmp_path: Path) -> tuple[Path, Path]:
    """DATA=sl with circle/ real, square -> elsewhere/square and stripes -> elsewhere/stripes (folder symlinks),
    and a nested circle/more -> elsewhere/more_circles. Returns (DATA, elsewhere)."""
    elsewhere = write_class_folders(tmp_path / "elsewhere", per_class=3)
    data = tmp_path / "sl"
    data.mkdir()
    (elsewhere / "circle").rename(data / "circle")
    for kind in ("square", "stripes"):
        os.symlink(elsewhere / kind, data / kind, target_is_directory=True)
    (elsewhere / "more_circles").mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        draw("circle", rng).save(elsewhere / "more_circles" / f"extra_{i}.png")
    os.symlink(elsewhere / "more_circles", data / "circle" / "more", target_is_directory=True)
    return data, elsewhere


def test_symlinked_class_folders_and_subfolders_are_followed(tmp_path):
    data, _ = _symlinked_set(tmp_path)
    found = discover(data)
    assert found.class_names == list(CLASSES)
    assert found.skipped == []
    got = {it.relpath: found.class_names[it.label] for it in found.items}
    want = {f"{c}/{c}_{i:02d}.png": c for c in CLASSES for i in range(3)}
    want |= {f"circle/more/extra_{i}.png": "circle" for i in range(2)}
    assert got == want
    assert all(Path(it.abspath).is_file() for it in found.items)


def test_symlinked_subfolders_are_followed_for_csv_ids_and_the_test_folder(tmp_path):
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    outside = tmp_path / "outside"
    outside.mkdir()
    draw("square", np.random.default_rng(2)).save(outside / "abc.jpg")
    os.symlink(outside, images / "sub", target_is_directory=True)
    csv.write_text(csv.read_text() + "sub/abc,square\n")
    test = tmp_path / "test"
    test.mkdir()
    os.symlink(outside, test / "linked", target_is_directory=True)
    found = discover(images, labels=csv, test=test)
    by_rel = {it.relpath: it for it in found.items}
    assert found.class_names[by_rel["sub/abc.jpg"].label] == "square"
    assert by_rel["test/linked/abc.jpg"].label == -1
    assert found.skipped == []


def test_symlink_loops_are_listed_as_skipped_not_followed(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    os.symlink("..", data / "circle" / "up", target_is_directory=True)  # circle/up/circle/up/... forever
    os.symlink(".", data / "square" / "here", target_is_directory=True)
    os.symlink(".", data / "self", target_is_directory=True)  # DATA/self -> DATA: not a class folder
    found = _discover_within(30, data)
    assert found.class_names == list(CLASSES)
    assert sorted(it.relpath for it in found.items) == sorted(f"{c}/{c}_{i:02d}.png" for c in CLASSES for i in (0, 1))
    reasons = {s.relpath: s.reason for s in found.skipped}
    assert sorted(reasons) == ["circle/up", "self", "square/here"]
    assert all(r.startswith("symlink loop: ") and "not followed" in r for r in reasons.values())
    assert "points to .." in reasons["circle/up"]


def test_broken_symlinks_are_still_reported(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    os.symlink(tmp_path / "moved_away" / "fish", data / "fish", target_is_directory=True)
    os.symlink(tmp_path / "gone.png", data / "circle" / "gone.png")
    found = discover(data)
    assert found.class_names == list(CLASSES)
    assert found.skipped == [
        type(found.skipped[0])("fish", f"broken symlink: points to {tmp_path / 'moved_away' / 'fish'}")]
    gone = [it for it in found.items if it.relpath == "circle/gone.png"]
    assert len(gone) == 1 and gone[0].stamp.startswith("error:")  # extraction records it: "broken symlink: ..."


def test_an_unreadable_subfolder_is_listed_as_skipped(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "d", per_class=2)
    (data / "circle" / "locked").mkdir()
    draw("circle", np.random.default_rng(0)).save(data / "circle" / "locked" / "hidden_from_us.png")
    real_scandir = os.scandir

    def scandir(path="."):  # a chmod 000 folder, also when the tests run as root
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = discover(data)
    assert [(s.relpath, s.reason) for s in found.skipped] == [
        ("circle/locked", "unreadable folder: Permission denied; its images were not listed")]
    assert len(found.items) == 2 * len(CLASSES)


def test_a_labels_csv_with_only_a_header_is_named(tmp_path):
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    csv.write_text("id,breed\n")
    with pytest.raises(DataError, match=rf"^LABELS={csv} has no rows \(only a header: id,breed\); add one row"):
        discover(images, labels=csv)


def test_an_empty_labels_csv_is_named(tmp_path, capsys):
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    csv.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^LABELS={csv} is empty; it needs a header line \(e.g. id,breed\)"):
        discover(images, labels=csv)
    with pytest.raises(SystemExit) as exit_:  # what `make extract` prints
        run_cli(lambda: discover(images, labels=csv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: LABELS={csv} is empty;")


def test_an_unparseable_labels_csv_is_named(tmp_path):
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    csv.write_text(csv.read_text() + "a,b,c,d\n")
    with pytest.raises(DataError, match=rf"^LABELS={csv} is not a readable CSV \(.*Expected 2 fields"):
        discover(images, labels=csv)


def test_an_empty_class_folder_is_noted_and_is_not_a_class(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    (data / "fish").mkdir()
    (data / "newt").mkdir()
    (data / "newt" / ".DS_Store").write_bytes(b"x")  # hidden files are not images
    found = discover(data)
    assert found.class_names == list(CLASSES)
    assert found.notes == [
        "class folder fish/ is empty, so fish is not one of the classes; put images in it to make it one",
        "class folder newt/ is empty, so newt is not one of the classes; put images in it to make it one",
    ]
    assert found.skipped == []


def test_a_single_class_with_images_beside_empty_folders_is_refused(tmp_path):
    data = tmp_path / "d"
    (data / "cats").mkdir(parents=True)
    (data / "dogs").mkdir()
    for i in range(2):
        draw("circle", np.random.default_rng(i)).save(data / "cats" / f"{i}.png")
    with pytest.raises(DataError, match=r"only one class with images \('cats'\) \(its other class folders are empty\)"):
        discover(data)


def test_a_test_class_whose_training_folder_is_empty_is_named(tmp_path):
    write_class_folders(tmp_path / "d" / "train", per_class=2)
    write_class_folders(tmp_path / "d" / "test", per_class=1)
    (tmp_path / "d" / "train" / "fish").mkdir()
    (tmp_path / "d" / "test" / "fish").mkdir()
    draw("circle", np.random.default_rng(0)).save(tmp_path / "d" / "test" / "fish" / "nemo.png")
    with pytest.raises(DataError, match=r"test/fish is a class folder that the training set does not have "
                                        r"\(its training folder fish/ is empty\)"):
        discover(tmp_path / "d")
    (tmp_path / "d" / "test" / "fish" / "nemo.png").unlink()
    (tmp_path / "d" / "test" / "square" / "square_00.png").unlink()
    found = discover(tmp_path / "d")
    assert found.class_names == list(CLASSES)
    assert found.notes == [
        "class folder train/fish/ is empty, so fish is not one of the classes; put images in it to make it one",
        "class folder test/square/ is empty: that class has no test images",
    ]


def test_a_single_image_class_is_one_note_and_no_python_warning(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=3)
    (data / "lonely").mkdir()
    draw("square", np.random.default_rng(3)).save(data / "lonely" / "only.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = discover(data)
    assert [str(w.message) for w in caught] == []  # extract_features logs the note; a warning printed it twice
    assert found.notes == ["1 class has a single image (kept in train, none in val): lonely"]
    (data / "alone").mkdir()
    draw("circle", np.random.default_rng(4)).save(data / "alone" / "only.png")
    assert discover(data).notes == ["2 classes have a single image (kept in train, none in val): alone, lonely"]


def test_extraction_of_symlinked_class_folders_caches_every_class(tmp_path):
    """The walkthrough: the cache held 3 classes but only the real folder's rows, and the 2 symlinked folders
    were listed as skipped "images". Also: each note is logged once, and no Python warning is printed."""
    data, _ = _symlinked_set(tmp_path)
    (data / "fish").mkdir()
    (data / "lonely").mkdir()
    draw("square", np.random.default_rng(3)).save(data / "lonely" / "only.png")
    logged: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = extract_features(data, out=tmp_path / "sl.h5", size=SIZE, weights="none", batch_size=8,
                                  progress=False, log=logged.append)
    assert not [w for w in caught if "discover" in w.filename or "single image" in str(w.message)]
    notes = [m for m in logged if m.startswith("note:")]
    assert notes == [
        "note: class folder fish/ is empty, so fish is not one of the classes; put images in it to make it one",
        "note: 1 class has a single image (kept in train, none in val): lonely",
    ]
    with FeatureCache(result.path) as c:
        assert c.class_names == ["circle", "lonely", "square", "stripes"]
        per_class = {}
        for label in c.column("label"):
            per_class[c.class_names[label]] = per_class.get(c.class_names[label], 0) + 1
        assert per_class == {"circle": 5, "lonely": 1, "square": 3, "stripes": 3}
        assert c.skipped() == []
