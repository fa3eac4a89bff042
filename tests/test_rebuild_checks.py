"""Rebuilding a cache's backbone (predict, export) checks the recorded weights; an incremental update keeps the
recorded extraction rate; export's self-check warns about the bytes path as it does about the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, draw, write_class_folders

from extract import FeatureCache, extract_features
from extract import backbones as backbones_mod
from extract.backbones import WeightsUnavailableError, get_backbone, sha256_file
from extract.pipeline import embed, load_backbone
from heads import train_head

QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def weights_files(tmp_path_factory) -> tuple[Path, Path]:
    """Two headless Xception weights files (SIZE px, avg pooling) that differ in one kernel."""
    import keras

    folder = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(1)
    net = keras.applications.Xception(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    original, other = folder / "a" / "xc.weights.h5", folder / "b" / "xc.weights.h5"
    net.save_weights(original)
    kernel = net.weights[0]
    kernel.assign(kernel.numpy() * 1.5)
    net.save_weights(other)
    return original, other


@pytest.fixture(scope="module")
def file_run(weights_files, tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(weights path the cache recorded, cache, data folder, logreg run) extracted with WEIGHTS=<file>."""
    root = tmp_path_factory.mktemp("file_run")
    data = write_class_folders(root / "shapes", per_class=4)
    live = root / "models" / "xc.weights.h5"
    live.parent.mkdir()
    shutil.copy(weights_files[0], live)
    cache = extract_features(data, out=root / "cache.h5", size=SIZE, weights=str(live), dtype="float32",
                             batch_size=8, progress=False, **QUIET).path
    train_head("logreg", cache, root / "run", plots=False, **QUIET)
    return live, cache, data, root / "run"


@pytest.fixture
def live_weights(file_run, weights_files):
    """The recorded path holds the original file again after each test, whatever the test did to it."""
    live = file_run[0]
    yield live
    shutil.copy(weights_files[0], live)


def _config(cache: Path) -> dict:
    with FeatureCache(cache) as c:
        return c.config


def test_unchanged_weights_file_rebuilds_the_cached_features(file_run, live_weights, weights_files):
    _, cache, data, _ = file_run
    config = _config(cache)
    assert config["weights"]["kind"] == "file" and config["weights"]["sha256"] == sha256_file(weights_files[0])
    with FeatureCache(cache) as c:
        paths, cached = c.column("path"), c.features()
    model = load_backbone(config)
    got = np.zeros_like(cached)
    for idx, feats, reasons in embed([str(data / p) for p in paths], model, SIZE, 8):
        assert not any(reasons)
        got[idx] = feats
    np.testing.assert_allclose(got, cached, rtol=1e-4, atol=1e-5)


def test_weights_file_swapped_at_the_same_path_is_refused(file_run, live_weights, weights_files):
    from heads.export import build_export_model
    from heads.predict import predict

    _, cache, data, run = file_run
    shutil.copy(weights_files[1], live_weights)
    old, new = sha256_file(weights_files[0]), sha256_file(weights_files[1])
    for rebuild in (lambda: predict(run, data / "circle", **QUIET), lambda: build_export_model(run)):
        with pytest.raises(ValueError) as err:  # a ValueError: the CLIs print it as one `error:` line, exit 2
            rebuild()
        assert type(err.value).__name__ == "WeightsChangedError"
        message = str(err.value)
        assert old in message and new in message and str(live_weights) in message
        assert "Put the original file back" in message and "re-extract" in message


def test_missing_weights_file_names_the_file_and_its_hash(file_run, live_weights, weights_files):
    from heads.predict import predict

    _, _, data, run = file_run
    live_weights.unlink()
    with pytest.raises(FileNotFoundError) as err:
        predict(run, data / "circle", **QUIET)
    message = str(err.value)
    assert str(live_weights) in message and sha256_file(weights_files[0]) in message
    assert "does not exist any more" in message and "Put that file back" in message
    assert "Unable to synchronously open" not in message


def test_imagenet_file_changed_or_missing_is_refused(folder_cache, tmp_path, monkeypatch):
    """The Keras cache file is checked too; the check runs before anything is built."""
    monkeypatch.setattr(backbones_mod, "KERAS_MODELS_DIR", tmp_path)
    spec = get_backbone("xception")
    keras_file = tmp_path / spec.weights_file_for(SIZE)
    keras_file.write_bytes(b"the weights the cache was extracted with")
    recorded = {"kind": "imagenet", "file": keras_file.name, "sha256": sha256_file(keras_file)}
    config = {**_config(folder_cache), "weights": recorded}
    keras_file.write_bytes(b"weights re-downloaded after an update")
    with pytest.raises(ValueError, match=f"{keras_file}.*{recorded['sha256']}.*{sha256_file(keras_file)}"):
        load_backbone(config)

    keras_file.unlink()

    def offline(spec, size=None):
        raise WeightsUnavailableError("cannot get ImageNet weights for xception: no network")

    monkeypatch.setattr(backbones_mod, "_download_imagenet", offline)
    with pytest.raises(WeightsUnavailableError, match=f"{keras_file}.*{recorded['sha256']}.*no network"):
        load_backbone(config)

    keras_file.write_bytes(b"the weights the cache was extracted with")
    backbones_mod.check_recorded_weights(spec, recorded, "imagenet", SIZE)  # the same file passes


def test_small_update_keeps_the_recorded_rate_and_the_table_shows_the_status(tmp_path):
    from heads.compare_backbones import compare_backbones

    data = write_class_folders(tmp_path / "shapes", per_class=4)
    kw = {"cache_dir": tmp_path / "cache", "out_dir": tmp_path / "out", "size": SIZE, "weights": "none",
          "dtype": "float32", "batch_size": 4, "progress": False, "plots": False, **QUIET}
    first = compare_backbones(data, ["xception"], "logreg", **kw)
    assert list(first["extraction"]) == ["extracted"]
    rate = first["images_per_second"][0]
    with FeatureCache(first["cache"][0]) as c:
        assert c.attrs["images_per_second"] == rate and c.n_rows == 12

    draw("circle", np.random.default_rng(7)).save(data / "circle" / "circle_new.png")
    updated = compare_backbones(data, ["xception"], "logreg", **kw)
    assert list(updated["extraction"]) == ["updated"]
    with FeatureCache(updated["cache"][0]) as c:
        assert c.n_rows == 13
        assert c.attrs["images_per_second"] == rate  # one image is no measure of the speed
    md = (tmp_path / "out" / "compare_backbones.md").read_text()
    assert f"{rate:,.1f} (updated)" in md

    (data / "circle" / "circle_00.png").unlink()  # an update that extracts nothing keeps it too
    removed = extract_features(data, cache_dir=tmp_path / "cache", size=SIZE, weights="none", dtype="float32",
                               progress=False, **QUIET)
    with FeatureCache(removed.path) as c:
        assert c.n_rows == 12 and c.attrs["images_per_second"] == rate

    again = compare_backbones(data, ["xception"], "logreg", **kw)
    assert list(again["extraction"]) == ["cached"]
    assert f"{rate:,.1f} (cached)" in (tmp_path / "out" / "compare_backbones.md").read_text()


def test_export_warns_when_the_bytes_path_moves_probabilities(folder_cache, tmp_path, monkeypatch):
    from heads import export

    train_head("logreg", folder_cache, tmp_path / "run", plots=False, **QUIET)
    logs: list[str] = []
    export.export_run(tmp_path / "run", tmp_path / "same", formats=("keras",), log=logs.append)
    assert not [m for m in logs if "WARNING" in m]

    tf_decode = export.decode_images
    monkeypatch.setattr(export, "decode_images", lambda images, size: 255 - tf_decode(images, size))
    logs.clear()
    export.export_run(tmp_path / "run", tmp_path / "out", formats=("keras",), log=logs.append)
    checks = json.loads((tmp_path / "out" / "export.json").read_text())["checks"]
    assert checks["bytes_path_vs_pillow_path_max_abs_diff"] > 1e-3
    warnings = [m for m in logs if m.startswith("WARNING") and "against the Pillow-decoded pixels" in m]
    assert len(warnings) == 1 and "make predict" in warnings[0]
    assert f"{checks['bytes_path_vs_pillow_path_max_abs_diff']:.2g}" in warnings[0]
