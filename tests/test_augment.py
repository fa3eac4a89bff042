"""Augmented rounds: presets, validation, deterministic views, row layout, extending ROUNDS, preview."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import SIZE, write_class_folders
from PIL import Image

from extract import FeatureCache, extract_features, pipeline
from extract.augment import PRESETS, parse_augment, view_seed
from extract.cache import CacheError
from extract.discover import discover

QUIET = {"progress": False, "log": lambda m: None}


def test_presets_hold_their_documented_values():
    assert PRESETS["tutorial"] == {"width_shift": 0.2, "height_shift": 0.2, "zoom": 0.2, "fill": "nearest"}
    assert PRESETS["epiuse"] == {"rotation": 0.15, "width_shift": 0.1, "height_shift": 0.1, "flip": "horizontal",
                                 "contrast": 0.1, "fill": "nearest"}
    assert not parse_augment("none").enabled and parse_augment("epiuse").enabled
    custom = dict(parse_augment("rotation=0.1,zoom=0.2,flip=horizontal").params)
    assert custom == {"rotation": 0.1, "zoom": 0.2, "flip": "horizontal", "fill": "nearest"}
    assert dict(parse_augment("shift=0.3").params)["height_shift"] == 0.3


@pytest.mark.parametrize("text,message", [
    ("rotation=2", "rotation=2.0 is out of range; rotation is a fraction of a full turn, 0 to 1"),
    ("zoom=big", "zoom='big' is not a number"),
    ("flip=diagonal", "flip='diagonal' is not one of none, horizontal, vertical, horizontal_and_vertical"),
    ("blur=0.1", "no key 'blur'; keys are: rotation, width_shift"),
    ("fancy", "not a preset (none, tutorial, epiuse)"),
    ("zoom=1", "zoom=1.0 is out of range; zoom is a fraction, 0 to below 1"),
    ("rotation=0.1 zoom=0.2", "'rotation=0.1 zoom=0.2' is not one key=value pair; separate the pairs with commas"),
    ("rotation=0.1;zoom=0.2", "is not one key=value pair; separate the pairs with commas"),
    ("tutorial,flip=horizontal", "a preset does not combine with key=value pairs; write its values out instead "
                                 "(tutorial is 'width_shift=0.2,height_shift=0.2,zoom=0.2,fill=nearest')"),
    ("flip=horizontal,flip=vertical", "sets flip twice ('flip=horizontal' and 'flip=vertical'); give it once"),
    ("shift=0.1,width_shift=0.3", "sets width_shift twice ('shift=0.1' and 'width_shift=0.3')"),
])
def test_bad_augment_values_name_the_key_and_range(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_augment(text)


def test_empty_pairs_are_ignored_and_an_augmentation_that_changes_nothing_is_refused(tmp_path):
    from extract.preview import preview_augment

    assert parse_augment("zoom=0.2,,flip=horizontal,") == parse_augment("zoom=0.2,flip=horizontal")
    for text, said in ((None, "AUGMENT=none changes no pixel: set"),
                       ("zoom=0,fill=constant", "AUGMENT=zoom=0,fill=constant changes no pixel (every value is 0 or "
                                                "none)")):
        with pytest.raises(ValueError, match=re.escape(f"ROUNDS=2 needs an augmentation, and {said}")):
            pipeline.make_config(backbone="xception", size=SIZE, pooling="avg", weights="none", dtype="float16",
                                 precision="float32", seed=0, val=0.2, augment=text, rounds=2)
    with pytest.raises(ValueError, match=r"nothing to preview: AUGMENT=zoom=0 changes no pixel"):
        preview_augment(tmp_path, augment="zoom=0", out=tmp_path / "p.png")


def _views(data, order, batch_size, spec="epiuse"):
    found = discover(data, val=0.0)
    views = [(it, r) for it in found.items for r in range(3)]
    views = [views[i] for i in order(len(views))]
    ds = pipeline.image_dataset([it.abspath for it, _ in views], SIZE, batch_size, augment=parse_augment(spec),
                                rounds=[r for _, r in views],
                                seeds=np.stack([view_seed(0, it.relpath, r) for it, r in views]))
    out = {}
    for idx, imgs, _ in ds:
        for i, img in zip(idx.numpy(), imgs.numpy()):
            out[(views[i][0].relpath, views[i][1])] = img
    return out


def test_same_seed_same_pixels_across_batch_sizes_and_orders(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    forward = _views(data, lambda n: range(n), batch_size=4)
    backward = _views(data, lambda n: range(n - 1, -1, -1), batch_size=5)
    shuffled = _views(data, lambda n: np.random.default_rng(1).permutation(n), batch_size=1)
    assert forward.keys() == backward.keys() == shuffled.keys()
    for key in forward:
        np.testing.assert_array_equal(forward[key], backward[key])
        np.testing.assert_array_equal(forward[key], shuffled[key])
    path = next(iter(forward))[0]
    assert not np.array_equal(forward[(path, 1)], forward[(path, 2)])
    assert not np.array_equal(forward[(path, 0)], forward[(path, 1)])
    clean = np.asarray(Image.open(data / path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    np.testing.assert_array_equal(forward[(path, 0)], clean)


def _bright_box(spec: str, box: slice, n: int = 24) -> np.ndarray:
    """(n, 4): where a white box on black lands in n views: its centre's (x, y) move and its (width, height)."""
    import tensorflow as tf

    from extract.augment import make_augmenter

    augment = make_augmenter(parse_augment(spec + ",fill=constant"))
    image = np.zeros((64, 64, 3), np.float32)
    image[box, box] = 255
    out = []
    for k in range(n):
        view = augment(tf.constant(image), tf.constant(view_seed(0, f"img{k}.png", 1))).numpy()[..., 0] > 127
        ys, xs = np.nonzero(view)
        out.append((xs.mean(), ys.mean(), np.ptp(xs) + 1, np.ptp(ys) + 1))
    return np.array(out)


def test_each_value_a_layer_draws_is_random_on_its_own():
    """ImageDataGenerator(width_shift_range, height_shift_range, zoom_range), which AUGMENT=tutorial stands for,
    draws each shift and each axis's zoom on its own; one seed for a layer's draws gave dx == dy and kept the
    aspect."""
    shift = _bright_box("shift=0.2", slice(30, 34))
    dx, dy = shift[:, 0] - 31.5, shift[:, 1] - 31.5
    assert np.abs(dx).max() > 4 and np.abs(dy).max() > 4
    assert np.abs(dx - dy).max() > 6 and abs(np.corrcoef(dx, dy)[0, 1]) < 0.6
    zoom = _bright_box("zoom=0.2", slice(12, 52))
    aspect = zoom[:, 2] / zoom[:, 3]
    assert np.abs(aspect - 1).max() > 0.1 and abs(np.corrcoef(zoom[:, 2], zoom[:, 3])[0, 1]) < 0.6


def test_rows_are_train_times_k_plus_one_plus_val_and_test(tmp_path):
    train = write_class_folders(tmp_path / "d" / "train", per_class=6)
    write_class_folders(tmp_path / "d" / "test", per_class=1, seed=4)
    empty = next(p for p in train.iterdir() if p.is_dir()) / "empty.png"
    empty.write_bytes(b"")
    logs: list[str] = []
    result = extract_features(tmp_path / "d", out=tmp_path / "c.h5", size=SIZE, weights="none", augment="tutorial",
                              rounds=2, progress=False, log=logs.append)
    with FeatureCache(result.path) as c:
        split, rnd, paths = c.column("split"), c.column("round"), c.column("path")
        n_train = len(set(paths[split == "train"]))
        n_val, n_test = (split == "val").sum(), (split == "test").sum()
        assert c.n_rows == n_train * 3 + n_val + n_test and n_test == 3 and n_val > 0
        assert [p for p, _ in c.skipped()] == [empty.relative_to(tmp_path / "d").as_posix()]
        rows = c.n_rows
        assert (rnd[split != "train"] == 0).all()
        assert sorted(set(rnd[split == "train"])) == [0, 1, 2]
        assert c.config["augmentation"] == {"preset": "tutorial", "params": PRESETS["tutorial"],
                                            "sampler": "keras-layers-2", "rounds": 2, "seed": 0}
        assert not set(paths[split == "train"]) & set(paths[split == "val"])
    # The run counts views, not images: the skipped image's views (3 in train, 1 in val) were tried, not extracted.
    said = "\n".join(logs)
    assert ("views to extract (with ROUNDS=2 a training image has 3: its clean view and 2 augmented ones; other "
            "images their clean view)") in said
    done = re.search(r"^extracted (\d+) of (\d+) views in [\d.]+ s \([\d.]+ views/s", said, re.M)
    assert done and int(done[1]) == rows and int(done[2]) - rows in (1, 3)


def test_extending_rounds_runs_the_backbone_only_on_the_new_round(tmp_path, monkeypatch):
    data = write_class_folders(tmp_path / "d", per_class=4)
    kw = dict(cache_dir=tmp_path / "fc", size=SIZE, weights="none", dtype="float32", augment="epiuse", **QUIET)
    one = extract_features(data, rounds=1, **kw)
    seen_rounds: list[int] = []
    real = pipeline.embed

    def counting(paths, *a, **k):
        seen_rounds.extend(k["rounds"])
        return real(paths, *a, **k)

    monkeypatch.setattr(pipeline, "embed", counting)
    logs = []
    two = extract_features(data, rounds=2, **{**kw, "log": logs.append})
    with FeatureCache(two.path) as c:
        n_train = len(set(c.column("path")[c.column("split") == "train"]))
    assert seen_rounds == [2] * n_train
    assert two.path != one.path and one.path.exists()
    assert any("reusing the rows of" in m for m in logs)
    monkeypatch.setattr(pipeline, "embed", real)
    independent = extract_features(data, rounds=2, **{**kw, "cache_dir": tmp_path / "independent"})
    from test_reliability import assert_same_cache

    assert_same_cache(two.path, independent.path)


def test_an_explicit_out_takes_more_rounds_in_place_but_is_never_cut_to_fewer(tmp_path):
    """A default file name changes with ROUNDS; an explicit OUT= does not, and a lower ROUNDS deleted its rows."""
    data = write_class_folders(tmp_path / "d", per_class=2)
    (next(p for p in data.iterdir() if p.is_dir()) / "empty.png").write_bytes(b"")
    out = tmp_path / "my.h5"
    kw = dict(out=out, size=SIZE, weights="none", augment="epiuse", batch_size=8, progress=False)
    extract_features(data, rounds=1, log=lambda m: None, **kw)
    logs: list[str] = []
    extract_features(data, rounds=2, log=logs.append, **kw)  # adds round 2 to the same file
    # every view of a file skipped last time is tried again (a skip records no file stamp): said, not silent
    assert "ROUNDS 1 → 2: only missing rounds are extracted; 1 file skipped last time is tried again" in logs
    with FeatureCache(out) as c:
        rows, round_2 = c.n_rows, int((c.column("round") == 2).sum())
    assert round_2 > 0
    with pytest.raises(CacheError, match=rf"holds ROUNDS=2: ROUNDS=1 would delete its {round_2} rows of round 2\. "
                                         r"Choose another OUT= \(this file is kept\) or pass OVERWRITE=1"):
        extract_features(data, rounds=1, log=lambda m: None, **kw)
    with FeatureCache(out) as c:
        assert c.n_rows == rows and c.config["augmentation"]["rounds"] == 2


def test_a_sibling_with_other_rounds_is_reused_only_for_the_same_folder_and_never_with_overwrite(tmp_path):
    """An augmented cache of one folder is no sibling for another folder's (it used to be taken, and refused,
    even with OVERWRITE=1); OVERWRITE=1 extracts afresh rather than copying a sibling's rows."""
    kw = dict(cache_dir=tmp_path / "fc", size=SIZE, weights="none", augment="epiuse", batch_size=8)
    extract_features(write_class_folders(tmp_path / "a" / "imgs", per_class=2), rounds=1, **kw, **QUIET)
    other = write_class_folders(tmp_path / "b" / "pics", per_class=2, seed=5)
    logs: list[str] = []
    made = extract_features(other, rounds=2, **kw, log=logs.append)
    assert not any("reusing the rows of" in m for m in logs)
    with FeatureCache(made.path) as c:
        assert c.data_root == other.resolve()
    logs.clear()
    extract_features(other, rounds=3, overwrite=True, **kw, log=logs.append)
    assert not any("reusing the rows of" in m for m in logs)
    logs.clear()
    extract_features(other, rounds=1, **kw, log=logs.append)
    assert any("reusing the rows of" in m for m in logs)  # same folder, no OVERWRITE: reused as before


def test_heads_use_all_rounds_clean_or_augmented_only(tmp_path, monkeypatch):
    import heads.logreg
    from heads import train_head

    data = write_class_folders(tmp_path / "d", per_class=5)
    cache = extract_features(data, out=tmp_path / "c.h5", size=SIZE, weights="none", augment="epiuse", rounds=2,
                             **QUIET).path
    seen = []
    real = heads.logreg.cv_folds
    monkeypatch.setattr(heads.logreg, "cv_folds", lambda *a, **k: seen.append(k["groups"]) or real(*a, **k))
    all_rows = train_head("logreg", cache, tmp_path / "a", head_args={"C": "auto"}, log=lambda m: None).metrics
    clean = train_head("logreg", cache, tmp_path / "b", train_rounds="clean", log=lambda m: None).metrics
    augmented = train_head("logreg", cache, tmp_path / "c", train_rounds="augmented", log=lambda m: None).metrics
    assert all_rows["n_train"] == 3 * clean["n_train"] and augmented["n_train"] == 2 * clean["n_train"]
    assert all_rows["n_val"] == clean["n_val"] == augmented["n_val"] > 0
    with FeatureCache(cache) as c:  # the augmented views only: the tutorial extracted through its generator
        train = (c.column("split") == "train")
        assert (c.column("round")[train] > 0).sum() == augmented["n_train"]
    plain = extract_features(data, out=tmp_path / "plain.h5", size=SIZE, weights="none", **QUIET).path
    with pytest.raises(CacheError, match="has no augmented training rows for TRAIN_ROUNDS=augmented: extract with "
                                         "AUGMENT=<preset> ROUNDS=K"):
        train_head("logreg", plain, tmp_path / "d", train_rounds="augmented", log=lambda m: None)
    # C=auto's folds are told which image each row is a view of (3 rows per training image)
    with FeatureCache(cache) as c:
        train_paths = c.column("path")[c.column("split") == "train"]
    assert sorted(seen[0]) == sorted(train_paths) and len(set(seen[0])) * 3 == len(seen[0])
    # make compare-heads TRAIN_ROUNDS=clean: every head on the clean rows (the variable used to be dropped)
    from heads.__main__ import main

    main(["compare", "--features", str(cache), "--heads", "logreg,ridge", "--train-rounds", "clean",
          "--out", str(tmp_path / "cmp")])
    for head in ("logreg", "ridge"):
        assert json.loads((tmp_path / "cmp" / head / "metrics.json").read_text())["n_train"] == clean["n_train"]


def test_preview_png_has_the_expected_grid(tmp_path):
    from extract.preview import preview_augment

    data = write_class_folders(tmp_path / "d", per_class=3)
    out = preview_augment(data, "epiuse", rounds=3, out=tmp_path / "p.png", n_images=4)
    width, height = Image.open(out).size
    assert (width, height) == (int(1.6 * 4 * 100), int(1.7 * 4 * 100))


def test_preview_picks_another_image_for_one_that_does_not_decode(tmp_path, monkeypatch):
    """An undecodable training file was drawn as a row of black tiles, without a word."""
    from extract.preview import preview_augment

    data = write_class_folders(tmp_path / "d", per_class=2)
    (data / "circle" / "circle_00.png").write_bytes(b"cut short")
    drawn, said = [], []
    real = pipeline.image_dataset
    monkeypatch.setattr(pipeline, "image_dataset", lambda paths, *a, **k: drawn.extend(paths) or real(paths, *a, **k))
    preview_augment(data, "epiuse", rounds=1, out=tmp_path / "p.png", n_images=6, val=0.0, log=said.append)
    assert len(set(drawn)) == 5 and not any(p.endswith("circle_00.png") for p in drawn)
    assert said == ["left out 1 training file that does not decode (extraction skips it too): "
                    "circle/circle_00.png (not an image: unknown format)"]


def test_preview_shows_every_class_and_takes_the_labels_columns(tmp_path):
    """It showed 6 images of 2 of 4 breeds (evenly spaced through a class-sorted list) and ignored ID_COL."""
    from types import SimpleNamespace

    from conftest import write_kaggle

    from extract.preview import main, pick_by_class

    items = [SimpleNamespace(label=k, name=f"{k}-{i}") for k in range(4) for i in range(15)]
    assert [it.name for it in pick_by_class(items, 6)] == ["0-0", "1-0", "2-0", "3-0", "0-14", "1-14"]
    assert [it.name for it in pick_by_class(items[:2], 6)] == ["0-0", "0-1"]
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    csv.write_text(csv.read_text().replace("id,breed", "image_id;dog_breed".replace(";", ","), 1))
    main(["--data", str(images), "--labels", str(csv), "--id-col", "image_id", "--label-col", "dog_breed",
          "--rounds", "1", "--size", "40", "--n-images", "3", "--out", str(tmp_path / "p.png")])
    assert Image.open(tmp_path / "p.png").size == (320, 510)  # 3 rows of 2 views: 1.6 x 2 by 1.7 x 3 inches at 100 dpi
