"""What the logreg head swap spends on its fit, per C: ``python -m bench.logreg_c --features CACHE``.

Each C trains the ``logreg`` head with ``train_head`` (its own train/val rows, standardization and one BLAS
thread; no plots), in this one process, after a first untimed fit has loaded scikit-learn. It prints the lbfgs
iterations, the fit seconds ``metrics.json`` records, and the held-out log loss and accuracy. On random-weight
features these numbers say how hard lbfgs works, not how good a head is.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def fit_per_c(features: str, cs: list[float]) -> list[dict]:
    from heads import train_head

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train_head("logreg", features, Path(tmp) / "warm-up", head_args={"C": cs[0]}, plots=False, log=lambda m: None)
        for c in cs:
            res = train_head("logreg", features, Path(tmp) / f"C{c:g}", head_args={"C": c}, plots=False,
                             log=lambda m: None)
            m = res.metrics
            rows.append({"C": c, "iterations": res.head.n_iter_, "fit_seconds": m["fit_seconds"],
                         "val_log_loss": m["val_log_loss"], "val_accuracy": m["val_accuracy"],
                         "n_train": m["n_train"], "note": m["note"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.logreg_c", description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True, help="a cache, e.g. bench_out/bench-100-n8192.h5")
    p.add_argument("--C", default="0.001,0.01,0.1,1", help="comma-separated values of C (default: %(default)s)")
    args = p.parse_args(argv)
    rows = fit_per_c(args.features, [float(c) for c in args.C.split(",")])
    print(f"logreg on {args.features} ({rows[0]['n_train']} training rows), one process, fit only:")
    print("| C | lbfgs iterations | fit s | val log loss | val accuracy |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['C']:g} | {r['iterations']} | {r['fit_seconds']:.2f} | {r['val_log_loss']:.3f} "
              f"| {r['val_accuracy']:.3f} |")
    if rows[0]["note"]:
        print(f"note: {rows[0]['note']}")


if __name__ == "__main__":
    main()
