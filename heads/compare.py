"""Train several heads on one cache (or joined caches) and tabulate them side by side (never re-extracts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from extract.cache import DEFAULT_DIR

from .base import RareClassError
from .registry import canonical_head, create_head, list_heads
from .train import (
    RANDOM_WEIGHTS_NOTE,
    AccuracyBelowThreshold,
    FeatureSource,
    accuracy_failures,
    check_threshold,
    feature_paths,
    scored_on,
    train_head,
    work_at_stake,
)

COLUMNS = ("head", "val_accuracy", "val_top5_accuracy", "val_log_loss", "test_accuracy", "train_accuracy",
           "fit_seconds", "predict_ms_per_image")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def plot_comparison(table: pd.DataFrame, out: Path, title: str = "") -> Path:
    """Horizontal bars of val accuracy and val log loss per head (matplotlib, Agg)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(table) + 1.8), sharey=True)
    for ax, column, label in ((axes[0], "val_accuracy", "val accuracy"), (axes[1], "val_log_loss", "val log loss")):
        values = table[column].astype(float).fillna(0)
        ax.barh(table["head"], values, color="tab:blue" if column == "val_accuracy" else "tab:orange")
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=9)
        ax.set_xlabel(label)
        ax.set_xlim(0, 1.05 if column == "val_accuracy" else max(float(values.max()) * 1.25, 1e-3))
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def compare_heads(
    features: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    heads: list[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    train_rounds: str = "all",
    cache_dir: str | os.PathLike = DEFAULT_DIR,
    assert_accuracy: float | None = None,
    log: Callable[[str], None] = _log,
) -> pd.DataFrame:
    """Fit each head in ``heads`` on ``features``; write ``compare.md`` and ``compare.png``.

    ``heads`` defaults to every registered head but those whose :meth:`~heads.base.Head.cost_note` speaks on
    this cache (hours of fitting): they get an n/a row saying why. Named in ``heads``, they run after a NOTE.

    Reads only the cache file(s), never the images. Returns one row per head with val accuracy,
    top-5, log loss, test accuracy (labelled test rows), train accuracy, fit seconds and
    predict milliseconds per image (``predict_proba`` on the val rows). A head that cannot be
    fitted on this data (:class:`~heads.base.RareClassError`, e.g. linear-svm when a class has one
    training row) is skipped: its row is n/a with a ``note`` column saying why, and the others
    still run; when every head is skipped, the error is raised. ``train_rounds`` is
    :func:`~heads.train.train_head`'s, for every head. With ``assert_accuracy``, raises
    :class:`AccuracyBelowThreshold` after writing everything when any head's val accuracy is
    lower, or a head was skipped.
    """
    check_threshold(assert_accuracy)
    typed = ",".join(h.strip() for h in heads or [])
    heads = [canonical_head(h) for h in heads or [] if h.strip()]  # HEADS=Dense is dense; HEADS=logreg, is logreg
    named = bool(heads)
    heads = heads or list_heads()
    unknown = [h for h in heads if h not in list_heads()]
    if unknown:  # before any training; head_class's own error would name HEAD=, which compare-heads refuses
        raise ValueError(f"HEADS={typed} names {'an unknown head' if len(unknown) == 1 else 'unknown heads'} "
                         f"{', '.join(unknown)}; choose from: {', '.join(list_heads())}. Fix HEADS= (comma-separated "
                         f"names), e.g. HEADS=logreg,dense, or leave it unset for every head but one that would take "
                         f"hours")
    dupes = sorted({h for h in heads if heads.count(h) > 1})
    if dupes:  # each would train into the same run folder, replacing the one before, and fill two rows
        raise ValueError(f"HEADS= names {', '.join(dupes)} twice")
    paths = feature_paths(features, cache_dir)  # after HEADS=: a typo there is said before any cache is looked at
    with FeatureSource(paths) as source:
        if assert_accuracy is not None and not len(source.rows("val")):
            raise ValueError(f"ASSERT_ACCURACY={assert_accuracy:g} needs validation rows, but "
                             f"{','.join(map(str, paths))} has none; extract with VAL>0")
        n_rows, n_classes = len(source.rows("train", train_rounds)), len(source.class_names)
    # A head that would take hours on this data says so before the first head trains; when HEADS= does not name
    # it, the comparison leaves it out (its row says why) instead of sitting silent on it.
    left_out: dict[str, str] = {}
    for name in list(heads):
        cost = create_head(name).cost_note(n_rows, n_classes)
        if cost and named:
            log(f"NOTE: {cost}. Leave {name} out of HEADS= to compare the others without waiting for it.")
        elif cost:
            left_out[name] = f"left out of the default comparison: {cost}. HEADS=...,{name} compares it anyway"
            log(f"NOTE: {name} is {left_out[name]}")
            heads.remove(name)
    stem = "+".join(p.stem for p in paths)
    out_dir = Path(out_dir) if out_dir else Path("runs") / stem
    # Each head trains into out_dir/<head>, the run folder `make train-head` uses too: never over a run made by
    # hand (other arguments, an export), found before the first head trains.
    at_stake = {out_dir / name: work_at_stake(out_dir / name, name, paths)
                for name in heads}
    held = [f"{run} holds {' and '.join(lost)}" for run, lost in at_stake.items() if lost]
    if held:
        raise ValueError(f"compare-heads trains each head into {out_dir}/<head> with its default arguments, which "
                         f"would replace work it cannot make again: {'; '.join(held)}. Pass OUT=<another folder> "
                         f"(--out, out_dir=) to compare there, or move those runs away; nothing was trained")
    metrics: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    skipped: dict[str, RareClassError] = {}
    for name in heads:
        try:
            metrics.append(train_head(name, paths, out_dir / name, train_rounds=train_rounds, cache_dir=cache_dir,
                                      cost_noted=True, log=log).metrics)  # its NOTE came before the first head
        except RareClassError as err:  # this data cannot fit this head: say why, train the others
            log(f"skipping {name}: {err}")
            skipped[name] = err
            rows.append({"head": name, "note": f"skipped: {err}"})
        else:
            rows.append({k: metrics[-1].get(k) for k in COLUMNS})
    rows.extend({"head": name, "note": why} for name, why in left_out.items())
    if not metrics:
        if len(skipped) == 1:
            raise next(iter(skipped.values()))
        raise ValueError(f"no head could be trained on {','.join(map(str, paths))}: "
                         + "; ".join(f"{h}: {e}" for h, e in skipped.items()))
    columns = [*COLUMNS, "note"] if skipped or left_out else list(COLUMNS)
    table = pd.DataFrame(rows, columns=columns)
    table = table.astype({k: float for k in COLUMNS[1:]})  # None (no labelled test rows, skipped) → NaN
    if "note" in table:
        table["note"] = table["note"].fillna("")
    note = next((m["note"] for m in metrics if m["note"]), "")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_comparison(table[~table["head"].isin([*skipped, *left_out])], out_dir / "compare.png",
                    title=f"heads on {stem}" + (f"\n{RANDOM_WEIGHTS_NOTE}" if note else ""))
    cells = table.astype(object).where(table.notna(), None)  # tabulate writes n/a only for None
    md = (f"# Heads on `{', '.join(p.name for p in paths)}`\n\n{scored_on(metrics[0])}\n\n"
          + cells.to_markdown(index=False, floatfmt=".4f", missingval="n/a")
          + "\n\n![val accuracy and log loss per head](compare.png)\n"
          + "\nPredict ms per image: `predict_proba` on the val rows, from cached features (no backbone), "
            "after one warm-up call.\n")
    if note:
        md += f"\n**Note: {RANDOM_WEIGHTS_NOTE}.**\n"
    (out_dir / "compare.md").write_text(md)
    shown = table.drop(columns=["note"]) if "note" in table else table  # the notes are long: listed below instead
    log(f"\n{shown.to_string(index=False, float_format=lambda v: f'{v:.4f}', na_rep='n/a')}")
    if note:
        log(f"NOTE: {RANDOM_WEIGHTS_NOTE}")
    log(f"wrote {out_dir / 'compare.md'} and {out_dir / 'compare.png'}")
    for name, err in skipped.items():
        log(f"skipped {name}: {err}")
    for name in left_out:
        log(f"left out {name}: it would take hours on this data (NOTE above); HEADS=...,{name} compares it anyway")
    if assert_accuracy is not None:
        # A skipped head has no accuracy: like n/a, it does not pass the gate.
        failures = accuracy_failures(metrics, assert_accuracy) + [f"{h} skipped: {e}" for h, e in skipped.items()]
        if failures:
            raise AccuracyBelowThreshold("; ".join(failures))
        log(f"ASSERT_ACCURACY={assert_accuracy:g} passed for {', '.join(heads)}")
    return table
