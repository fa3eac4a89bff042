"""What extract refuses or redoes so that nothing is lost: other folders' caches, files that are not caches,
images skipped under a smaller MAX_PIXELS, settings that would do nothing, devices that do not exist."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import SIZE, draw, write_class_folders, write_kaggle

from extract import CacheError, DataError, FeatureCache, extract_features
from extract.pipeline import replica_strategy

KW = {"size": SIZE, "weights": "none", "dtype": "float32", "progress": False}


def quiet(logs: list[str] | None = None) -> dict:
    return {**KW, "log": (logs.append if logs is not None else lambda m: None)}


def test_a_same_named_folder_elsewhere_does_not_replace_the_cache(tmp_path):
    first = write_class_folders(tmp_path / "a" / "train", per_class=3)
    other = write_class_folders(tmp_path / "b" / "train", per_class=2, seed=5)
    cache = extract_features(first, cache_dir=tmp_path / "fc", **quiet()).path
    with FeatureCache(cache) as c:
        before = (c.column("path").tolist(), c.features().copy())
    with pytest.raises(CacheError, match=r"holds features of .*/a/train, not of DATA=.*/b/train.*OUT=.*OVERWRITE=1"):
        extract_features(other, cache_dir=tmp_path / "fc", **quiet())
    with FeatureCache(cache) as c:
        assert c.column("path").tolist() == before[0] and np.array_equal(c.features(), before[1])
    # The way out the message names: another OUT= keeps both.
    both = extract_features(other, cache_dir=tmp_path / "fc", out=tmp_path / "fc" / "b.h5", **quiet())
    assert both.rows == 6 and both.path != cache


def test_out_never_replaces_a_file_that_is_not_a_cache(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    csv = tmp_path / "labels.csv"
    csv.write_text("id,breed\n")
    for overwrite in (False, True):
        with pytest.raises(CacheError, match=r"OUT=.*labels.csv exists and is not a headswap cache.*even with "
                                             r"OVERWRITE=1"):
            extract_features(data, out=csv, overwrite=overwrite, **quiet())
    assert csv.read_text() == "id,breed\n"
    image = data / "circle" / "circle_00.png"
    image_bytes = image.read_bytes()
    with pytest.raises(DataError, match=r"OUT=.*circle_00.png is inside DATA="):
        extract_features(data, out=image, overwrite=True, **quiet())
    assert image.read_bytes() == image_bytes
    # A cache of its own is still replaced by OVERWRITE=1.
    cache = extract_features(data, out=tmp_path / "c.h5", **quiet()).path
    logs: list[str] = []
    assert extract_features(data, out=cache, overwrite=True, **quiet(logs)).rows == 6
    assert not any(line.startswith("up to date") for line in logs)


def test_raising_max_pixels_retries_the_images_skipped_for_their_size(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    draw("circle", np.random.default_rng(9), w=400, h=300).save(data / "circle" / "big.png")
    small = extract_features(data, out=tmp_path / "c.h5", max_pixels=100_000, **quiet())
    with FeatureCache(small.path) as c:
        assert [p for p, r in c.skipped() if r.startswith("too many pixels")] == ["circle/big.png"]
    logs: list[str] = []
    again = extract_features(data, out=tmp_path / "c.h5", max_pixels=100_000, **quiet(logs))
    assert again.up_to_date
    logs.clear()
    bigger = extract_features(data, out=tmp_path / "c.h5", **quiet(logs))
    assert not bigger.up_to_date and any("retrying them" in line for line in logs)
    with FeatureCache(bigger.path) as c:
        assert "circle/big.png" in c.column("path").tolist() and c.skipped() == [] and c.n_rows == 7
    assert extract_features(data, out=tmp_path / "c.h5", **quiet()).up_to_date
    with pytest.raises(ValueError, match="MAX_PIXELS=0 must be at least 1"):
        extract_features(data, out=tmp_path / "c.h5", max_pixels=0, **quiet())


def test_change_counts_say_what_changed_skipped_files_included(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=3)
    (data / "square" / "broken.png").write_bytes(b"not a png")
    cache = tmp_path / "c.h5"
    extract_features(data, out=cache, **quiet())
    rng = np.random.default_rng(3)
    for name in ("new1.png", "new2.png"):
        draw("circle", rng).save(data / "circle" / name)
    (data / "square" / "broken.png").unlink()  # skipped before, now gone
    (data / "stripes" / "stripes_00.png").unlink()
    touched = data / "square" / "square_00.png"
    draw("square", rng).save(touched)
    os.utime(touched, (1e9, 1e9))
    logs: list[str] = []
    extract_features(data, out=cache, **quiet(logs))
    assert any("2 added, 2 removed, 1 modified" in line for line in logs), logs


def test_a_cached_image_whose_labels_row_is_deleted_is_counted_as_now_skipped(tmp_path):
    """It used to read "0 added, 0 removed, 0 modified (labels or splits changed: the rows are relabelled)" while a
    row left the cache."""
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    extract_features(images, labels=csv, out=tmp_path / "c.h5", **quiet())
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    gone = lines[-1].split(",")[0] + ".jpg"
    logs: list[str] = []
    extract_features(images, labels=csv, out=tmp_path / "c.h5", **quiet(logs))
    assert ("data changed since c.h5 was made: 0 added, 0 removed, 0 modified, 1 cached before and now skipped "
            f"(e.g. {gone}: not in labels: labels.csv has no row for it)") in logs
    with FeatureCache(tmp_path / "c.h5") as c:
        assert c.n_rows == 5 and gone not in c.column("path").tolist() and [p for p, _ in c.skipped()] == [gone]


def test_augment_without_rounds_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    with pytest.raises(ValueError, match=r"AUGMENT=tutorial adds augmented views only with ROUNDS=K"):
        extract_features(data, out=tmp_path / "c.h5", augment="tutorial", rounds=0, **quiet())


@pytest.mark.parametrize("flush_rows", [0, -5])
def test_flush_rows_below_one_is_refused_before_any_work(tmp_path, flush_rows):
    """FLUSH_ROWS=0 or -5 was taken silently as 1 (a part file per row), where BATCH=0 and WORKERS=0 are refused."""
    data = write_class_folders(tmp_path / "d", per_class=2)
    with pytest.raises(ValueError, match=rf"FLUSH_ROWS={flush_rows} must be at least 1 row"):
        extract_features(data, out=tmp_path / "c.h5", flush_rows=flush_rows, **quiet())
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.parts").exists()


def test_devices_must_exist_on_this_machine():
    with pytest.raises(ValueError, match=r"DEVICES=/gpu:7: /gpu:7 is not a device of this machine; it has /cpu:0"):
        replica_strategy(["/gpu:7"])
    with pytest.raises(ValueError, match=r"bogus is not a device"):
        replica_strategy(["bogus"])
    with pytest.raises(ValueError, match="names a device twice"):
        replica_strategy(["/cpu:0", "CPU:0"])
    one = replica_strategy(["/cpu:0"])  # one named device: its backbone runs there
    assert one.num_replicas_in_sync == 1 and one.extended.worker_devices[0].endswith("CPU:0")


def test_a_class_whose_images_all_fail_to_decode_is_warned_about(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=3)
    (data / "eel").mkdir()
    (data / "eel" / "junk.png").write_bytes(b"not a png")
    logs: list[str] = []
    result = extract_features(data, out=tmp_path / "c.h5", **quiet(logs))
    assert result.rows == 9 and result.skipped == 1
    warning = "WARNING: 1 class has no training row (images skipped, or all in val): eel; heads cannot learn it."
    assert warning in "\n".join(logs)
    logs.clear()
    extract_features(write_class_folders(tmp_path / "ok", per_class=3), out=tmp_path / "ok.h5", **quiet(logs))
    assert not any("no training row" in line for line in logs)


def test_rows_stored_as_all_zero_features_are_warned_about(tmp_path, monkeypatch):
    """Random MobileNetV2 features (~1e-11) round to 0 in float16: every row alike, and extraction used to be
    silent about it. Here the first row of each batch is made tiny, as such a backbone would."""
    from extract import pipeline

    real = pipeline.embed

    def tiny_first_row(*args, **kwargs):
        for idx, feats, reasons in real(*args, **kwargs):
            feats = np.array(feats)
            feats[0] = 1e-11
            yield idx, feats, reasons

    monkeypatch.setattr(pipeline, "embed", tiny_first_row)
    data = write_class_folders(tmp_path / "d", per_class=3)
    logs: list[str] = []
    extract_features(data, out=tmp_path / "c.h5", size=SIZE, weights="none", batch_size=4, progress=False,
                     log=logs.append)
    warning = next(m for m in logs if "all-zero" in m)
    assert warning.startswith("WARNING: 3 of the 9 rows extracted now have all-zero features")  # 3 batches of ≤4
    assert "DTYPE=float16 may have rounded tiny features to 0" in warning
    logs.clear()
    extract_features(data, out=tmp_path / "f32.h5", size=SIZE, weights="none", batch_size=4, dtype="float32",
                     progress=False, log=logs.append)
    assert not any("all-zero" in m for m in logs)  # 1e-11 is not 0 in float32


def test_change_counts_say_that_files_skipped_last_time_are_tried_again(tmp_path):
    """A Kaggle re-download replaces a truncated image: it is extracted again, and the change line says why
    (it used to read "1 added, 0 removed, 0 modified" and then extract 2 views)."""
    data = write_class_folders(tmp_path / "d", per_class=3)
    broken = data / "square" / "broken.png"
    broken.write_bytes(b"not a png")
    cache = tmp_path / "c.h5"
    extract_features(data, out=cache, **quiet())
    rng = np.random.default_rng(3)
    draw("square", rng).save(broken)  # fixed
    draw("circle", rng).save(data / "circle" / "new.png")
    logs: list[str] = []
    result = extract_features(data, out=cache, **quiet(logs))
    assert any(line.endswith("1 added, 0 removed, 0 modified; 1 file skipped last time is tried again")
               for line in logs), logs
    with FeatureCache(result.path) as c:
        assert "square/broken.png" in c.column("path").tolist() and c.skipped() == []


def test_running_out_of_memory_says_to_lower_batch_and_that_the_run_resumes(monkeypatch):
    """A SIZE= or BATCH= too large for memory (decoding a batch, or the backbone on a GPU) ended in TensorFlow's
    ResourceExhaustedError traceback; it is one MemoryError saying what to lower (the CLI prints it as one line)."""
    import tensorflow as tf

    from extract import pipeline

    def dataset(paths, size, batch_size, max_pixels, **kw):
        def decode(i):
            raise MemoryError("Unable to allocate 1.36 TiB for an array")
        return tf.data.Dataset.range(1).map(lambda i: (i, tf.numpy_function(decode, [i], tf.uint8), tf.constant("")))

    monkeypatch.setattr(pipeline, "image_dataset", dataset)
    monkeypatch.setattr(pipeline, "backbone_function", lambda model, dtype: model)
    with pytest.raises(MemoryError, match=r"^out of memory with BATCH=2 at SIZE=500000 \(Unable to allocate 1\.36 TiB "
                                          r"for an array\): lower BATCH= \(or SIZE=\)\. The parts flushed so far are "
                                          r"kept: the same command resumes\.$"):
        list(pipeline.embed(["a.jpg"], None, 500000, batch_size=2))


@pytest.mark.parametrize(("setting", "message"), [
    ({"backbone": "xceptoin"}, "unknown BACKBONE='xceptoin'"),
    ({"size": 10}, "SIZE=10 is too small for xception: the minimum is 71"),
    ({"pooling": "mx"}, "POOLING='mx' is not one of"),
    ({"precision": "fp8"}, "PRECISION='fp8' is not one of"),
    ({"weights": "/no/such.h5"}, "WEIGHTS='/no/such.h5' is not a file"),
    ({"augment": "bogus", "rounds": 1}, "AUGMENT='bogus' is not a preset"),
])
def test_a_bad_setting_is_refused_before_the_image_folder_is_walked(tmp_path, monkeypatch, setting, message):
    """They were checked after discovery, which walks every file of DATA (minutes for a large data set)."""
    import extract.pipeline as pipeline

    monkeypatch.setattr(pipeline, "discover", lambda *a, **k: pytest.fail("DATA was walked before the settings"))
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        extract_features(tmp_path, out=tmp_path / "c.h5", **{**quiet(), **setting})
