"""make export: the exported model (backbone + head as Keras layers) equals the head on cached features."""

from __future__ import annotations

import base64
import json
from pathlib import Path
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import CLASSES, SIZE, write_class_folders

from extract import FeatureCache
from extract.decode import load_array
from heads import create_head, train_head
from heads.export import _EXPORTERS, decode_images, export_run, exportable_heads, linear_head

QUIET = {"log": lambda m: None}
HEAD_ARGS = {"dense": {"epochs": 2}}
TOL = 1e-4


@pytest.fixture(scope="module")
def cached_images(folder_cache, folder_data):
    """Every cached row: (Pillow-decoded uint8 images as extraction saw them, cached features, paths)."""
    with FeatureCache(folder_cache) as c:
        paths, X = c.column("path"), c.features()
    images = np.stack([load_array(str(folder_data / p), SIZE) for p in paths])
    return images, X, paths


def test_every_head_is_exportable():
    from heads import list_heads

    assert exportable_heads() == list_heads()


def _features_model(head, d: int) -> keras.Model:
    inp = keras.Input((d,))
    return keras.Model(inp, _EXPORTERS[head.name](head)(inp))


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", exportable_heads())
def test_head_layers_match_the_head_on_features(name, n_classes):
    """The Keras form of each head, on features alone (no backbone), for binary and multiclass."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(n_classes), 10)
    X = (rng.normal(size=(len(y), 16)) + y[:, None] * 0.7).astype(np.float32)
    args = {"knn": {"weights": "distance"}, "dense": {"epochs": 2}}.get(name, {})
    head = create_head(name, **args).fit(X, y, validation_data=(X, y))
    query = (X + rng.normal(scale=0.3, size=X.shape)).astype(np.float32)
    got = np.asarray(_features_model(head, 16)(query))
    np.testing.assert_allclose(got, head.predict_proba(query), atol=TOL)
    assert got.shape == (len(query), n_classes)


@pytest.mark.parametrize("output", ["softmax", "softmax-pm", "ovr-sigmoid"])
@pytest.mark.parametrize("rows", [1, 4])
def test_linear_head_outputs(output, rows):
    """linear_head against the formulas written out in numpy."""
    from scipy.special import expit, softmax

    rng = np.random.default_rng(0)
    mean, scale = rng.normal(size=6), rng.uniform(0.5, 2, 6)
    coef, intercept = rng.normal(size=(rows, 6)), rng.normal(size=rows)
    X = rng.normal(size=(9, 6)).astype(np.float32)
    z = ((X - mean) / scale) @ coef.T + intercept
    if output == "ovr-sigmoid" and rows > 1:
        expected = expit(z) / expit(z).sum(1, keepdims=True)
    elif rows == 1:
        p = expit(2 * z[:, 0] if output == "softmax-pm" else z[:, 0])
        expected = np.column_stack([1 - p, p])
    else:
        expected = softmax(z, axis=1)
    model = linear_head(mean, scale, coef, intercept, output)
    np.testing.assert_allclose(np.asarray(model(X)), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", exportable_heads())
def test_exported_model_equals_the_head_on_cached_features(name, folder_cache, cached_images, tmp_path):
    images, X, _ = cached_images
    result = train_head(name, folder_cache, tmp_path / "run", head_args=HEAD_ARGS.get(name), plots=False, **QUIET)
    exported = export_run(tmp_path / "run", tmp_path / "out", formats=("keras",), check=False, **QUIET)
    expected = result.head.predict_proba(X)
    got = np.asarray(exported.model(images, training=False))
    np.testing.assert_allclose(got, expected, atol=TOL)

    reloaded = keras.saving.load_model(tmp_path / "out" / "model.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(images, training=False)), got, atol=1e-6)
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert labels == [CLASSES[c] for c in result.head.classes_]


@pytest.mark.slow
def test_export_all_formats_and_serve_encoded_bytes(folder_cache, folder_data, cached_images, tmp_path, monkeypatch,
                                                    capsys):
    images, X, paths = cached_images
    result = train_head("logreg", folder_cache, tmp_path / "run", plots=False, **QUIET)
    logs = []
    exported = export_run(tmp_path / "run", tmp_path / "out", log=logs.append)
    out = tmp_path / "out"
    expected = result.head.predict_proba(X)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["labels"] == list(CLASSES) and "not meaningful" in manifest["note"]
    checks = manifest["checks"]  # the export's own check on cached images that still exist
    assert checks["images"] == 8 and checks["keras_vs_head_max_abs_diff"] < TOL
    assert checks["tf_decode_vs_pillow_max_pixel_diff"] <= 1

    stored = tf.train.load_checkpoint(str(out / "saved_model" / "variables" / "variables"))
    n_stored = sum(int(np.prod(shape)) for name, shape in stored.get_variable_to_shape_map().items()
                   if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert n_stored == exported.model.count_params()  # each weight once (keras-team/keras#23553)

    served = tf.saved_model.load(str(out / "saved_model"))
    assert {"serving_default", "serve_images"} <= set(served.signatures)
    by_images = served.signatures["serve_images"](image=tf.constant(images))
    np.testing.assert_allclose(by_images["probabilities"].numpy(), expected, atol=TOL)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Shape"):  # pixels resized to another SIZE
        served.signatures["serve_images"](image=tf.zeros((1, SIZE + 29, SIZE + 29, 3), tf.uint8))
    for empty in (served.signatures["serve_images"](image=tf.zeros((0, SIZE, SIZE, 3), tf.uint8)),
                  served.signatures["serving_default"](image_bytes=tf.constant([], tf.string))):
        assert empty["probabilities"].shape == (0, len(CLASSES)) and empty["label"].shape == (0,)

    encoded = [(folder_data / p).read_bytes() for p in paths]
    by_bytes = served.signatures["serving_default"](image_bytes=tf.constant(encoded))
    probs = by_bytes["probabilities"].numpy()
    # TF's decode + antialiased bilinear resize is not Pillow's: pixels differ by a grey level,
    # so probabilities are close, not equal (the README quotes what this measures).
    np.testing.assert_allclose(probs, expected, atol=1e-3)
    np.testing.assert_allclose(probs, np.asarray(exported.model(decode_images(encoded, SIZE))), atol=1e-5)
    assert [s.decode() for s in by_bytes["label"].numpy()] == [CLASSES[i] for i in probs.argmax(1)]

    # The README's serverless handler, as written there, on this SavedModel.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python\nimport base64, os")
    monkeypatch.setenv("MODEL_DIR", str(out / "saved_model"))
    namespace: dict = {}
    exec(readme[start + len("```python\n"):readme.index("```", start + 3)], namespace)  # noqa: S102
    answer = namespace["handler"]({"image": base64.b64encode(encoded[0]).decode()})
    assert answer["statusCode"] == 200 and answer["label"] == CLASSES[probs[0].argmax()]
    np.testing.assert_allclose(answer["probability"], probs[0].max(), atol=1e-6)
    capsys.readouterr()
    truncated_jpeg = base64.b64encode(b"\xff\xd8\xff\xe0 truncated").decode()
    assert namespace["handler"]({"image": truncated_jpeg})["statusCode"] == 400
    assert "Invalid JPEG data" in capsys.readouterr().out  # the reason, in the function's log

    if "tflite" in manifest["files"]:
        assert checks["tflite_vs_keras_max_abs_diff"] < TOL
        assert any(m.startswith("check on 8 cached images: ") and
                   f"TFLite vs Keras {checks['tflite_vs_keras_max_abs_diff']:.2g}" in m for m in logs)
    else:  # conversion may fail on other TF versions: then it is reported, and the rest is written
        assert manifest["tflite_error"] and any("TFLite conversion failed" in m for m in logs)


def test_a_new_export_replaces_every_file_of_the_last_one_and_an_unrunnable_tflite_is_not_kept(
        folder_cache, tmp_path, monkeypatch):
    """Re-exporting into one OUT left the last export's files (maybe another head's) beside the new ones; a
    .tflite the interpreter cannot run (Select TF ops, as a bfloat16 backbone gives) crashed the export and was
    left behind. Files of those names that no export wrote are refused, not deleted."""
    train_head("ridge", folder_cache, tmp_path / "run", plots=False, **QUIET)
    out = tmp_path / "out"
    (out / "saved_model").mkdir(parents=True)
    (out / "saved_model" / "saved_model.pb").write_bytes(b"the user's own model")
    with pytest.raises(ValueError, match="holds saved_model that no headswap export wrote"):
        export_run(tmp_path / "run", out, formats=("keras", "saved_model"), check=False, **QUIET)
    assert (out / "saved_model" / "saved_model.pb").read_bytes() == b"the user's own model"

    # An earlier export: its export.json lists what it wrote (saved_model/ a link to a folder kept elsewhere).
    (out / "saved_model" / "saved_model.pb").unlink()
    (out / "saved_model").rmdir()
    (tmp_path / "kept").mkdir()
    (out / "saved_model").symlink_to(tmp_path / "kept", target_is_directory=True)
    (out / "model.tflite").write_bytes(b"an older head's model")
    (out / "labels.json").write_text("[]")
    (out / "export.json").write_text(json.dumps({"files": {"labels": "labels.json", "saved_model": "saved_model",
                                                           "tflite": "model.tflite"}}))
    (out / "deploy.sh").write_text("# the user's own file")

    def unrunnable(self, path, **kwargs):
        Path(path).write_bytes(b"TFL3 but nothing a TFLite interpreter can load")

    monkeypatch.setattr(keras.Model, "export", unrunnable)
    logs: list[str] = []
    result = export_run(tmp_path / "run", out, formats=("keras", "tflite"), check=False, log=logs.append)
    assert sorted(p.name for p in out.iterdir()) == ["deploy.sh", "export.json", "labels.json", "model.keras"]
    assert (tmp_path / "kept").is_dir()  # the link is removed, not the folder it points at
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == {"labels": "labels.json", "keras": "model.keras"} == result.files
    assert manifest["tflite_error"] and any(m.startswith("TFLite conversion failed, skipped: ") for m in logs)
    assert any(m.startswith("replaced the previous export in ") and "saved_model, model.tflite" in m for m in logs)
    with pytest.raises(ValueError, match="is a file; export writes a folder"):
        export_run(tmp_path / "run", out / "deploy.sh", **QUIET)


def test_a_users_file_is_refused_only_by_an_export_that_would_write_it(folder_cache, tmp_path):
    """A saved_model/ of the user's in OUT stopped FORMATS=keras ("export would overwrite them"), which writes no
    saved_model/. It stays beside that export; an export that would write it refuses it, though OUT now has an
    export.json (which does not list it), rather than deleting it."""
    train_head("ridge", folder_cache, tmp_path / "run", plots=False, **QUIET)
    out = tmp_path / "out"
    (out / "saved_model").mkdir(parents=True)
    (out / "saved_model" / "saved_model.pb").write_bytes(b"the user's own model")
    result = export_run(tmp_path / "run", out, formats=("keras",), check=False, **QUIET)
    assert result.files == {"labels": "labels.json", "keras": "model.keras"}
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.keras", "saved_model"]
    with pytest.raises(ValueError, match=re.escape("holds saved_model that no headswap export wrote (its export.json "
                                                   "does not list them); this export would overwrite them")):
        export_run(tmp_path / "run", out, formats=("keras", "saved_model"), check=False, **QUIET)
    assert (out / "saved_model" / "saved_model.pb").read_bytes() == b"the user's own model"
    assert (out / "model.keras").is_file()  # refused before anything was removed
    export_run(tmp_path / "run", out, formats=("keras",), check=False, **QUIET)  # still fine
    assert (out / "saved_model" / "saved_model.pb").read_bytes() == b"the user's own model"


def test_replacing_an_interrupted_export_names_only_the_files_it_left(folder_cache, tmp_path, monkeypatch):
    """After an export stopped at the SavedModel, the next one said "replaced the previous export in ...
    (labels.json, export.json, model.keras, saved_model, model.tflite)": its export.json lists what it meant to
    write, but only three of those existed."""
    train_head("ridge", folder_cache, tmp_path / "run", plots=False, **QUIET)
    out = tmp_path / "out"

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("heads.export._write_saved_model", crash)
    with pytest.raises(OSError, match="No space left"):
        export_run(tmp_path / "run", out, check=False, **QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.json", "model.keras"]
    monkeypatch.undo()
    logs: list[str] = []
    export_run(tmp_path / "run", out, formats=("keras",), check=False, log=logs.append)
    assert [m for m in logs if m.startswith("replaced")] == [
        f"replaced the previous export in {out} (labels.json, export.json, model.keras)"]


def test_the_check_leaves_out_images_a_decoder_cannot_read_and_a_failed_export_is_replaced_next_time(
        tmp_path, monkeypatch):
    """A cached TIFF (Pillow reads it, serving_default's TF decoder does not) or an image emptied since extraction
    crashed the export's check with a traceback, and the half-written export was then refused as the user's.
    Each is named by its path under the image folder: two class folders' scan.tiff were both listed as scan.tiff."""
    from PIL import Image

    from extract import extract_features

    data = write_class_folders(tmp_path / "d", per_class=4)
    for name in ("circle_00", "square_00"):
        Image.open(data / name.split("_")[0] / f"{name}.png").save(data / name.split("_")[0] / "scan.tiff")
        (data / name.split("_")[0] / f"{name}.png").unlink()
    cache = extract_features(data, out=tmp_path / "c.h5", size=SIZE, weights="none", val=0.5, progress=False,
                             **QUIET).path
    train_head("logreg", cache, tmp_path / "run", plots=False, **QUIET)
    (data / "stripes" / "stripes_01.png").write_bytes(b"")  # emptied since extraction
    out = tmp_path / "out"

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("heads.export._write_saved_model", crash)
    with pytest.raises(OSError, match="No space left"):
        export_run(tmp_path / "run", out, formats=("keras", "saved_model"), **QUIET)
    assert "incomplete" in json.loads((out / "export.json").read_text())
    monkeypatch.undo()

    logs: list[str] = []
    monkeypatch.setattr("heads.export.CHECK_IMAGES", 20)  # every cached image is tried
    monkeypatch.setattr("heads.export.CHECK_TOLERANCE", -1.0)  # and any difference warns, as the check words it
    result = export_run(tmp_path / "run", out, formats=("keras",), log=logs.append)  # replaces, does not refuse
    assert any(m.startswith("WARNING: TensorFlow's decode + resize") and "no saved_model/ was written" in m
               for m in logs)
    assert any(m.startswith("WARNING: the exported model differs") and "another TensorFlow/Keras version?" in m
               for m in logs)
    assert any(m.startswith("replaced the previous export") for m in logs)
    left_out = sorted(result.checks["left_out"])
    assert [m.split(" (")[0] for m in left_out] == ["circle/scan.tiff", "square/scan.tiff", "stripes/stripes_01.png"]
    assert left_out[0].startswith("circle/scan.tiff (serving_default cannot decode it: ")
    assert left_out[2].startswith("stripes/stripes_01.png (empty file")
    assert result.checks["images"] == 12 - 3 and "skipped" not in result.checks
    assert any(m.startswith(f"the export's check left out {len(left_out)} cached image") and
               "serving_default decodes JPEG, PNG, GIF, BMP and WebP only" in m for m in logs)
    manifest = json.loads((out / "export.json").read_text())
    assert "incomplete" not in manifest and sorted(manifest["checks"]["left_out"]) == left_out


def test_a_skipped_check_is_said_not_only_recorded(tmp_path):
    """With the image folder moved since training, the check was skipped without a word on the console (only
    export.json's checks.skipped said so)."""
    from extract import extract_features

    data = write_class_folders(tmp_path / "d", per_class=2)
    cache = extract_features(data, out=tmp_path / "c.h5", size=SIZE, weights="none", val=0.5, progress=False,
                             **QUIET).path
    train_head("logreg", cache, tmp_path / "run", plots=False, **QUIET)
    data.rename(tmp_path / "moved")
    logs: list[str] = []
    result = export_run(tmp_path / "run", tmp_path / "out", formats=("keras",), log=logs.append)
    assert result.checks["skipped"] == f"image folder {data} is not available"
    note = next(m for m in logs if m.startswith("NOTE: the export's check was skipped"))
    assert result.checks["skipped"] in note and "DATA=" in note


@pytest.mark.parametrize("files,precision", [
    ({"labels": "labels.json", "keras": "model.keras"}, []),
    ({"labels": "labels.json", "keras": "model.keras", "saved_model": "saved_model"}, ["bfloat16"]),
])
def test_the_checks_warnings_name_the_runs_precision_and_what_was_exported(files, precision):
    """On a PRECISION=bfloat16 run the self-check warned of "another TensorFlow/Keras version?", where on the same
    TensorFlow the bfloat16 backbone's rounding explains it (rebuilt features 4-8 float16 steps off the cached ones,
    a float32 backbone's one at most). With FORMATS=keras the decode warning spoke of "the SavedModel's bytes path
    (... serving_default)", which was not written: the check compares TensorFlow's decoding with Pillow's."""
    from heads.export import _check_warnings

    checks = {"keras_vs_head_max_abs_diff": 0.011, "bytes_path_vs_pillow_path_max_abs_diff": 0.006, "images": 8,
              "tf_decode_vs_pillow_max_pixel_diff": 1}
    model_vs_head, decoding = _check_warnings(checks, files, precision)
    assert model_vs_head.startswith("the exported model differs from the head on cached features by up to 0.011")
    if precision:
        assert "rounding of the run's PRECISION=bfloat16 backbone" in model_vs_head and "version" not in model_vs_head
        assert decoding.startswith("the SavedModel's bytes path (TF decode + resize, signature serving_default) "
                                   "moves probabilities by up to 0.006")
        assert decoding.endswith("decode with extract.decode.load_array and call the serve_images signature (or "
                                 "model.keras).")
    else:
        assert "another TensorFlow/Keras version?" in model_vs_head and "PRECISION" not in model_vs_head
        assert decoding.startswith("TensorFlow's decode + resize (heads.export.decode_images") and \
            "no saved_model/ was written" in decoding and "SavedModel's bytes path" not in decoding
        assert decoding.endswith("decode with extract.decode.load_array and feed those pixels to model.keras.")
    assert _check_warnings({**checks, "keras_vs_head_max_abs_diff": 0.0, "bytes_path_vs_pillow_path_max_abs_diff": 0.0},
                           files, precision) == []


def test_a_check_on_identical_features_says_it_proves_little(folder_cache, tmp_path, monkeypatch):
    """MobileNets with random weights give features below float16's range: the cache is all zeros, every image gets
    the same probabilities, and the export's check agreed perfectly without a word that this proves nothing."""
    from heads import export

    train_head("ridge", folder_cache, tmp_path / "run", plots=False, **QUIET)
    chosen = export._check_images

    def zeroed(*args, **kwargs):
        paths, cached, why = chosen(*args, **kwargs)
        return paths, np.zeros_like(cached), why

    logs: list[str] = []
    plain = export.export_run(tmp_path / "run", tmp_path / "plain", formats=("keras",), log=logs.append)
    assert "identical_features" not in plain.checks and not [m for m in logs if "identical features" in m]
    monkeypatch.setattr(export, "_check_images", zeroed)
    result = export.export_run(tmp_path / "run", tmp_path / "out", formats=("keras",), log=logs.append)
    assert result.checks["identical_features"] is True
    assert any(m.startswith(f"WARNING: the {result.checks['images']} cached images the check ran on have identical "
                            "features (all zero): ") and "proves little" in m for m in logs)


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        export_run(tmp_path, **QUIET)
    with pytest.raises(ValueError, match="unknown export format onnx"):
        export_run(tmp_path, formats=("onnx",), **QUIET)


@pytest.mark.slow
def test_export_of_joined_caches_rounds_through_each_cache_dtype(folder_cache, folder_data, cached_images, tmp_path):
    """FEATURES=a.h5,b.h5: two backbones side by side; the float16 cache's rounding is mimicked."""
    from extract import extract_features

    images, _, paths = cached_images
    half = extract_features(folder_data, out=tmp_path / "max16.h5", size=SIZE, pooling="max", weights="none",
                            dtype="float16", batch_size=8, progress=False, **QUIET).path
    result = train_head("logreg", [folder_cache, half], tmp_path / "run", plots=False, **QUIET)
    exported = export_run(tmp_path / "run", tmp_path / "out", formats=("keras",), check=False, **QUIET)
    with FeatureCache(half) as c:
        order = {p: i for i, p in enumerate(c.column("path"))}
        X16 = c.features()[[order[p] for p in paths]]
    _, X32, _ = cached_images
    expected = result.head.predict_proba(np.concatenate([X32, X16], axis=1))
    np.testing.assert_allclose(np.asarray(exported.model(images, training=False)), expected, atol=TOL)
    # The float16 cache's features come out of the model exactly representable in float16,
    # as the cache stored them (a one-ulp flip from batch-size-dependent float sums is allowed).
    rounded = next(layer for layer in exported.model.layers if layer.name.startswith("features_"))
    feats = np.asarray(keras.Model(exported.model.input, rounded.output)(images, training=False))
    assert feats.dtype == np.float32
    np.testing.assert_array_equal(feats.astype(np.float16).astype(np.float32), feats)
    ulp = np.spacing(np.abs(X16).astype(np.float16)).astype(np.float32)
    assert (np.abs(feats - X16) <= ulp).all()


def test_joined_caches_of_two_sizes_are_told_at_training_that_export_refuses_them(folder_cache, folder_data,
                                                                                   tmp_path):
    from extract import extract_features

    other = extract_features(folder_data, out=tmp_path / "s72.h5", size=SIZE + 1, weights="none", batch_size=8,
                             progress=False, **QUIET).path
    said = []
    train_head("ridge", [folder_cache, other], tmp_path / "run", plots=False, log=said.append)
    note = next(m for m in said if m.startswith("NOTE: the joined caches were extracted at different sizes"))
    assert f"{folder_cache.name} at {SIZE} px, s72.h5 at {SIZE + 1} px" in note and "extract them at one SIZE" in note
    with pytest.raises(ValueError, match=re.escape(f"different sizes ([{SIZE}, {SIZE + 1}])")):
        export_run(tmp_path / "run", tmp_path / "out", formats=("keras",), check=False, **QUIET)
    said.clear()
    train_head("ridge", folder_cache, tmp_path / "one", plots=False, log=said.append)
    assert not [m for m in said if "different sizes" in m]


@pytest.mark.rebuild  # export builds the backbone again: its check compares that with the cached features
def test_cli_export(folder_cache, tmp_path, capsys):
    """`make export`; its export.json also records what a deployment needs: the TensorFlow/Keras that wrote the
    model, the backbone and its weights, and how well the head did."""
    import calendar
    import time

    from heads.__main__ import main

    result = train_head("ridge", folder_cache, tmp_path / "run", plots=False, **QUIET)
    main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--formats", "keras"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["export.json", "labels.json", "model.keras"]
    manifest = json.loads((tmp_path / "out" / "export.json").read_text())
    assert manifest["checks"]["keras_vs_head_max_abs_diff"] < TOL
    assert manifest["versions"]["tensorflow"] == tf.__version__ and manifest["versions"]["keras"] == keras.__version__
    assert "headswap" in manifest["versions"]
    created = calendar.timegm(time.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(time.time() - created) < 600
    (backbone,) = manifest["backbones"]
    assert backbone["name"] == "xception" and backbone["size"] == SIZE and backbone["weights"] == {"kind": "none"}
    assert manifest["metrics"]["val_accuracy"] == result.metrics["val_accuracy"]
    assert manifest["metrics"]["n_train"] == result.metrics["n_train"]
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--run", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2 and "is not a run folder" in capsys.readouterr().err
