"""Pictures and the HTML report of a run (matplotlib, Agg backend).

``plot_confusion`` and ``plot_history`` write PNGs; ``write_report`` writes ``report.html``, one
self-contained page (metrics, per-class table, confusion matrix, most-confused pairs, a gallery
of misclassified validation images read from the image folder while it exists, training curves).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _pyplot():
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], out: Path | io.BytesIO,
                   title: str = "") -> Path | io.BytesIO:
    """Row-normalised confusion matrix; cell counts are printed when there are at most 20 classes.

    Above 20 classes each row gets 0.15 inch at 100 dpi (7-point labels, readable at full size): 120 classes
    make a 2,050-pixel square. A 4,000-pixel one took 0.7 GB of memory to save, for every head trained.
    """
    from sklearn.metrics import confusion_matrix  # noqa: PLC0415

    plt = _pyplot()
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.35 * n + 2) if n <= 20 else min(max(8.0, 0.15 * n + 2.5), 40)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7 if n > 20 else 10)
    ax.set_yticks(ticks, class_names, fontsize=7 if n > 20 else 10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return out


def plot_history(history: dict[str, list[float]], out: Path | io.BytesIO, title: str = "") -> Path | io.BytesIO:
    """Loss and accuracy per epoch: training, and validation (sgd) or the early-stopping holdout (dense)."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--"), ("holdout_", ":")):
            key = prefix + metric
            if key in history:
                ax.plot(np.arange(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on a 5-epoch run
        ax.set_title(metric)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return out


# -- report.html -----------------------------------------------------------------------------
GALLERY_LIMIT = 48
THUMB_PX = 128
TOP_PAIRS = 10

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
 padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{background:#fde2e1;border:2px solid #c0392b;color:#7b1d14;padding:.8em 1em;font-size:1.1em;font-weight:bold}
.muted{color:#666}.gallery{display:flex;flex-wrap:wrap;gap:10px}
.card{width:150px;font-size:.8em;border:1px solid #ddd;padding:4px;overflow-wrap:anywhere}
.card img{max-width:140px;max-height:140px;display:block;margin:auto}
.missing{width:140px;height:60px;background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
.wrong{color:#c0392b}img.plot{max-width:100%}
"""


def find_data_root(data_root: str | os.PathLike | None, features: Any) -> Path | None:
    """The image folder cached paths are relative to: ``data_root`` if given, else the cache's
    ``data_root`` attribute (first cache of ``features``: a path, ``'a.h5,b.h5'`` or a list), else None."""
    if data_root:
        return Path(data_root).expanduser().resolve()
    from extract.cache import CacheError, FeatureCache  # noqa: PLC0415

    first = features.split(",")[0] if isinstance(features, str) else (
        features if isinstance(features, os.PathLike) else list(features)[0])
    try:
        with FeatureCache(str(first).strip()) as c:
            root = c.attrs.get("data_root") or ""
    except (CacheError, OSError):
        return None
    return Path(root) if root else None


JPEG = "image/jpeg"


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _figure_png(draw: Callable[[io.BytesIO], Any]) -> bytes:
    buf = io.BytesIO()
    draw(buf)
    return buf.getvalue()


def _thumbnail(path: Path) -> bytes | None:
    from extract.decode import DecodeError, load_rgb  # noqa: PLC0415

    try:
        img = load_rgb(str(path), draft_size=THUMB_PX)  # DCT-scaled JPEG decode: a thumbnail needs no more
    except (DecodeError, OSError):
        return None
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)  # a tenth of PNG's encoding time for photos, and smaller
    return buf.getvalue()


def confused_pairs(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], top: int = TOP_PAIRS):
    """The ``top`` largest off-diagonal confusion counts as a DataFrame: true, predicted, count, share of true."""
    import pandas as pd  # noqa: PLC0415
    from sklearn.metrics import confusion_matrix  # noqa: PLC0415

    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(n)) if len(y_true) else np.zeros((n, n), int)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat_order = np.argsort(-off, axis=None, kind="stable")[:top]
    rows = []
    for k in flat_order:
        i, j = divmod(int(k), n)
        if off[i, j] == 0:
            break
        rows.append({"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j]),
                     "share of true class": f"{off[i, j] / cm[i].sum():.1%}"})
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "share of true class"])


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]):
    """scikit-learn's classification_report as a DataFrame: precision, recall, f1-score, support per class.

    A class with no row in ``y_true`` has no recall: its recall and F1 are NaN, and its precision is 0 if it was
    predicted (every such prediction is wrong) else NaN. The macro average is each column's mean over the classes
    where it is defined (scikit-learn would count an undefined recall as 0 and pull the average down for classes
    that were never asked; a precision of 0 it measured stays in). ``y_true`` is not empty.
    """
    import pandas as pd  # noqa: PLC0415
    from sklearn.metrics import classification_report  # noqa: PLC0415

    present = np.unique(y_true)
    report = classification_report(y_true, y_pred, labels=present, target_names=[class_names[i] for i in present],
                                   output_dict=True, zero_division=0)
    for key in ("accuracy", "micro avg"):  # "micro avg" stands in for accuracy when a prediction is outside labels
        report.pop(key, None)
    table = pd.DataFrame(report).T
    for i in sorted(set(range(len(class_names))) - set(present.tolist())):
        table.loc[class_names[i]] = [0.0 if (y_pred == i).any() else np.nan, np.nan, np.nan, 0]
    scores = ["precision", "recall", "f1-score"]
    table.loc["macro avg", scores] = table.loc[class_names, scores].mean()  # pandas skips the NaN cells
    # sklearn's text report puts accuracy between the classes and the averages
    table.loc["accuracy"] = [np.nan, np.nan, float(np.mean(y_true == y_pred)), len(y_true)]
    table = table.loc[[*class_names, "accuracy", "macro avg", "weighted avg"]]
    table["support"] = table["support"].astype(int)
    return table


def _metrics_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    def fmt(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, dict):
            return ", ".join(f"{k}={w}" for k, w in v.items())
        return str(v)
    keys = ("val_accuracy", "val_top5_accuracy", "val_log_loss", "train_accuracy", "test_accuracy", "n_train",
            "n_val", "n_test_labelled", "fit_seconds", "predict_ms_per_image", "epochs_run", "best_epoch",
            "head_args", "selected_params", "fit_note", "train_rounds", "weights", "all_zero_rows", "features")
    return [(k, fmt(metrics[k])) for k in keys if k in metrics]


def write_report(
    run_dir: str | os.PathLike,
    metrics: dict[str, Any],
    class_names: list[str],
    y_true: np.ndarray,
    proba: np.ndarray,
    paths: np.ndarray,
    *,
    data_root: str | os.PathLike | None = None,
    history: dict[str, list[float]] | None = None,
    cache_config: dict[str, Any] | list[dict[str, Any]] | None = None,
    gallery_limit: int = GALLERY_LIMIT,
) -> Path:
    """Write ``run_dir/report.html``: one self-contained page (pictures are base64 data URIs:
    PNG plots, JPEG thumbnails).

    Parameters
    ----------
    metrics : the run's metrics.json content.
    y_true : array of shape (n_val,), class indices; proba : array of shape (n_val, n_classes).
    paths : array of shape (n_val,), image paths relative to ``data_root`` (as the cache stores them).
    data_root : the image folder; when it (or an image) is gone, the gallery says so instead.
    history : per-epoch ``loss``/``accuracy``/``val_*`` lists (dense, sgd) for training curves.
    cache_config : the cache's config, or a list of them for joined caches, in the order their features are joined.

    Reuses ``confusion_matrix.png`` / ``training_curves.png`` of ``run_dir`` when present.
    """
    run_dir = Path(run_dir)
    y_true = np.asarray(y_true, int)
    y_pred = np.asarray(proba).argmax(1) if len(y_true) else np.zeros(0, int)
    head = metrics.get("head", "head")
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(head)} report</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Run report: <code>{e(head)}</code></h1>",
             f"<p class='muted'>{e(str(run_dir))} · features {e(str(metrics.get('features', '')))} · "
             f"written {_dt.datetime.now().isoformat(timespec='seconds')}</p>"]
    if metrics.get("note"):
        parts.append(f"<div class='note'>NOTE: {e(metrics['note'])}. These features come from a randomly "
                     f"initialised backbone; re-extract with WEIGHTS=imagenet for real results.</div>")
    if metrics.get("all_zero_rows"):  # train-head warned on the console; the page is what gets mailed
        from .train import ZERO_FEATURES_FIX  # noqa: PLC0415  (train imports this module)

        parts.append(f"<div class='note'>WARNING: {metrics['all_zero_rows']:,} training and validation rows have "
                     f"all-zero features: no head can tell them apart, so these figures say little. "
                     f"<code>make verify FEATURES=...</code> lists them; {e(ZERO_FEATURES_FIX)}.</div>")

    parts.append("<h2>Metrics</h2><table>" + "".join(
        f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _metrics_rows(metrics)) + "</table>")
    configs = [cache_config] if isinstance(cache_config, dict) else list(cache_config or [])
    for k, config in enumerate(configs, 1):  # joined caches: every backbone, in the order their features are joined
        w = config.get("weights", {})
        parts.append(f"<p class='muted'>cache{f' {k} of {len(configs)}' if len(configs) > 1 else ''}: backbone "
                     f"{e(config['backbone']['name'])}, size {config['size']}, pooling {e(config['pooling'])}, "
                     f"weights {e(w.get('kind', ''))}, dtype {e(config['dtype'])}</p>")

    if not len(y_true):
        parts.append("<h2>Validation</h2><p>No validation rows: extract with VAL&gt;0 for per-class "
                     "metrics, the confusion matrix and misclassified images.</p>")
    else:
        parts.append("<h2>Per-class precision, recall and F1 (validation)</h2>")
        three = lambda v: f"{v:.3f}"  # noqa: E731
        # pandas skips formatters for NaN: the accuracy row's empty precision and recall need na_rep
        table = per_class_table(y_true, y_pred, class_names)
        parts.append(table.to_html(
            formatters={"precision": three, "recall": three, "f1-score": three}, na_rep="", classes="per-class",
            border=0))
        absent = [name for name in class_names if table.loc[name, "support"] == 0]
        if absent:
            parts.append(f"<p class='muted'>{len(absent)} class{'es have' if len(absent) > 1 else ' has'} no "
                         f"validation image ({e(', '.join(absent[:10]))}{', ...' if len(absent) > 10 else ''}): no "
                         f"recall or F1, and the macro average of those leaves {'them' if len(absent) > 1 else 'it'} "
                         f"out. A precision of 0 means the head predicted the class for images of other classes "
                         f"(the macro precision counts it).</p>")

        cm_file = run_dir / "confusion_matrix.png"
        png = cm_file.read_bytes() if cm_file.is_file() else _figure_png(
            lambda buf: plot_confusion(y_true, y_pred, class_names, buf, title=f"{head}: validation confusion matrix"))
        image = f"<img class='plot' alt='confusion matrix' src='{_data_uri(png)}'>"
        if len(class_names) > 20 and cm_file.is_file():  # shrunk to the page, its labels are too small to read
            image = (f"<p class='muted'>{len(class_names)} classes: open <a href='{cm_file.name}'>{cm_file.name}</a> "
                     f"at full size to read the labels.</p><a href='{cm_file.name}'>{image}</a>")
        parts.append(f"<h2>Confusion matrix (validation)</h2>{image}")

        pairs = confused_pairs(y_true, y_pred, class_names)
        parts.append(f"<h2>Most confused class pairs (top {TOP_PAIRS})</h2>")
        parts.append(pairs.to_html(index=False, border=0) if len(pairs)
                     else "<p>No validation image is misclassified.</p>")
        parts.append(_gallery(y_true, y_pred, np.asarray(proba), np.asarray(paths), class_names,
                              Path(data_root) if data_root else None, gallery_limit))

    if history:
        curves = run_dir / "training_curves.png"
        png = curves.read_bytes() if curves.is_file() else _figure_png(
            lambda buf: plot_history(history, buf, title=f"{head} training curves"
                                     + (f"\n{metrics['note']}" if metrics.get("note") else "")))
        parts.append(f"<h2>Training curves</h2><img class='plot' alt='training curves' src='{_data_uri(png)}'>")
    parts.append("</body></html>\n")
    out = run_dir / "report.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _gallery(y_true, y_pred, proba, paths, class_names, root: Path | None, limit: int) -> str:
    e = html.escape
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-proba[wrong, y_pred[wrong]], kind="stable")]  # most confident mistakes first
    head = f"<h2>Misclassified validation images ({len(wrong)}"
    head += f", the {limit} most confident shown)</h2>" if len(wrong) > limit else ")</h2>"
    if not len(wrong):
        return head + "<p>None.</p>"
    available = root is not None and root.is_dir()
    notice = "" if available else (
        f"<p class='note'>Images not available: the image folder {e(str(root)) if root else '(unknown)'} "
        f"no longer exists. Labels are listed without thumbnails; pass DATA= to train-head to show them.</p>")
    cards = []
    for i in wrong[:limit]:
        thumb = _thumbnail(root / paths[i]) if available else None
        pic = (f"<img alt='{e(str(paths[i]))}' src='{_data_uri(thumb, JPEG)}'>" if thumb
               else "<div class='missing'>image not available</div>")
        cards.append(f"<div class='card'>{pic}<div>{e(str(paths[i]))}</div>"
                     f"<div>true: <b>{e(class_names[y_true[i]])}</b> (p={proba[i, y_true[i]]:.2f})</div>"
                     f"<div class='wrong'>predicted: <b>{e(class_names[y_pred[i]])}</b> "
                     f"(p={proba[i, y_pred[i]]:.2f})</div></div>")
    return head + notice + "<div class='gallery'>" + "".join(cards) + "</div>"
