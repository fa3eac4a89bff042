"""`make verify` lists skipped files and flags unlearnable classes; SUBMISSION=1 ids are unique image stems;
``~`` works in the Python API (DATA, LABELS, TEST, FEATURES, RUN, IMAGES, OUT)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, SIZE, draw, heads_cli, write_class_folders, write_kaggle
from test_heads_train import blobs, write_cache

from extract import discover, extract_features
from extract.decode import DecodeError, load_array
from extract.verify import format_report, verify_cache
from heads import predict, train_head

QUIET = {"log": lambda m: None}
REPO = Path(__file__).resolve().parents[1]
predict_module = sys.modules["heads.predict"]  # `heads.predict` the attribute is the function


@pytest.fixture(scope="module")
def broken_class_cache(tmp_path_factory) -> tuple[Path, Path]:
    """A real cache whose 'square' images are all text (so it has no row) plus a file outside any class."""
    data = write_class_folders(tmp_path_factory.mktemp("bc") / "shapes", per_class=3)
    for png in (data / "square").iterdir():
        png.write_text("not a picture")
    (data / "notes.txt").write_text("about the data")
    out = extract_features(data, out=data.parent / "shapes.h5", size=SIZE, weights="none", dtype="float32",
                           batch_size=8, progress=False, **QUIET).path
    return data, out


def test_verify_lists_every_skipped_file_and_flags_a_class_with_no_training_rows(broken_class_cache):
    data, out = broken_class_cache
    report = verify_cache(out)
    skipped = dict(report["skipped_files"])
    assert set(skipped) == {"notes.txt", "square/square_00.png", "square/square_01.png", "square/square_02.png"}
    assert skipped["square/square_00.png"].startswith("not an image")
    assert skipped["notes.txt"].startswith("not in a class folder")
    assert report["rows_per_class"]["square"] == {"train": 0, "val": 0, "test": 0}
    assert sum(report["rows_per_class"]["circle"].values()) == 3
    assert report["ok"]  # whole, not corrupt: a warning, exit 0
    (warning,) = report["warnings"]
    assert "'square' has no training rows" in warning and "square/square_00.png (not an image" in warning

    proc = subprocess.run([sys.executable, "-m", "extract.verify", "--features", str(out)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for path, reason in report["skipped_files"]:
        assert f"  {path}: {reason}" in lines
    assert "  square: 0/0/0" in lines
    assert any(ln.startswith("WARNING: class 'square' has no training rows") for ln in lines)
    assert lines[-1] == "OK (with 1 warning above)"


def test_verify_says_how_many_skips_it_did_not_print_and_works_without_data(broken_class_cache, tmp_path):
    data, out = broken_class_cache
    text = format_report(verify_cache(out), max_skipped=1)
    assert "skipped files (4):" in text and "... and 3 more" in text and "--all" in text
    # Without DATA the class of a skipped file is read from its folder.
    report = verify_cache(out, data=tmp_path / "moved_away")
    assert report["fingerprint"] == "DATA not available; not checked"
    (warning,) = report["warnings"]
    assert "'square' has no training rows (3 of its files were skipped" in warning


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    """A logreg run on 8-d blobs; tests replace the backbone with :func:`fake_embed`."""
    folder = tmp_path_factory.mktemp("run")
    cache = write_cache(folder / "blobs.h5", *blobs(n_per_class=10, d=8), class_names=list(CLASSES))
    return train_head("logreg", cache, folder / "runs" / "blobs" / "logreg", plots=False, **QUIET).run_dir


def fake_embed(config: dict, paths: list[Path], batch_size: int, max_pixels: int, consume) -> list[str]:
    """The real decoder (real failure reasons) and fixed 8-d features instead of a backbone, in batches."""
    errors = []
    for p in paths:
        try:
            load_array(str(p), 16, max_pixels)
            errors.append("")
        except DecodeError as err:
            errors.append(err.reason)
    for start in range(0, len(paths), batch_size):
        idx = np.arange(start, min(start + batch_size, len(paths)))
        consume(idx, np.ones((len(idx), 8), np.float32), np.array([not errors[i] for i in idx]))
    return errors


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw("circle", np.random.default_rng(seed)).save(path, format="PNG")
    return path


def test_submission_refuses_duplicate_ids_before_running_the_backbone(synthetic_run, tmp_path, monkeypatch):
    new = tmp_path / "new"
    _png(new / "sixteen.png")
    _png(new / "sub" / "sixteen.png", 1)
    _png(new / "seventeen.png", 2)

    def no_backbone(*args: object) -> None:
        raise AssertionError("the backbone ran before the ids were checked")

    monkeypatch.setattr(predict_module, "_embed_with", no_backbone)
    with pytest.raises(ValueError, match=r"1 id belongs to more than one file.*sixteen \(sixteen.png, "
                                         r"sub/sixteen.png\).*remove or rename"):
        predict(synthetic_run, new, tmp_path / "sub.csv", submission=True, **QUIET)
    assert not (tmp_path / "sub.csv").exists()
    # The same folder is fine for a plain prediction table: its rows are paths, not ids.
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    assert len(predict(synthetic_run, new, tmp_path / "pred.csv", **QUIET)) == 3
    # From the cache's test rows (no IMAGES= given) the fix is in TEST=, not in an IMAGES= never passed.
    with pytest.raises(ValueError, match=r"more than one file in the cached test rows \(TEST=\): gray \(test/gray.jpg, "
                                         r"test/gray.png\)\. .*run `make extract` again") as err:
        predict_module._refuse_duplicate_ids([Path("test/gray.jpg"), Path("test/gray.png")], None)
    assert "IMAGES=." not in str(err.value)


def test_submission_leaves_out_files_that_are_not_images_but_keeps_broken_images(synthetic_run, tmp_path,
                                                                                   monkeypatch):
    new = tmp_path / "new"
    _png(new / "a.png")
    _png(new / "noext", 1)  # decodes: an image whatever its name
    (new / "readme.txt").write_text("test images from the competition page")
    (new / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    logs: list[str] = []
    table = predict(synthetic_run, new, tmp_path / "sub.csv", submission=True, log=logs.append)
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert sorted(sub["id"]) == ["a", "broken", "noext"]
    np.testing.assert_allclose(sub.loc[sub["id"] == "broken", list(CLASSES)], 1 / 3)
    assert any("left out of the submission" in m and "readme.txt (not an image" in m for m in logs), logs
    assert len(table) == 4  # the table still lists every file, readme.txt with its error
    assert table.loc[table["path"].str.endswith("readme.txt"), "error"].str.startswith("not an image").all()


def test_predict_says_how_many_unreadable_files_its_log_line_does_not_name(synthetic_run, tmp_path, monkeypatch):
    """The log named the first 5 unreadable files under "7 of 8 images could not be read", and nothing of the others."""
    new = tmp_path / "new"
    _png(new / "a.png")
    for i in range(7):
        (new / f"empty{i}.jpg").write_bytes(b"")
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    logs: list[str] = []
    table = predict(synthetic_run, new, tmp_path / "p.csv", log=logs.append)
    (line,) = [m for m in logs if "could not be read" in m]
    assert line.startswith("7 of 8 images could not be read: empty0.jpg (empty file")
    assert line.endswith(f"; and 2 more (every one is in the error column of {tmp_path / 'p.csv'})"), line
    assert (table["error"] != "").sum() == 7
    logs.clear()
    predict(synthetic_run, new, log=logs.append)  # `make predict` without OUT= prints no error column
    assert any(m.endswith("; and 2 more (OUT= writes every one, in the error column)") for m in logs), logs


def test_tilde_is_the_home_folder_for_data_labels_and_test(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    images, _ = write_kaggle(tmp_path / "dogs", per_class=2)
    _png(tmp_path / "dogs" / "test" / "t1.png")
    found = discover("~/dogs/train", labels="~/dogs/labels.csv", test="~/dogs/test")
    assert Path(found.root) == images.resolve()
    assert len(found.items) == 2 * len(CLASSES) + 1
    assert Path(found.items[-1].abspath) == tmp_path / "dogs" / "test" / "t1.png"


def test_tilde_is_the_home_folder_for_features(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_cache(tmp_path / "c.h5", *blobs(n_per_class=5, d=8), class_names=list(CLASSES))
    assert verify_cache("~/c.h5")["rows"] == 15


def test_tilde_is_the_home_folder_for_run_images_and_out(synthetic_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    run = tmp_path / "runs" / "logreg"
    shutil.copytree(synthetic_run, run)
    _png(tmp_path / "new" / "cmyk.png")
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    table = predict("~/runs/logreg", "~/new", "~/out/pred.csv", **QUIET)
    assert len(table) == 1 and (tmp_path / "out" / "pred.csv").is_file()
    assert len(predict("~/runs/logreg", "~/new/cmyk.png", **QUIET)) == 1


@pytest.mark.parametrize("out,submission,said", [
    (None, True, "SUBMISSION=1 writes a CSV file: pass OUT=, e.g. OUT=submission.csv"),
    ("folder", False, "is a folder; pass a file, e.g. OUT="),
    ("folder", True, "is a folder; pass a file, e.g. OUT="),
])
def test_predict_refuses_an_unusable_out_before_running_the_backbone(synthetic_run, tmp_path, monkeypatch, out,
                                                                    submission, said):
    """SUBMISSION=1 without OUT= wrote nothing and exited 0; OUT= a folder failed with IsADirectoryError after
    the backbone had run over every image."""
    _png(tmp_path / "new" / "a.png")
    (tmp_path / "folder").mkdir()

    def no_backbone(*args: object) -> None:
        raise AssertionError("the backbone ran before OUT= was checked")

    monkeypatch.setattr(predict_module, "_embed_with", no_backbone)
    with pytest.raises(ValueError, match=re.escape(said)):
        predict(synthetic_run, tmp_path / "new", out and tmp_path / out, submission=submission, **QUIET)


def test_verify_takes_the_labels_columns(tmp_path, capsys):
    """`make verify … ID_COL=image_id` failed with "has no id column 'id' … Set ID_COL=", which was set."""
    from extract.verify import main

    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    csv.write_text(csv.read_text().replace("id,breed", "image_id,dog_breed", 1))
    out = extract_features(images, csv, out=tmp_path / "k.h5", size=SIZE, weights="none", id_col="image_id",
                           label_col="dog_breed", progress=False, **QUIET).path
    main(["--features", str(out), "--data", str(images), "--labels", str(csv), "--id-col", "image_id",
          "--label-col", "dog_breed"])
    printed = capsys.readouterr().out
    assert "fingerprint: matches" in printed and printed.rstrip().endswith("OK"), printed


def test_predict_takes_max_pixels_as_extract_does(synthetic_run, tmp_path, monkeypatch):
    """The "too many pixels … (MAX_PIXELS=)" reason named a setting predict did not have."""
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    image = _png(tmp_path / "new" / "big.png")  # 64 x 48
    out = heads_cli("predict", "--run", str(synthetic_run), "--images", str(image), "--max-pixels", "3000",
                    "--out", str(tmp_path / "p.csv"))
    assert out.returncode == 0, out.stderr
    error = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)["error"][0]
    assert error == "too many pixels: 64x48 is over the limit of 3,000 (MAX_PIXELS=)"
    out = heads_cli("predict", "--run", str(synthetic_run), "--images", str(image), "--max-pixels", "3072",
                    "--out", str(tmp_path / "p.csv"))
    assert out.returncode == 0 and pd.read_csv(tmp_path / "p.csv", keep_default_na=False)["error"][0] == ""
    with pytest.raises(ValueError, match="MAX_PIXELS=0 must be at least 1 pixel"):
        predict(synthetic_run, image, max_pixels=0, **QUIET)


def test_a_submission_with_zero_probabilities_is_warned_about(synthetic_run, tmp_path, monkeypatch):
    """knn gives every class outside its vote probability 0: a log-loss submission pays ~34.5 per such miss."""
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    cache = write_cache(tmp_path / "blobs.h5", *blobs(n_per_class=10, d=8), class_names=list(CLASSES))
    knn_run = train_head("knn", cache, tmp_path / "knn", head_args={"n_neighbors": 1}, plots=False, **QUIET).run_dir
    images = tmp_path / "new"
    _png(images / "a.png"), _png(images / "b.png", 1)
    said: list[str] = []
    predict(knn_run, images, tmp_path / "sub.csv", submission=True, log=said.append)
    assert any(m.startswith("WARNING: 2 of 2 submission rows give some class probability 0 (knn); a log-loss")
               for m in said)
    said.clear()
    predict(synthetic_run, images, tmp_path / "sub2.csv", submission=True, log=said.append)
    assert not any("probability 0" in m for m in said)  # logreg's softmax is never exactly 0


def test_predict_writes_non_utf8_file_names_byte_exact_and_its_csv_atomically(synthetic_run, tmp_path, monkeypatch):
    """A file name that is not UTF-8 (x_\\xe9.png) stopped `make predict` at to_csv after the backbone had run
    ("surrogates not allowed"), leaving a CSV cut short before that file's row."""
    new = tmp_path / "new"
    for i, name in enumerate((b"a.png", b"x_\xe9.png", b"z.png")):
        _png(new / os.fsdecode(name), i)
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    predict(synthetic_run, new, tmp_path / "pred.csv", **QUIET)
    written = pd.read_csv(tmp_path / "pred.csv", encoding_errors="surrogateescape", keep_default_na=False)
    assert [os.fsencode(Path(p).name) for p in written["path"]] == [b"a.png", b"x_\xe9.png", b"z.png"]
    assert all(Path(p).is_file() for p in written["path"]) and (written["error"] == "").all()
    predict(synthetic_run, new, tmp_path / "sub.csv", submission=True, **QUIET)
    assert (tmp_path / "sub.csv").read_bytes().splitlines()[2].startswith(b"x_\xe9,")

    # A write that fails half-way leaves the CSV as it was, and no temporary file beside it.
    real_to_csv = pd.DataFrame.to_csv

    def disk_full(frame, path, **kwargs):
        real_to_csv(frame.iloc[:1], path, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    for out, submission in (("pred.csv", False), ("sub.csv", True)):
        before = (tmp_path / out).read_bytes()
        with pytest.raises(OSError, match="No space left"):
            predict(synthetic_run, new, tmp_path / out, submission=submission, **QUIET)
        assert (tmp_path / out).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "pred.csv", "sub.csv"]
    monkeypatch.setattr(pd.DataFrame, "to_csv", real_to_csv)

    # OUT= a symlink: its target gets the CSV and the link stays (a rename over it replaced the link).
    (tmp_path / "kept").mkdir()
    (tmp_path / "link.csv").symlink_to(tmp_path / "kept" / "target.csv")
    predict(synthetic_run, new, tmp_path / "link.csv", **QUIET)
    assert (tmp_path / "link.csv").is_symlink()
    assert len(pd.read_csv(tmp_path / "kept" / "target.csv", encoding_errors="surrogateescape")) == 3
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["target.csv"]


def test_predict_prints_a_non_utf8_file_name_escaped(synthetic_run, tmp_path, monkeypatch):
    """With a strict UTF-8 stdout (an en_US.UTF-8 terminal), printing the table failed after the CSV was written."""
    from heads.__main__ import main

    _png(tmp_path / "new" / os.fsdecode(b"x_\xe9.png"))
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    main(["predict", "--run", str(synthetic_run), "--images", str(tmp_path / "new")])
    stdout.flush()
    assert b"x_\\udce9.png" in stdout.buffer.getvalue()


def test_predict_without_out_says_its_printed_table_is_cut(monkeypatch, capsys):
    """Without OUT= `make predict` printed 30 of 2,006 rows and wrote the others nowhere, without a word."""
    import heads
    from heads.__main__ import main

    rows = lambda n: pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "label": "circle",  # noqa: E731
                                   "probability": 1.0, "top5": "", "error": ""})
    for n, said in ((31, "shown: the first and last 15 of 31 rows; pass OUT=<file.csv> to write every row"),
                    (30, None)):
        monkeypatch.setattr(heads, "predict", lambda *a, n=n, **k: rows(n))
        main(["predict", "--run", "r"])
        err = capsys.readouterr().err
        assert (said in err) if said else "shown:" not in err, err
    main(["predict", "--run", "r", "--out", "p.csv"])  # the CSV has every row
    assert "shown:" not in capsys.readouterr().err


def test_predict_gives_a_symlink_loop_the_reason_extract_gives(synthetic_run, tmp_path, monkeypatch):
    """`make predict` listed a symlink to a folder above it as "loopdir (unreadable: Is a directory)"."""
    new = tmp_path / "new"
    _png(new / "a.png")
    (new / "loopdir").symlink_to(new, target_is_directory=True)
    (new / "sub").mkdir()
    (new / "sub" / "up").symlink_to("..", target_is_directory=True)
    monkeypatch.setattr(predict_module, "_embed_with", fake_embed)
    logs: list[str] = []
    table = predict(synthetic_run, new, log=logs.append).set_index("path")["error"]
    assert table[str(new / "a.png")] == ""
    assert table[str(new / "loopdir")] == f"symlink loop: loopdir points to {new}, a folder above it; not followed"
    assert table[str(new / "sub" / "up")] == "symlink loop: sub/up points to .., a folder above it; not followed"
    assert any("loopdir (symlink loop: loopdir points to" in m for m in logs), logs
    # The same reason as extract's, from the same code.
    write_class_folders(tmp_path / "shapes", per_class=1)
    (tmp_path / "shapes" / "circle" / "loop").symlink_to(tmp_path / "shapes", target_is_directory=True)
    skipped = {sk.relpath: sk.reason for sk in discover(tmp_path / "shapes").skipped}
    assert skipped["circle/loop"] == f"symlink loop: circle/loop points to {tmp_path / 'shapes'}, a folder above it; " \
                                     f"not followed"
