"""report.html: self-contained, per-class table, confused pairs, gallery with and without the image folder."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from conftest import CLASSES
from PIL import Image

from extract import FeatureCache
from heads import train_head
from heads.report import GALLERY_LIMIT, THUMB_PX, confused_pairs, per_class_table, write_report
from heads.train import RANDOM_WEIGHTS_NOTE

QUIET = {"log": lambda m: None}


def _srcs(page: str) -> list[str]:
    return re.findall(r"""src=['"]([^'"]*)""", page)


def assert_self_contained(page: str) -> None:
    assert 'src="http' not in page and "src='http" not in page and "file:" not in page
    assert "<link" not in page and "<script" not in page and "url(" not in page
    assert _srcs(page), "the report should embed pictures"
    for src in _srcs(page):  # plots as PNG, thumbnails of photos as JPEG: each a real image of its type
        mime = re.match(r"data:image/(png|jpeg);base64,", src)
        assert mime, src[:40]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == mime.group(1).upper()
        img.verify()


def _cards(page: str) -> list[str]:
    return re.findall(r"<div class='card'>(.*?)</div></div>", page)


def test_train_head_writes_a_self_contained_report(folder_cache, folder_data, tmp_path):
    train_head("logreg", folder_cache, tmp_path / "run", **QUIET)
    page = (tmp_path / "run" / "report.html").read_text()
    assert_self_contained(page)
    assert f"NOTE: {RANDOM_WEIGHTS_NOTE}" in page and "class='note'" in page
    assert page.index("class='note'") < page.index("<h2>Metrics")  # prominent: before anything else
    table = page[page.index('class="dataframe per-class"'):]
    table = table[:table.index("</table>")]
    for header in ("precision", "recall", "f1-score", "support"):
        assert f"<th>{header}</th>" in table
    for name in (*CLASSES, "macro avg", "weighted avg"):
        assert f"<th>{name}</th>" in table
    assert "Confusion matrix" in page and "Most confused class pairs" in page
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data_root"] == str(folder_data.resolve())  # read from the cache's data_root attribute
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    n_wrong = round(metrics["n_val"] * (1 - metrics["val_accuracy"]))
    assert len(_cards(page)) == n_wrong
    assert page.count("<img alt=") == n_wrong  # every one with its thumbnail: the images exist
    assert "Training curves" not in page


def test_dense_report_has_training_curves(folder_cache, tmp_path):
    train_head("dense", folder_cache, tmp_path / "run", head_args={"epochs": 2}, **QUIET)
    page = (tmp_path / "run" / "report.html").read_text()
    assert_self_contained(page)
    assert "<h2>Training curves</h2><img class='plot'" in page


def test_report_renders_after_the_image_folder_is_moved_away(folder_cache, folder_data, tmp_path):
    data = shutil.copytree(folder_data, tmp_path / "shapes")
    train_head("logreg", folder_cache, tmp_path / "run", data_root=data, **QUIET)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data_root"] == str(data.resolve())
    shutil.move(data, tmp_path / "moved_away")
    train_head("logreg", folder_cache, tmp_path / "run", data_root=data, **QUIET)
    page = (tmp_path / "run" / "report.html").read_text()
    assert_self_contained(page)
    assert 'class="dataframe per-class"' in page and RANDOM_WEIGHTS_NOTE in page
    cards = _cards(page)
    if cards:  # random weights: whether val images are misclassified depends on the net
        assert "Images not available" in page
        assert all("image not available" in c and "<img" not in c for c in cards)


def _val_rows(cache):
    with FeatureCache(cache) as c:
        idx = c.rows("val")
        return c.column("path")[idx], c.column("label")[idx]


def test_gallery_shows_the_misclassified_images_most_confident_first(folder_cache, folder_data, tmp_path):
    paths, y = _val_rows(folder_cache)
    n = len(CLASSES)
    proba = np.eye(n)[y] * 0.9 + 0.1 / n  # right
    wrong = [0, len(y) - 1]
    for rank, i in enumerate(wrong):  # the last one is the most confident mistake
        proba[i] = np.full(n, 0.05)
        proba[i, (y[i] + 1) % n] = 0.6 + 0.2 * rank
    proba /= proba.sum(1, keepdims=True)
    metrics = {"head": "logreg", "note": "", "val_accuracy": 0.5}
    out = write_report(tmp_path, metrics, list(CLASSES), y, proba, paths, data_root=folder_data)
    page = out.read_text()
    assert_self_contained(page)
    assert "class='note'" not in page  # no random-weights note when the cache had real weights
    cards = _cards(page)
    assert [re.search(r"<div>(.*?)</div>", c).group(1) for c in cards] == [paths[wrong[1]], paths[wrong[0]]]
    for c, i in zip(cards, [wrong[1], wrong[0]]):
        assert f"true: <b>{CLASSES[y[i]]}</b>" in c and f"predicted: <b>{CLASSES[(y[i] + 1) % n]}</b>" in c
        thumb = Image.open(io.BytesIO(base64.b64decode(_srcs(c)[0].split(",", 1)[1])))
        assert max(thumb.size) <= THUMB_PX and thumb.size[0] > thumb.size[1]  # 64x48 pictures keep their aspect


def test_gallery_says_images_are_unavailable_when_the_folder_is_gone(folder_cache, tmp_path):
    paths, y = _val_rows(folder_cache)
    proba = np.eye(len(CLASSES))[(y + 1) % len(CLASSES)]  # all wrong
    for root in (tmp_path / "gone", None):
        page = write_report(tmp_path, {"head": "x"}, list(CLASSES), y, proba, paths, data_root=root).read_text()
        assert_self_contained(page)
        assert "Images not available" in page
        cards = _cards(page)
        assert len(cards) == len(y) and all("image not available" in c and "<img" not in c for c in cards)


def test_gallery_is_capped(folder_data, tmp_path):
    files = sorted(p.relative_to(folder_data).as_posix() for p in folder_data.rglob("*.png"))
    y = np.zeros(len(files), int)
    proba = np.tile([0.1, 0.8, 0.1], (len(files), 1))  # all wrong
    page = write_report(tmp_path, {"head": "x"}, list(CLASSES), y, proba, np.array(files), data_root=folder_data,
                        gallery_limit=5).read_text()
    assert len(_cards(page)) == 5 and f"({len(files)}, the 5 most confident shown)" in page
    assert GALLERY_LIMIT >= 24


def test_confused_pairs_are_the_largest_off_diagonal_counts():
    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(12)]
    y_true, y_pred = rng.integers(0, 12, 400), rng.integers(0, 12, 400)
    pairs = confused_pairs(y_true, y_pred, names)
    counts = np.zeros((12, 12), int)
    np.add.at(counts, (y_true, y_pred), 1)
    np.fill_diagonal(counts, 0)
    assert len(pairs) == 10
    assert list(pairs["count"]) == sorted(counts.ravel(), reverse=True)[:10]
    for _, row in pairs.iterrows():
        assert row["true"] != row["predicted"]
        assert counts[names.index(row["true"]), names.index(row["predicted"])] == row["count"]
    assert len(confused_pairs(np.array([0, 1]), np.array([0, 1]), ["a", "b"])) == 0


def test_per_class_table_matches_a_direct_count():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2])
    table = per_class_table(y_true, y_pred, ["a", "b", "c"])
    assert table.loc["b", "precision"] == pytest.approx(2 / 3)  # predicted b three times, right twice
    assert table.loc["b", "recall"] == pytest.approx(2 / 3)
    assert table.loc["c", "precision"] == pytest.approx(1 / 2) and table.loc["c", "recall"] == 1
    assert list(table["support"][:3]) == [2, 3, 1]
    assert table.loc["accuracy", "f1-score"] == pytest.approx(4 / 6)


def test_a_class_without_val_images_has_no_recall_and_stays_out_of_the_macro_average():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 3, 1, 1, 2, 2])  # d: no val image, predicted once (wrongly); e: neither
    table = per_class_table(y_true, y_pred, ["a", "b", "c", "d", "e"])
    assert list(table.index) == ["a", "b", "c", "d", "e", "accuracy", "macro avg", "weighted avg"]
    assert table.loc["d", "precision"] == 0 and np.isnan(table.loc["d", "recall"]) and table.loc["d", "support"] == 0
    assert table.loc["e", ["precision", "recall", "f1-score"]].isna().all()
    # macro recall over the classes with val images, counted directly: a 1/2, b 2/3, c 1/1
    assert table.loc["macro avg", "recall"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    # macro precision over the classes that have one: a 1/1, b 2/2, c 1/2, and d 0/1 (predicted, never right)
    assert table.loc["macro avg", "precision"] == pytest.approx((1 + 1 + 1 / 2 + 0) / 4)
    assert table.loc["accuracy", "f1-score"] == pytest.approx(4 / 6) and table.loc["accuracy", "support"] == 6


def test_report_warns_when_rows_have_all_zero_features(tmp_path):
    """train-head warned on the console (compare-backbones too), but the page itself said nothing."""
    y = np.array([0, 1, 2, 0])
    proba, paths = np.full((4, 3), 1 / 3), [f"{k}.png" for k in range(4)]
    page = write_report(tmp_path, {"head": "x", "all_zero_rows": 1234}, list("abc"), y, proba, paths).read_text()
    assert "WARNING: 1,234 training and validation rows have all-zero features" in page
    assert page.index("all-zero features") < page.index("<h2>Metrics") and "DTYPE=float32" in page
    assert "<th>all_zero_rows</th><td>1234</td>" in page  # as metrics.json has it
    clean = write_report(tmp_path, {"head": "x", "all_zero_rows": 0}, list("abc"), y, proba, paths).read_text()
    assert "all-zero" not in clean and "<div class='note'>" not in clean


def test_per_class_table_in_the_report_has_no_nan(folder_cache, tmp_path):
    paths, y = _val_rows(folder_cache)
    proba = np.eye(len(CLASSES))[y]
    proba[0] = np.roll(proba[0], 1)  # one mistake
    page = write_report(tmp_path, {"head": "x"}, list(CLASSES), y, proba, paths).read_text()
    table = page[page.index('class="dataframe per-class"'):]
    table = table[:table.index("</table>")]
    assert "NaN" not in table and "nan" not in table
    row = re.search(r"<th>accuracy</th>(.*?)</tr>", table, re.S).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells == ["", "", f"{(len(y) - 1) / len(y):.3f}", str(len(y))]


def test_a_many_class_confusion_matrix_stays_small_and_the_report_links_it_at_full_size(tmp_path):
    """At 120 classes the picture was 4,000 pixels square (0.7 GB to save, for every head) and shrunk to the
    page in report.html, its labels unreadable. Now 0.15 inch per class, and the page links the full image."""
    from heads.report import plot_confusion

    names = [f"breed_{i:02d}" for i in range(40)]
    y = np.arange(200) % 40
    run = tmp_path / "run"
    run.mkdir()
    plot_confusion(y, np.roll(y, 1), names, run / "confusion_matrix.png")
    assert Image.open(run / "confusion_matrix.png").size == (850, 850)  # 0.15 * 40 + 2.5 inches at 100 dpi
    proba = np.eye(40)[y]
    page = write_report(run, {"head": "x"}, names, y, proba, [f"{n}.jpg" for n in range(200)]).read_text()
    assert "open <a href='confusion_matrix.png'>confusion_matrix.png</a> at full size" in page
    (tmp_path / "few").mkdir()
    few = write_report(tmp_path / "few", {"head": "x"}, names[:3], y % 3, np.eye(3)[y % 3],
                       [f"{n}.jpg" for n in range(200)]).read_text()
    assert "at full size" not in few
