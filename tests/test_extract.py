"""Stage 1: discovery, splits, the cache's content, and features against the backbone's direct output."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import CLASSES, SIZE, draw, randomize_batch_norm, write_class_folders, write_kaggle
from PIL import Image

from extract import CacheError, DataError, FeatureCache, discover, extract_features
from extract.backbones import build_backbone, get_backbone

QUIET = {"progress": False, "log": lambda m: None}


def test_folder_cache_holds_exactly_the_images_with_their_labels(folder_data, folder_cache):
    on_disk = sorted(str(p.relative_to(folder_data)) for p in folder_data.rglob("*.png"))
    with FeatureCache(folder_cache) as c:
        assert c.complete
        paths = list(c.column("path"))
        labels = c.column("label")
        assert sorted(paths) == on_disk
        assert c.class_names == sorted(CLASSES)
        for path, label in zip(paths, labels):
            assert c.class_names[label] == path.split("/")[0]
        assert set(c.column("split")) <= {"train", "val"}
        assert (c.column("round") == 0).all()
        assert c.feature_shape == (2048,)
        assert c.config["weights"] == {"kind": "none"}
        assert c.skipped() == []


def test_features_equal_the_backbones_direct_output(folder_data, folder_cache):
    """Decode independently with PIL, run the Keras model directly, compare to the cache."""
    import keras

    spec = get_backbone("xception")
    keras.utils.set_random_seed(0)
    net = keras.applications.Xception(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    with FeatureCache(folder_cache) as c:
        paths = list(c.column("path"))
        cached = c.features()
    picks = [0, len(paths) // 2, len(paths) - 1]
    batch = np.stack([
        np.asarray(Image.open(folder_data / paths[i]).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR),
                   dtype=np.float32)
        for i in picks
    ])
    direct = net.predict(keras.applications.xception.preprocess_input(batch), verbose=0)
    assert spec.feature_width == direct.shape[1]
    np.testing.assert_allclose(cached[picks], direct, atol=1e-5, rtol=1e-4)


def test_a_random_backbone_rebuilds_with_the_same_weights():
    """WEIGHTS=none is seeded: predict and export rebuild the extraction's network (the suite reuses one build
    per process, see conftest's reuse_random_backbones; these are real builds), and another seed is another."""
    spec = get_backbone("xception")
    first, again = (build_backbone(spec, SIZE, "avg", "none", seed=0) for _ in range(2))
    other = build_backbone(spec, SIZE, "avg", "none", seed=1)
    assert first is not again and len(first.weights) == len(again.weights) == 234
    for a, b in zip(first.weights, again.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    changed = sum(not np.array_equal(a.numpy(), c.numpy()) for a, c in zip(first.weights, other.weights))
    assert changed == 74  # its kernels (batch norms start at 0 and 1 whatever the seed)


def test_the_backbone_runs_with_fused_batch_norm_and_keras_is_left_as_it_was():
    """The traced graph uses TensorFlow's fused kernel (Keras 3 alone emits multiply/add passes); the
    features equal the plain Keras call with trained-looking batch-norm statistics; Keras is left untouched."""
    import keras
    import tensorflow as tf

    from extract.backbones import backbone_function

    model = build_backbone(get_backbone("xception"), SIZE, "avg", "none", seed=0)
    assert randomize_batch_norm(model) == 40  # Xception's BatchNormalization layers
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    fused = backbone_function(model)
    plain = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32))

    def op_types(fn):
        types = [op.type for op in fn.graph.get_operations()]
        for f in fn.graph.as_graph_def().library.function:
            types += [node.op for node in f.node_def]
        return types

    assert op_types(fused).count("FusedBatchNormV3") == 40
    assert "FusedBatchNormV3" not in op_types(plain)
    got, want = fused(tf.constant(x)).numpy(), plain(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())

    from tensorflow.python.eager import context

    seen, traced = [], fused.concrete
    fused.concrete = lambda t: seen.append(context.context().function_call_options.executor_type) or traced(t)
    fused(tf.constant(x))
    assert seen == ["SINGLE_THREADED_EXECUTOR"]  # one fixed op order: the same peak memory every run
    assert not context.context().function_call_options.executor_type  # and only for that call
    assert keras.src.backend.nn.batch_normalization.__module__ == "keras.src.backend.tensorflow.nn"


def test_extraction_runs_the_fused_backbone_at_the_default_batch_for_its_size(folder_data, tmp_path, monkeypatch):
    import extract.pipeline as pipeline

    calls, batches = [], []
    real, real_dataset = pipeline.backbone_function, pipeline.image_dataset
    monkeypatch.setattr(pipeline, "backbone_function", lambda model, *a: calls.append(model) or real(model, *a))
    monkeypatch.setattr(pipeline, "image_dataset",
                        lambda paths, size, batch_size, *a, **kw: batches.append(batch_size)
                        or real_dataset(paths, size, batch_size, *a, **kw))
    extract_features(folder_data, out=tmp_path / "c.h5", size=SIZE, weights="none", **QUIET)
    assert len(calls) == 1
    assert batches == [64]  # SIZE=71: small activations, larger batches
    assert (pipeline.default_batch_size(160), pipeline.default_batch_size(299)) == (64, 32)


def test_clean_batches_are_the_decoders_own_uint8_arrays(folder_data):
    """Clean batches are uint8 and never copied into TensorFlow's CPU allocator, whose pool the backbone's
    activations reuse: batches landing there at varying moments made some 299 px runs peak ~340 MB higher."""
    import tensorflow as tf

    import extract.pipeline as pipeline

    size, batch = 1024, 12  # 38 MB batches: above any malloc mmap threshold, so only the alignment is ours
    paths = sorted(str(p) for p in folder_data.rglob("*.png"))
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    batches = list(pipeline.image_dataset(paths, size, batch_size=batch))
    grown = tf.config.experimental.get_memory_info("CPU:0")["current"] - before
    images = np.concatenate([imgs.numpy() for _, imgs, _ in batches])
    assert images.dtype == np.uint8 and len(images) == len(paths) > batch
    first = np.asarray(Image.open(paths[0]).convert("RGB").resize((size, size), Image.BILINEAR))
    np.testing.assert_array_equal(images[0], first)
    assert grown < batch * size * size * 3  # less than one batch: each batch held here that was copied adds that


def test_kaggle_layout_labels_match_the_csv(tmp_path):
    images, csv = write_kaggle(tmp_path / "dogs")
    (images / "stray.jpg").write_bytes((images / next(iter(sorted(p.name for p in images.iterdir())))).read_bytes())
    result = extract_features(images, csv, out=tmp_path / "k.h5", size=SIZE, weights="none", **QUIET)
    truth = dict(line.split(",") for line in csv.read_text().split()[1:])
    with FeatureCache(result.path) as c:
        names = c.class_names
        got = {p.rsplit(".", 1)[0]: names[label] for p, label in zip(c.column("path"), c.column("label"))}
        assert got == truth
        assert c.skipped() == [("stray.jpg", "not in labels: labels.csv has no row for it")]


def test_kaggle_ids_with_extension_and_named_columns(tmp_path):
    images, csv = write_kaggle(tmp_path / "d")
    lines = csv.read_text().split()
    csv2 = tmp_path / "named.csv"
    csv2.write_text("file,kind\n" + "\n".join(f"{i}.jpg,{b}" for i, b in (ln.split(",") for ln in lines[1:])))
    found = discover(images, labels=csv2, id_col="file", label_col="kind")
    assert len(found.items) == len(lines) - 1
    with pytest.raises(DataError, match="no label column 'breed'.*columns are: file, kind.*LABEL_COL="):
        discover(images, labels=csv2, id_col="file", label_col="breed")


def test_csv_errors_name_the_problem(tmp_path):
    images, csv = write_kaggle(tmp_path / "d")
    good = csv.read_text()
    csv.write_text(good + "deadbeef00000000,circle\n")
    with pytest.raises(DataError, match=r"1 id in labels.csv has no image in DATA.*: deadbeef00000000 \(line 20\)"):
        discover(images, labels=csv)
    first = good.split()[1]
    csv.write_text(good + first + "\n")
    with pytest.raises(DataError, match="^1 id appears more than once"):
        discover(images, labels=csv)
    csv.write_text(good + "../escape,circle\n")
    with pytest.raises(DataError, match="outside DATA"):
        discover(images, labels=csv)
    first_id = good.split()[1].split(",")[0]
    csv.write_text(good.replace(good.split()[1], f"{first_id},"))  # first row: empty breed
    with pytest.raises(DataError, match=f"1 rows of labels.csv have an empty 'breed', e.g. {first_id}"):
        discover(images, labels=csv)


def test_train_test_folders_give_a_labelled_test_split(tmp_path):
    write_class_folders(tmp_path / "d" / "train", per_class=4)
    write_class_folders(tmp_path / "d" / "test", per_class=2, seed=5)
    found = discover(tmp_path / "d")
    splits = [it.split for it in found.items]
    assert splits.count("test") == 6
    assert all(it.label >= 0 for it in found.items)
    assert all(it.relpath.startswith("test/") for it in found.items if it.split == "test")


def test_unlabelled_test_folder_gets_label_minus_one(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=3)
    test = tmp_path / "kaggle_test"
    test.mkdir()
    draw("circle", np.random.default_rng(0)).save(test / "abc.jpg")
    found = discover(data, test=test)
    tests = [it for it in found.items if it.split == "test"]
    assert [(it.relpath, it.label) for it in tests] == [("test/abc.jpg", -1)]


def test_split_is_stable_when_images_are_added(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=20)
    before = {it.relpath: it.split for it in discover(data, val=0.3, seed=7).items}
    rng = np.random.default_rng(9)
    for i in range(15):
        draw("circle", rng).save(data / "circle" / f"new_{i}.png")
    after = {it.relpath: it.split for it in discover(data, val=0.3, seed=7).items}
    assert {k: after[k] for k in before} == before
    assert 0.1 < list(before.values()).count("val") / len(before) < 0.5
    other_seed = {it.relpath: it.split for it in discover(data, val=0.3, seed=8).items}
    assert other_seed != after


def test_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no images"):
        discover(tmp_path / "empty")
    one = tmp_path / "one"
    (one / "cats").mkdir(parents=True)
    draw("circle", np.random.default_rng(0)).save(one / "cats" / "a.png")
    draw("circle", np.random.default_rng(1)).save(one / "cats" / "b.png")
    with pytest.raises(DataError, match="only one class"):
        discover(one)


def test_a_class_with_one_image_warns_and_keeps_it_in_train(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=5)
    (data / "lonely").mkdir()
    draw("square", np.random.default_rng(3)).save(data / "lonely" / "only.png")
    found = discover(data, val=0.99)  # the warning is a note, which extract_features logs as `note: ...`
    assert found.notes == ["1 class has a single image (kept in train, none in val): lonely"]
    lonely = [it for it in found.items if it.relpath.startswith("lonely/")]
    assert [it.split for it in lonely] == ["train"]
    for name in ("circle", "square", "stripes"):
        assert any(it.split == "train" for it in found.items if it.relpath.startswith(name))


def test_rerun_is_up_to_date_and_another_config_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=3)
    kw = dict(out=tmp_path / "c.h5", size=SIZE, weights="none", **QUIET)
    first = extract_features(data, **kw)
    again = extract_features(data, **kw)
    assert again.up_to_date and not first.up_to_date
    with pytest.raises(CacheError, match="another config.*OVERWRITE=1"):
        extract_features(data, **{**kw, "pooling": "max"})
    redone = extract_features(data, **{**kw, "pooling": "max"}, overwrite=True)
    assert redone.rows == 9 and not redone.up_to_date


def test_default_file_name_comes_from_dataset_and_config(tmp_path):
    data = write_class_folders(tmp_path / "pets", per_class=2)
    result = extract_features(data, cache_dir=tmp_path / "fc", size=SIZE, weights="none", pooling="max", **QUIET)
    assert result.path.parent == tmp_path / "fc"
    assert result.path.name.startswith("pets-xception-71-max-") and result.path.suffix == ".h5"


def test_pooling_none_keeps_the_spatial_map(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    result = extract_features(data, out=tmp_path / "n.h5", size=SIZE, weights="none", pooling="none", **QUIET)
    with FeatureCache(result.path) as c:
        assert c.feature_shape == (3, 3, 2048)
        assert c.config["dtype"] == "float16" and c._f["features"].dtype == np.float16


def test_weights_file_path_is_loaded(tmp_path, folder_data):
    """Save a random headless Xception's weights; extracting through WEIGHTS=<path> must reproduce its output."""
    import keras

    keras.utils.set_random_seed(123)
    net = keras.applications.Xception(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    weights = tmp_path / "xception_notop.weights.h5"
    net.save_weights(weights)
    data = tmp_path / "d"
    shutil.copytree(folder_data, data)
    result = extract_features(data, out=tmp_path / "w.h5", size=SIZE, weights=str(weights), dtype="float32", **QUIET)
    with FeatureCache(result.path) as c:
        assert c.config["weights"]["kind"] == "file"
        assert len(c.config["weights"]["sha256"]) == 64
        first = c.column("path")[0]
        cached = c.features(np.array([0]))
    img = np.asarray(Image.open(data / first).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float32)
    direct = net.predict(keras.applications.xception.preprocess_input(img[None]), verbose=0)
    np.testing.assert_allclose(cached, direct, atol=1e-5, rtol=1e-4)
    seeded = build_backbone(get_backbone("xception"), SIZE, "avg", "none", seed=0)
    assert not np.allclose(seeded.predict(img[None], verbose=0), direct, atol=1e-6)


def test_missing_imagenet_weights_without_network_stops_before_work(tmp_path, monkeypatch, folder_data):
    import keras

    from extract import WeightsUnavailableError, backbones

    monkeypatch.setattr(backbones, "KERAS_MODELS_DIR", tmp_path / "empty_keras_models")

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        extract_features(folder_data, out=tmp_path / "x.h5", size=SIZE, weights="imagenet", **QUIET)
    msg = str(err.value)
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(tmp_path / "empty_keras_models") in msg
    assert "WEIGHTS=none" in msg and "WEIGHTS=<path" in msg
    assert not (tmp_path / "x.h5").exists()


def test_bad_settings_are_named(folder_data, tmp_path):
    with pytest.raises(ValueError, match="SIZE=50 is too small for xception: the minimum is 71"):
        extract_features(folder_data, out=tmp_path / "a.h5", size=50, weights="none", **QUIET)
    with pytest.raises(ValueError, match="POOLING='sum' is not one of avg, max, none"):
        extract_features(folder_data, out=tmp_path / "a.h5", size=SIZE, weights="none", pooling="sum", **QUIET)
    with pytest.raises(ValueError, match="unknown BACKBONE='alexnet'; choose one of: .*xception"):
        extract_features(folder_data, out=tmp_path / "a.h5", backbone="alexnet", weights="none", **QUIET)
    with pytest.raises(ValueError, match="BATCH=0 must be at least 1 image per backbone call"):
        extract_features(folder_data, out=tmp_path / "a.h5", size=SIZE, weights="none", batch_size=0, **QUIET)


def test_throughput_is_recorded(folder_cache):
    with FeatureCache(folder_cache) as c:
        assert c.attrs["images_per_second"] > 0


def test_bfloat16_precision_is_close_to_float32_and_gets_its_own_cache(folder_data, folder_cache, tmp_path):
    result = extract_features(folder_data, cache_dir=tmp_path, size=SIZE, weights="none", dtype="float32",
                              precision="bfloat16", **QUIET)
    with FeatureCache(result.path) as c, FeatureCache(folder_cache) as ref:
        assert c.config["precision"] == "bfloat16" and ref.config["precision"] == "float32"
        assert c.attrs["config_key"] != ref.attrs["config_key"]
        assert list(c.column("path")) == list(ref.column("path"))
        a, b = c.features(), ref.features()
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999
    assert not np.array_equal(a, b)  # it really ran in another precision
    with pytest.raises(ValueError, match="PRECISION='int8' is not one of float32, bfloat16, float16"):
        extract_features(folder_data, out=tmp_path / "x.h5", size=SIZE, weights="none", precision="int8", **QUIET)


def test_split_named_folders_are_not_taken_for_classes(tmp_path):
    write_class_folders(tmp_path / "d" / "train", per_class=2)
    write_class_folders(tmp_path / "d" / "val", per_class=1)
    with pytest.raises(DataError, match=r"has split folders \(train, val/\), not class folders"):
        discover(tmp_path / "d")


def test_with_train_and_test_folders_everything_else_is_listed_as_skipped(tmp_path):
    write_class_folders(tmp_path / "d" / "train", per_class=2)
    write_class_folders(tmp_path / "d" / "test", per_class=1)
    write_class_folders(tmp_path / "d" / "valid", per_class=1)
    (tmp_path / "d" / "notes.txt").write_text("hello")
    found = discover(tmp_path / "d")
    skipped = sorted(s.relpath for s in found.skipped)
    assert skipped == ["notes.txt"] + sorted(f"valid/{c}/{c}_00.png" for c in CLASSES)
    assert all("not in train/ or test/" in s.reason for s in found.skipped)
