"""Extract one data set with several backbones, train the same head on each, tabulate and chart them.

Each backbone gets its own cache (the backbone is part of the cache key), so a backbone already
extracted with the same settings is reused, not recomputed. All caches share the data set's
stable train/val split, so every head is scored on the same validation images.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from extract import backbones as _backbones
from extract.backbones import BackboneSpec, WeightsUnavailableError, get_backbone, list_backbones, weights_identity
from extract.cache import DEFAULT_DIR, FeatureCache, parts_dir

from .registry import create_head
from .train import EXPORT_DIR, RANDOM_WEIGHTS_NOTE, has_export, scored_on, train_head

THROUGHPUT_ATTR = "images_per_second"  # read from the cache when the pipeline records it


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _validate(backbones: Sequence[str], head: str, head_args: dict[str, Any], extract_kwargs: dict[str, Any]) -> None:
    """Everything that can be wrong, before the first image is read."""
    if not backbones:
        raise ValueError("BACKBONES= is empty; name two or more, e.g. BACKBONES=xception,inceptionv3,resnet50")
    dupes = sorted({b for b in backbones if list(backbones).count(b) > 1})
    if dupes:
        raise ValueError(f"BACKBONES= names {', '.join(dupes)} twice")
    unknown = [b for b in backbones if b not in list_backbones()]
    if unknown:  # get_backbone's own error would name BACKBONE=, which compare-backbones refuses
        raise ValueError(f"BACKBONES={','.join(backbones)} names "
                         f"{'an unknown backbone' if len(unknown) == 1 else 'unknown backbones'} {', '.join(unknown)}; "
                         f"choose from: {', '.join(list_backbones())}. Fix BACKBONES= (comma-separated names), "
                         f"e.g. BACKBONES=xception,inceptionv3,resnet50")
    specs = [get_backbone(b) for b in backbones]
    create_head(head, **head_args)  # unknown head or bad HEAD_ARGS: error before any extraction
    if "out" in extract_kwargs:
        raise ValueError("out= names one cache file; compare_backbones() writes one cache per backbone into "
                         "cache_dir (default features_cache/) and takes out_dir for its table and runs")
    for key in ("backbone", "cache_dir", "log"):
        if key in extract_kwargs:
            raise TypeError(f"compare_backbones() sets {key} itself")
    size = extract_kwargs.get("size")
    if size is not None:
        small = [f"{s.name} (>= {s.min_size})" for s in specs if int(size) < s.min_size]
        if small:
            raise ValueError(f"SIZE={size} is too small for {', '.join(small)}; raise SIZE= or leave it unset "
                             f"(each backbone then uses its default size)")
    weights = extract_kwargs.get("weights", "imagenet")
    if weights not in ("imagenet", "none", "auto") and len(specs) > 1:
        raise ValueError(f"WEIGHTS={weights} is one backbone's weights file; compare-backbones takes "
                         f"WEIGHTS=imagenet or WEIGHTS=none")
    if weights == "imagenet":  # name every missing weights file now, not after an hour of extraction
        _check_imagenet_weights(specs, size)


def _check_imagenet_weights(specs: Sequence[BackboneSpec], size: int | None) -> None:
    """One error naming every backbone's missing ImageNet file, with a fix that compare-backbones accepts
    (the single-backbone error suggests WEIGHTS=<path>, which it refuses for several backbones)."""
    missing = []
    for spec in specs:
        spec_size = size if size is not None else spec.default_size
        try:
            weights_identity(spec, "imagenet", spec_size)
        except WeightsUnavailableError as err:
            missing.append((spec, spec_size, err))
    if not missing:
        return
    err = missing[0][2]
    if len(specs) == 1:  # its own error's WEIGHTS=<path> hint is valid for one backbone
        raise err
    why = f"{type(err.__cause__).__name__}: {err.__cause__}" if err.__cause__ else str(err).splitlines()[0]
    files = "\n".join(f"  {spec.name}: {spec.weights_file_for(s)} ({spec.weights_url(s)})" for spec, s, _ in missing)
    raise WeightsUnavailableError(
        f"cannot get the ImageNet weights of {len(missing)} of {len(specs)} backbones ({why}):\n{files}\n"
        f"No network to download them? Download these files elsewhere and put them in "
        f"{_backbones.KERAS_MODELS_DIR}/, or pass WEIGHTS=none to compare the backbones' speed and size only "
        f"(random weights: accuracies are then not meaningful)."
    ) from err


def _refuse_exported_runs(out: Path, backbones: list[str]) -> None:
    exported = [str(out / name) for name in backbones if has_export(out / name)]
    if exported:
        raise ValueError(f"compare-backbones trains a head per backbone into {out}/<backbone>, replacing the run "
                         f"there, but {' and '.join(exported)} {'holds' if len(exported) == 1 else 'hold'} an "
                         f"{EXPORT_DIR}/ made by `make export`: pass OUT=<another folder> (--out, out_dir=), or move "
                         f"{'it' if len(exported) == 1 else 'them'} away. No head was trained; the caches extracted "
                         f"so far are kept, and a rerun reuses them")


def compare_backbones(
    data: str | os.PathLike,
    backbones: Sequence[str],
    head: str = "logreg",
    *,
    out_dir: str | os.PathLike | None = None,
    head_args: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike = DEFAULT_DIR,
    plots: bool = True,
    log: Callable[[str], None] = _log,
    **extract_kwargs: Any,
) -> pd.DataFrame:
    """Extract ``data`` with each of ``backbones`` (reusing complete caches), fit ``head`` on each.

    ``extract_kwargs`` go to :func:`extract.extract_features` (``labels``, ``size``, ``weights``,
    ``pooling``, ``val``, ``seed``, …); ``size=None`` gives each backbone its default size.
    Writes ``compare_backbones.md`` and ``compare_backbones.png`` into ``out_dir`` (default
    ``runs/<dataset>-backbones/``) with one run folder per backbone, and returns one row per
    backbone: val accuracy, val log loss, extraction images/s (None when the cache was reused
    and holds no recorded throughput), feature width, KB of features per image and cache size on disk.
    """
    from extract import extract_features  # noqa: PLC0415  (keeps `import heads` light)

    backbones = [b.strip().lower() for b in backbones if b.strip()]
    head_args = dict(head_args or {})
    _validate(backbones, head, head_args, extract_kwargs)
    cache_dir = Path(cache_dir)
    overwrite = bool(extract_kwargs.get("overwrite", False))
    rows, note, out = [], "", Path(out_dir) if out_dir else None
    if out is not None:  # an exported run is work a rerun cannot make again
        _refuse_exported_runs(out, backbones)
    for name in backbones:
        log(f"== {name}")
        before = {p.name for p in cache_dir.glob("*")} if cache_dir.is_dir() else set()
        result = extract_features(data, backbone=name, cache_dir=cache_dir, log=log, **extract_kwargs)
        with FeatureCache(result.path) as c:
            recorded = c.attrs.get(THROUGHPUT_ATTR)
            width = int(np.prod(c.feature_shape))
            kb_per_image = width * np.dtype(c.config["dtype"]).itemsize / 1e3
            size, dataset = c.config["size"], c.attrs.get("dataset_name") or Path(data).name
        if result.up_to_date:
            status = "cached"
        elif not overwrite and (result.path.name in before or parts_dir(result.path).name in before):
            status = "updated"  # resumed or incremental: time covers only part of the images
        else:
            status = "extracted"
        ips = float(recorded) if recorded is not None else None
        if out is None:  # known now, from the cache's data set name: checked before the first head trains
            out = Path("runs") / f"{_safe(dataset)}-backbones"
            _refuse_exported_runs(out, backbones)
        m = train_head(head, result.path, out / name, head_args=head_args, cache_dir=cache_dir, plots=plots,
                       log=log).metrics
        note, scored = note or m["note"], scored_on(m)
        rows.append({
            "backbone": name, "size": size, "feature_width": width,
            "val_accuracy": m["val_accuracy"], "val_log_loss": m["val_log_loss"],
            "images_per_second": ips, "extraction": status,
            "kb_per_image": kb_per_image, "cache_mb": result.path.stat().st_size / 1e6, "fit_seconds": m["fit_seconds"],
            "all_zero_rows": m["all_zero_rows"], "cache": str(result.path),
        })
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    md = (f"# Backbones on `{dataset}`, head `{head}`\n\n{scored} Every backbone: the same images and split.\n\n"
          + _markdown(table) + "\n\n"
          "images/s: extraction throughput (decode + backbone + write, backbone build excluded) recorded in the "
          "cache by the run that extracted it, on the machine it ran on. `(cached)`: this run reused the cache "
          "and extracted nothing; `(updated)`: this run resumed it or extracted only added or changed images, "
          "and the rate is the cache's recorded one (a smaller update keeps the larger run's rate). KB/image: "
          "the features stored per image (width × DTYPE), what the cache grows by per image; a small cache's "
          "file is larger per image (HDF5 stores whole chunks of up to 4 MB).\n")
    zeros = table[table["all_zero_rows"] > 0]
    for row in zeros.itertuples():
        md += (f"\n**{row.backbone}: {row.all_zero_rows:,} training and validation rows have all-zero features; "
               f"its figures say little (see `make verify FEATURES={row.cache}`).**\n")
    if note:
        md += f"\n**Note: {RANDOM_WEIGHTS_NOTE}.**\n"
    (out / "compare_backbones.md").write_text(md)
    if plots:
        plot_backbones(table, out / "compare_backbones.png",
                       title=f"{head} on {dataset}" + (" (random backbone weights: not meaningful)" if note else ""))
    log("\n" + _text(table))
    for row in zeros.itertuples():
        log(f"WARNING: {row.backbone}: {row.all_zero_rows:,} rows have all-zero features; its figures say little")
    if note:
        log(f"NOTE: {RANDOM_WEIGHTS_NOTE}")
    log(f"wrote {out / 'compare_backbones.md'}" + (f" and {out / 'compare_backbones.png'}" if plots else ""))
    return table


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "data"


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Rounded copy for people: the throughput carries its extraction status (see :func:`_rate_label`)."""
    shown = pd.DataFrame({
        "backbone": table["backbone"], "size": table["size"], "feature width": table["feature_width"],
        "val accuracy": table["val_accuracy"].map(lambda v: "n/a" if v is None or pd.isna(v) else f"{v:.4f}"),
        "val log loss": table["val_log_loss"].map(lambda v: "n/a" if v is None or pd.isna(v) else f"{v:.4f}"),
        "images/s": [_rate_label(v, status) for v, status in zip(table["images_per_second"], table["extraction"])],
        "KB/image": table["kb_per_image"].map(lambda v: f"{v:,.1f}"),
    })
    return shown


def _rate_label(ips: float | None, status: str) -> str:
    """'31.0' for a cache this run extracted; '31.0 (cached)' / '31.0 (updated)' when the rate was recorded by an
    earlier run; the status alone when no rate is recorded."""
    if ips is None or pd.isna(ips):
        return status
    return f"{ips:,.1f}" + ("" if status == "extracted" else f" ({status})")


def _markdown(table: pd.DataFrame) -> str:
    # tabulate would read "1.0000" as a number and write it "1": the cells stay as printed
    return _display(table).to_markdown(index=False, colalign=["left"] + ["right"] * 6, disable_numparse=True)


def _text(table: pd.DataFrame) -> str:
    return _display(table).to_string(index=False)


def plot_backbones(table: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Two bar panels per backbone: val accuracy, and extraction images/s ('cached' where unknown)."""
    from .report import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    names = list(table["backbone"])
    y = np.arange(len(names))
    fig, (acc_ax, speed_ax) = plt.subplots(1, 2, figsize=(10, 1.0 + 0.5 * len(names)), sharey=True)
    acc = [0.0 if v is None or pd.isna(v) else v for v in table["val_accuracy"]]
    acc_ax.barh(y, acc, color="tab:blue")
    acc_ax.set_xlim(0, 1)
    acc_ax.set_xlabel("val accuracy")
    for i, v in enumerate(acc):
        inside = v > 0.8
        acc_ax.text(v, i, f" {v:.3f} ", va="center", ha="right" if inside else "left",
                    color="white" if inside else "black")
    ips = table["images_per_second"]
    known = [float(v) if v is not None and not pd.isna(v) else 0.0 for v in ips]
    speed_ax.barh(y, known, color="tab:orange")
    speed_ax.set_xlabel("extraction images/s (this machine)")
    for i, (v, status) in enumerate(zip(ips, table["extraction"])):
        speed_ax.text(known[i], i, f" {_rate_label(v, status)}", va="center")
    speed_ax.set_xlim(0, max(known + [1.0]) * 1.6)  # room for '(updated)'
    acc_ax.set_yticks(y, names)
    acc_ax.invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
