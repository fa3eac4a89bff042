"""WEIGHTS=<file> that Keras cannot read as named, or that holds another network, and compare-backbones offline:
each stops with one line naming the bad value and what to pass instead.

Weights files are written here from random networks (no network access), Xception at its minimum 71 px.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, randomize_batch_norm

from extract import WeightsUnavailableError
from extract import backbones as bb
from extract.backbones import build_backbone, get_backbone

XCEPTION_FILE = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Xception's weights in Keras 3's format (under its own and a plain ``.h5`` name) and in the legacy format
    of Keras's ImageNet downloads (also misnamed ``.weights.h5``), ResNet50's in both, plus the Xception
    features expected from them."""
    import h5py
    import keras

    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    root = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(123)  # not build_backbone's seed 0: loading must change the features
    xc = keras.applications.Xception(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    randomize_batch_norm(xc, seed=1)
    rn = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    out = {"xc": root / "xc.weights.h5", "rn": root / "resnet50.weights.h5"}
    xc.save_weights(out["xc"])
    rn.save_weights(out["rn"])
    out["xc_plain"] = root / "xc_plain.h5"
    shutil.copyfile(out["xc"], out["xc_plain"])
    for name, net in (("xc_legacy", xc), ("rn_legacy", rn)):
        out[name] = root / f"{name}.h5"
        with h5py.File(out[name], "w") as f:
            legacy.save_weights_to_hdf5_group(f, net)
    out["xc_legacy_misnamed"] = root / "xc_legacy.weights.h5"
    shutil.copyfile(out["xc_legacy"], out["xc_legacy_misnamed"])
    pixels = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.save(root / "pixels.npy", pixels)
    np.save(root / "expected.npy", np.asarray(xc(keras.applications.xception.preprocess_input(pixels.copy()))))
    keras.backend.clear_session()
    return out


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    import keras

    keras.backend.clear_session()


def _features(weights: Path | str, pixels: np.ndarray) -> np.ndarray:
    model = build_backbone(get_backbone("xception"), SIZE, "avg", str(weights), seed=0)
    return np.asarray(model(pixels, training=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xc", "xc_plain", "xc_legacy", "xc_legacy_misnamed"])
def test_a_weights_file_loads_silently_whatever_its_name(files, name):
    """Keras 3 picks its reader by the name: a save_weights file copied to xc_plain.h5 failed with "found 0 saved
    layers". Both formats now load under either name, with no warning, to the saved network's features."""
    pixels = np.load(files["xc"].parent / "pixels.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _features(files[name], pixels)
    np.testing.assert_allclose(got, np.load(files["xc"].parent / "expected.npy"), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rn", "rn_legacy"])
def test_another_networks_weights_are_one_line_naming_the_file_to_pass(files, name):
    """ResNet50's file for Xception gave a UserWarning per layer and a 4 kB list of every layer."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Keras warning reaches the user
        with pytest.raises(ValueError) as err:  # a ValueError: the CLIs print it as one `error:` line
            _features(files[name], np.zeros((1, SIZE, SIZE, 3), np.float32))
    msg = str(err.value)
    assert msg.startswith(f"WEIGHTS={files[name]} does not hold xception weights (")
    assert f"pass the headless weights file of xception ({XCEPTION_FILE}" in msg
    assert "\n" not in msg and len(msg) < 600 and "List of objects" not in msg


@pytest.mark.parametrize("content, error, says", [
    (b"not weights at all", OSError, "is not a Keras weights file (not HDF5: "),  # OSError as h5py's was
    (None, ValueError, "is an HDF5 file without Keras weights (a feature cache?)"),
])
def test_a_file_without_keras_weights_says_so(tmp_path, content, error, says):
    import h5py

    path = tmp_path / "features.h5"
    if content is None:
        with h5py.File(path, "w") as f:
            f["features"] = np.zeros(3)
    else:
        path.write_bytes(content)
    spec = get_backbone("vgg16")  # the quickest to build
    with pytest.raises(error) as err:
        build_backbone(spec, 32, "avg", str(path))
    assert str(err.value).startswith(f"WEIGHTS={path} {says}")
    assert f"pass the headless weights file of vgg16 ({spec.weights_file_for()}" in str(err.value)


@pytest.mark.slow
def test_the_extract_cli_prints_one_error_line_for_another_networks_weights(files, folder_data, tmp_path, capsys):
    from extract.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(folder_data), "--out", str(tmp_path / "c.h5"), "--size", str(SIZE),
              "--weights", str(files["rn"]), "--dtype", "float32", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: WEIGHTS={files['rn']} does not hold xception weights (") and XCEPTION_FILE in line
    assert "Warning" not in err and "List of objects" not in err and len(err) < 2000


@pytest.fixture
def offline(tmp_path, monkeypatch) -> list[str]:
    """An empty Keras cache and no network (as in test_backbones.py). Returns the files asked for."""
    import keras

    asked: list[str] = []

    def no_network(fname=None, origin=None, **kwargs):
        asked.append(fname)
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(bb, "KERAS_MODELS_DIR", tmp_path / "keras_models")
    monkeypatch.setattr(keras.utils, "get_file", no_network)
    return asked


def test_compare_backbones_offline_names_every_missing_file_and_a_fix_it_accepts(folder_data, offline, tmp_path):
    from heads.compare_backbones import compare_backbones

    names = ["xception", "vgg16", "resnet50"]
    cached = get_backbone("resnet50")
    (tmp_path / "keras_models").mkdir()
    (tmp_path / "keras_models" / cached.weights_file_for()).write_bytes(b"already downloaded")
    with pytest.raises(WeightsUnavailableError) as err:
        compare_backbones(folder_data, names, cache_dir=tmp_path / "cache", log=lambda m: None)
    msg = str(err.value)
    assert "2 of 3 backbones" in msg and "Temporary failure in name resolution" in msg
    for name in ("xception", "vgg16"):
        spec = get_backbone(name)
        assert f"{name}: {spec.weights_file_for()} ({spec.weights_url()})" in msg
    assert cached.weights_file_for() not in msg
    assert offline == [get_backbone("xception").weights_file_for(), get_backbone("vgg16").weights_file_for()]
    assert f"put them in {tmp_path / 'keras_models'}/" in msg and "WEIGHTS=none" in msg
    assert "WEIGHTS=<path" not in msg  # compare-backbones refuses a weights file for several backbones
    assert not (tmp_path / "cache").exists()


def test_compare_backbones_offline_with_one_backbone_keeps_its_own_error(folder_data, offline, tmp_path):
    from heads.compare_backbones import compare_backbones

    with pytest.raises(WeightsUnavailableError, match=r"(?s)cannot get ImageNet weights for vgg16.*WEIGHTS=<path"):
        compare_backbones(folder_data, ["vgg16"], cache_dir=tmp_path / "cache", log=lambda m: None)
