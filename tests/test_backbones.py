"""The backbone registry against Keras itself: widths, minimum sizes, preprocessing, weights files.

Every network is built once per test at the smallest input Keras allows, with random weights.
"""

from __future__ import annotations

import importlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import randomize_batch_norm

from extract import FeatureCache, WeightsUnavailableError, extract_features, list_backbones
from extract import backbones as bb
from extract.backbones import build_backbone, get_backbone, weights_identity
from extract.cache import CacheError
from extract.pipeline import make_config

QUIET = {"progress": False, "log": lambda m: None}

# Written here, not read from the registry: the keras.applications module each entry must match.
FAMILY = {
    "xception": "xception", "inceptionv3": "inception_v3", "resnet50": "resnet50", "resnet50v2": "resnet_v2",
    "efficientnetb0": "efficientnet", "efficientnetb1": "efficientnet", "efficientnetb2": "efficientnet",
    "efficientnetb3": "efficientnet", "efficientnetv2s": "efficientnet_v2", "mobilenetv2": "mobilenet_v2",
    "mobilenetv3large": "mobilenet_v3", "densenet121": "densenet", "convnexttiny": "convnext", "vgg16": "vgg16",
}
NAMES = list_backbones()


@pytest.fixture
def fresh_keras_session():
    """For the tests that build every registered network, one after another: free each before the next.
    (After every test it cost ~0.3 s of garbage collection each, 17 s in all.)"""
    yield
    import keras

    keras.backend.clear_session()


def _pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def test_the_registry_holds_the_issue_7_backbones_each_with_its_family():
    assert set(NAMES) == set(FAMILY), "add the new entry's keras.applications module to FAMILY"
    for name in NAMES:
        spec = get_backbone(name)
        assert spec.name == name == spec.constructor.rsplit(".", 1)[1].lower()
        assert spec.preprocess == f"keras.applications.{FAMILY[name]}.preprocess_input"
        assert spec.min_size <= spec.default_size


def test_an_unknown_backbone_is_refused_with_the_whole_registry(folder_data, capsys):
    with pytest.raises(ValueError) as err:
        get_backbone("resnet9000")
    assert "unknown BACKBONE='resnet9000'" in str(err.value)
    for name in NAMES:
        assert name in str(err.value)
    from extract.__main__ import main

    with pytest.raises(SystemExit) as exit_:  # the path `make extract BACKBONE=resnet9000` takes
        main(["--data", str(folder_data), "--backbone", "resnet9000", "--weights", "none", "--no-progress"])
    assert exit_.value.code == 2
    assert "error: unknown BACKBONE='resnet9000'; choose one of: " + ", ".join(NAMES) in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_preprocess_is_the_families_own(name):
    """Same output as keras.applications.<family>.preprocess_input; a no-op exactly for in-model families."""
    import keras  # noqa: F401  (keras.applications.* imports need it loaded)

    spec = get_backbone(name)
    keras_pre = importlib.import_module(f"keras.applications.{FAMILY[name]}").preprocess_input
    x = _pixels(2, 8)
    ours = bb._import_attr(spec.preprocess)(x.copy())
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(keras_pre(x.copy())))
    assert spec.preprocess_in_model == np.array_equal(np.asarray(ours), x)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """An empty Keras cache and no network. Returns the (file name, URL) pairs get_file was asked for."""
    import keras
    from keras.src.utils import file_utils

    calls: list[tuple[str, str]] = []

    def no_network(fname=None, origin=None, **kwargs):
        calls.append((fname, origin))
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(bb, "KERAS_MODELS_DIR", tmp_path / "keras_models")
    monkeypatch.setattr(keras.utils, "get_file", no_network)  # what _download_imagenet calls
    monkeypatch.setattr(file_utils, "get_file", no_network)  # what the keras.applications constructors call
    return calls


@pytest.fixture
def recorded_download(tmp_path, monkeypatch):
    """Let a keras.applications constructor run with weights='imagenet' offline: record the (file, URL)
    it asks get_file for, and keep its random initial weights instead of loading a file."""
    import keras
    from keras.src.utils import file_utils

    calls: list[tuple[str, str]] = []

    def record(fname=None, origin=None, **kwargs):
        calls.append((fname, origin))
        return str(tmp_path / fname)

    monkeypatch.setattr(file_utils, "get_file", record)
    monkeypatch.setattr(keras.Model, "load_weights", lambda self, *a, **kw: None)
    return calls


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")  # Keras: MobileNets off 224 px
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.usefixtures("fresh_keras_session")
def test_built_backbone_at_its_minimum_size_has_the_registered_width_and_weights_file(name, recorded_download):
    """One build per network at the minimum Keras accepts, through Keras's own ImageNet path: the weights file
    and URL Keras asks for are the entry's, the width is the entry's, the wrapper equals Keras's preprocess
    then the bare network, and so does the graph extract traces."""
    import keras

    spec = get_backbone(name)
    constructor = bb._import_attr(spec.constructor)
    with pytest.raises(ValueError, match=f"at least {spec.min_size}"):
        constructor(include_top=False, weights=None, input_shape=(spec.min_size - 1, spec.min_size - 1, 3))
    model = build_backbone(spec, spec.min_size, "avg", "imagenet", seed=0)
    assert recorded_download == [(spec.weights_file_for(spec.min_size), spec.weights_url())]
    assert model.output_shape == (None, spec.feature_width)

    randomize_batch_norm(model)  # trained-looking statistics: the fused path must use each one in its place
    x = _pixels(2, spec.min_size)
    got = np.asarray(model(x, training=False))
    (net,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    keras_pre = importlib.import_module(f"keras.applications.{FAMILY[name]}").preprocess_input
    direct = np.asarray(net(keras_pre(x.copy()), training=False))
    assert got.shape == (2, spec.feature_width) and np.isfinite(got).all()
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)
    # traced as extract runs it (fused batch norm): the same features, up to rounding that a deep network with
    # random batch-norm statistics amplifies (EfficientNetV2S: 4e-5 of the largest feature; a swapped
    # argument would be off by the order of the features themselves)
    fused = np.asarray(bb.backbone_function(model)(x))
    np.testing.assert_allclose(fused, got, rtol=1e-3, atol=1e-4 * np.abs(got).max())
    cosine = (fused * got).sum(1) / np.linalg.norm(fused, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.999999

    # in-model families rescale 0-255 pixels in their first layers; the others must not (we do it outside)
    first = [type(layer).__name__ for layer in net.layers[1:4]]
    assert spec.preprocess_in_model == any(kind in ("Rescaling", "Normalization") for kind in first), first


@pytest.mark.slow
@pytest.mark.parametrize("name, precision", [("xception", "bfloat16"), ("efficientnetb0", "bfloat16"),
                                             ("resnet50", "float16")])
@pytest.mark.usefixtures("fresh_keras_session")
def test_low_precision_backbone_folds_batch_norm_and_matches_the_keras_call(name, precision, monkeypatch):
    """In bfloat16/float16 the traced graph folds every batch norm into the convolution before it (Xception:
    plain, EfficientNet: depthwise, ResNet: with a bias); where it cannot, the batch norm takes the
    low-precision activation itself. Either way the features are the plain Keras call's, to that precision's
    rounding."""
    import tensorflow as tf

    spec = get_backbone(name)
    model = build_backbone(spec, spec.min_size, "avg", "none", seed=0, precision=precision)
    n_norms = randomize_batch_norm(model)
    rng = np.random.default_rng(1)
    for layer in model._flatten_layers():  # convolution biases too (ResNet's; untrained they are zero)
        if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.5, tuple(layer.bias.shape)).astype("float32"))
    x = _pixels(2, spec.min_size)
    got = np.asarray(model(x, training=False))

    def cosine(a):
        return ((a * got).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(got, axis=1)).min()

    traced = bb.backbone_function(model)
    ops = traced.graph.get_operations()
    assert not [op for op in ops if op.type == "FusedBatchNormV3"]
    folded = [op for op in ops if op.type in ("Conv2D", "DepthwiseConv2dNative")
              and op.inputs[1].op.type == "Cast" and op.inputs[1].op.inputs[0].op.type == "Mul"]
    assert n_norms and len(folded) == n_norms
    monkeypatch.setattr(bb, "_folded_into_conv", lambda *args: None)
    unfolded = bb.backbone_function(model)
    norms = [op for op in unfolded.graph.get_operations() if op.type == "FusedBatchNormV3"]
    assert len(norms) == n_norms and {op.get_attr("T") for op in norms} == {tf.as_dtype(precision)}
    assert cosine(np.asarray(unfolded(x))) > 0.999
    fused = np.asarray(traced(x))
    assert fused.dtype == np.float32 and cosine(fused) > 0.999


@pytest.mark.parametrize("name", NAMES)
def test_offline_error_names_the_weights_file_and_the_alternatives(name, offline, tmp_path):
    """Our download asks for the same file and URL as Keras's constructor (checked above) and says how to fix it."""
    spec = get_backbone(name)
    with pytest.raises(WeightsUnavailableError) as err:
        weights_identity(spec, "imagenet", spec.min_size)
    assert offline == [(spec.weights_file_for(spec.min_size), spec.weights_url())]
    msg = str(err.value)
    assert spec.weights_file_for(spec.min_size) in msg and str(tmp_path / "keras_models") in msg
    assert "WEIGHTS=none" in msg and ("WEIGHTS=<path" in msg) != spec.file_weights_graph_differs


def test_build_without_weights_offline_stops_with_the_file_name(offline, tmp_path):
    spec = get_backbone("xception")
    with pytest.raises(WeightsUnavailableError, match=spec.weights_file_for()):
        build_backbone(spec, spec.min_size, "avg", "imagenet")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
@pytest.mark.parametrize("size", [96, 160, 299])
@pytest.mark.usefixtures("fresh_keras_session")
def test_mobilenetv2_weights_file_follows_the_input_size_as_in_keras(size, offline):
    spec = get_backbone("mobilenetv2")
    with pytest.raises(WeightsUnavailableError):
        build_backbone(spec, size, "avg", "imagenet")
    keras_file = offline[-1][0]
    assert keras_file == spec.weights_file_for(size)
    assert f"_{size if size != 299 else 224}_no_top.h5" in keras_file
    with pytest.raises(WeightsUnavailableError, match=keras_file):  # make_config passes SIZE on
        make_config(backbone="mobilenetv2", size=size, pooling="avg", weights="imagenet", dtype="float16",
                    precision="float32", seed=0, val=0.2)


def test_efficientnet_imagenet_file_by_path_is_refused(tmp_path):
    """Keras adds a rescaling layer only for weights='imagenet': the ImageNet file by path gives wrong features."""
    spec = get_backbone("efficientnetb0")
    path = tmp_path / spec.weights_file_for()
    path.write_bytes(b"not really weights")
    with pytest.raises(ValueError, match="WEIGHTS=imagenet"):
        weights_identity(spec, str(path))


def test_doc_only_fields_stay_out_of_the_cache_key():
    config = get_backbone("mobilenetv3large").as_config()
    assert "gflops" not in config and "weights_base_url" not in config
    assert config["feature_width"] == 960 and config["preprocess_in_model"] is True


@pytest.mark.slow
def test_a_second_backbones_cache_coexists_and_neither_is_reused(folder_data, tmp_path):
    """Same data, same size, same settings, two backbones: two files, each rebuilt only for itself."""
    kw = {"cache_dir": tmp_path, "size": 75, "weights": "none", "dtype": "float32", **QUIET}
    a = extract_features(folder_data, backbone="xception", **kw)
    b = extract_features(folder_data, backbone="inceptionv3", **kw)
    assert not a.up_to_date and not b.up_to_date
    assert a.path != b.path and "-xception-75-" in a.path.name and "-inceptionv3-75-" in b.path.name
    assert sorted(tmp_path.glob("*.h5")) == sorted([a.path, b.path])
    with FeatureCache(a.path) as ca, FeatureCache(b.path) as cb:
        assert ca.complete and cb.complete
        assert (ca.config["backbone"]["name"], cb.config["backbone"]["name"]) == ("xception", "inceptionv3")
        assert list(ca.column("path")) == list(cb.column("path"))
        assert not np.allclose(ca.features(), cb.features())

    again_a = extract_features(folder_data, backbone="xception", **kw)
    again_b = extract_features(folder_data, backbone="inceptionv3", **kw)
    assert again_a.up_to_date and again_a.path == a.path
    assert again_b.up_to_date and again_b.path == b.path
    with pytest.raises(CacheError, match="holds features of another config"):  # OUT= one, BACKBONE= the other
        extract_features(folder_data, backbone="inceptionv3", out=a.path, **kw)
    assert sorted(tmp_path.glob("*.h5")) == sorted([a.path, b.path])


@pytest.mark.slow
def test_compare_backbones_extracts_each_once_then_reuses_the_caches(folder_data, tmp_path, monkeypatch):
    import json

    from extract import pipeline
    from heads.compare_backbones import compare_backbones

    kw = {"cache_dir": tmp_path / "cache", "out_dir": tmp_path / "out", "size": 75, "weights": "none",
          "dtype": "float32", "progress": False, "log": lambda m: None}
    table = compare_backbones(folder_data, ["xception", "inceptionv3"], "logreg", **kw)
    assert list(table["backbone"]) == ["xception", "inceptionv3"]
    assert list(table["feature_width"]) == [2048, 2048] and list(table["size"]) == [75, 75]
    assert list(table["extraction"]) == ["extracted", "extracted"] and (table["images_per_second"] > 0).all()
    assert len(list((tmp_path / "cache").glob("*.h5"))) == 2
    for row in table.itertuples():
        metrics = json.loads((tmp_path / "out" / row.backbone / "metrics.json").read_text())
        assert metrics["features"] == row.cache and metrics["val_accuracy"] == row.val_accuracy
        assert metrics["val_log_loss"] == row.val_log_loss
        assert row.cache_mb == pytest.approx(Path(row.cache).stat().st_size / 1e6)
        assert row.kb_per_image == 2048 * 4 / 1e3 and row.all_zero_rows == metrics["all_zero_rows"] == 0
    md = (tmp_path / "out" / "compare_backbones.md").read_text()
    assert "| xception" in md and "| inceptionv3" in md and "not meaningful" in md
    assert "KB/image" in md and "8.2 |" in md and "all-zero" not in md
    assert re.search(r"Trained on \d+ rows .*, scored on \d+ validation images .* Every backbone: the same images", md)
    assert (tmp_path / "out" / "compare_backbones.png").stat().st_size > 0

    def no_backbone(config):
        raise AssertionError("a complete cache must be reused, not re-extracted")

    monkeypatch.setattr(pipeline, "load_backbone", no_backbone)
    again = compare_backbones(folder_data, ["inceptionv3", "xception"], "logreg", **kw)
    assert list(again["extraction"]) == ["cached", "cached"]
    # a reused cache reports the throughput recorded when it was extracted
    assert list(again["images_per_second"]) == list(table["images_per_second"])[::-1]
    assert list(again["cache"]) == list(table["cache"])[::-1]
    assert list(again["val_accuracy"]) == list(table["val_accuracy"])[::-1]
    assert "cached" in (tmp_path / "out" / "compare_backbones.md").read_text()
    # A run exported from the comparison is not replaced by the next one (it deleted the export/)
    (tmp_path / "out" / "xception" / "export").mkdir()
    (tmp_path / "out" / "xception" / "export" / "model.keras").write_text("{}")
    with pytest.raises(ValueError, match=rf"^compare-backbones trains a head per backbone into {tmp_path / 'out'}/"
                                         rf"<backbone>, replacing the run there, but {tmp_path / 'out' / 'xception'} "
                                         rf"holds an export/ made by `make export`: pass OUT=<another folder>"):
        compare_backbones(folder_data, ["inceptionv3", "xception"], "logreg", **kw)
    assert (tmp_path / "out" / "xception" / "export" / "model.keras").is_file()
    shutil.rmtree(tmp_path / "out" / "xception" / "export")

    # A reused cache whose rows are all-zero features (MobileNetV2 with random weights gave them) is flagged.
    import heads.compare_backbones as cb

    real = cb.train_head

    def zero_rows_in_xception(head, cache, *args, **kwargs):
        result = real(head, cache, *args, **kwargs)
        result.metrics["all_zero_rows"] = 24 if "xception" in Path(cache).name else 0
        if "xception" in Path(cache).name:
            result.metrics["val_accuracy"] = 1.0  # compare_backbones.md wrote it "1" beside "0.6552"
        return result

    monkeypatch.setattr(cb, "train_head", zero_rows_in_xception)
    said: list[str] = []
    compare_backbones(folder_data, ["inceptionv3", "xception"], "logreg", **{**kw, "log": said.append})
    md = (tmp_path / "out" / "compare_backbones.md").read_text()
    assert "**xception: 24 training and validation rows have all-zero features" in md and "inceptionv3:" not in md
    assert "WARNING: xception: 24 rows have all-zero features; its figures say little" in said
    assert re.search(r"\| xception +\| +75 \| +2048 \| +1\.0000 \|", md), md


def test_compare_backbones_refuses_bad_settings_before_any_work(folder_data, tmp_path):
    from heads.compare_backbones import compare_backbones

    def run(backbones, **kw):
        kw = {"cache_dir": tmp_path / "cache", "out_dir": tmp_path / "out", "weights": "none", "log": lambda m: None,
              **kw}
        return compare_backbones(folder_data, backbones, "logreg", **kw)

    with pytest.raises(ValueError, match="BACKBONES=xception,alexnet names an unknown backbone alexnet; choose from: "
                                         ".*xception"):
        run(["xception", "alexnet"])
    with pytest.raises(ValueError, match=r"SIZE=50 is too small for xception \(>= 71\), inceptionv3 \(>= 75\)"):
        run(["xception", "inceptionv3", "vgg16"], size=50)
    with pytest.raises(ValueError, match="names xception twice"):
        run(["xception", "vgg16", "xception"])
    with pytest.raises(ValueError, match="WEIGHTS=imagenet or WEIGHTS=none"):
        run(["xception", "vgg16"], weights=str(tmp_path / "x.h5"))
    with pytest.raises(ValueError, match="one cache per backbone"):
        run(["xception", "vgg16"], out=tmp_path / "x.h5")
    with pytest.raises(ValueError, match="nohead"):
        compare_backbones(folder_data, ["vgg16"], "nohead", cache_dir=tmp_path / "cache", weights="none")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_compare_backbones_names_every_missing_weights_file_up_front(folder_data, offline, tmp_path):
    from heads.compare_backbones import compare_backbones

    with pytest.raises(WeightsUnavailableError, match="xception_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        compare_backbones(folder_data, ["xception", "vgg16"], cache_dir=tmp_path / "cache", log=lambda m: None)
    assert not (tmp_path / "cache").exists()


def test_readme_backbone_table_is_the_registry():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("\n## Backbones\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `") and not line.startswith("| `BACKBONE=`"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    assert sorted(rows) == NAMES
    for name, cells in rows.items():
        spec = get_backbone(name)
        assert cells[1] == spec.constructor.rsplit(".", 1)[1]
        assert [int(c.replace(",", "")) for c in cells[2:5]] == [spec.default_size, spec.min_size, spec.feature_width]
        assert (cells[5] == "inside the network") == spec.preprocess_in_model
        assert cells[6] == ("—" if spec.gflops is None else f"{spec.gflops:g}¹")


@pytest.mark.slow
def test_concatenated_xception_and_inceptionv3_caches_train_logreg_end_to_end(folder_data, tmp_path):
    """The Dog-Breed recipe in miniature: two backbones at their minimum sizes, one head on both caches."""
    import json

    from heads import predict, train_head
    from heads.__main__ import main as heads_cli

    kw = {"cache_dir": tmp_path / "cache", "weights": "none", "dtype": "float32", **QUIET}
    xcp = extract_features(folder_data, backbone="xception", size=71, **kw).path
    inc = extract_features(folder_data, backbone="inceptionv3", size=75, **kw).path
    with FeatureCache(xcp) as a, FeatureCache(inc) as b:
        order = {p: i for i, p in enumerate(b.column("path"))}
        paths, labels, split = a.column("path"), a.column("label"), a.column("split")
        joined = np.hstack([a.features(), b.features()[[order[p] for p in paths]]])
    assert joined.shape == (len(paths), 2048 + 2048)

    result = train_head("logreg", f"{xcp},{inc}", tmp_path / "run", plots=False, log=lambda m: None)
    assert result.head.coef_.shape[1] == 4096
    val = split == "val"
    proba = result.head.predict_proba(joined[val])
    expected = np.asarray(result.head.classes_)[proba.argmax(1)]
    assert result.metrics["val_accuracy"] == pytest.approx(float(np.mean(expected == labels[val])))
    assert result.metrics["n_train"] + result.metrics["n_val"] == len(paths)

    # the make line: `make train-head FEATURES=<xception cache>,<inceptionv3 cache>` runs this CLI (in process)
    run = tmp_path / "cli_run"
    heads_cli(["train", "--head", "logreg", "--features", f"{xcp},{inc}", "--run", str(run)])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_accuracy"] == pytest.approx(result.metrics["val_accuracy"])

    # predict rebuilds both backbones from the caches' configs: same answers as the head on the cached features
    table = predict(result.run_dir, folder_data, log=lambda m: None)
    got = {str(Path(p).relative_to(folder_data)): prob for p, prob in zip(table["path"], table["probability"])}
    cached = result.head.predict_proba(joined).max(axis=1)
    np.testing.assert_allclose([got[p] for p in paths], cached, rtol=1e-3, atol=1e-4)
