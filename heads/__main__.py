"""`python -m heads`: thin CLI over :mod:`heads` (``make train-head`` and ``make predict`` call it)."""

from __future__ import annotations

import argparse
import sys

from extract.cli_util import MakeVariableParser, none_or_str, run_cli

from .registry import list_heads
from .train import EXIT_ACCURACY, TRAIN_ROUNDS

SHOWN_ROWS = 30  # rows of the prediction table `make predict` prints


def build_parser() -> argparse.ArgumentParser:
    p = MakeVariableParser(prog="python -m heads", description="Train and use heads on cached features.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fit a head on a feature cache")
    t.add_argument("--head", default="logreg", help=", ".join(list_heads()))
    t.add_argument("--features", type=none_or_str,
                   help="cache .h5, or a.h5,b.h5 to join caches of the same images (default: the newest complete one)")
    t.add_argument("--run", type=none_or_str, help="run folder (default: runs/<cache stem>/<head>/)")
    t.add_argument("--head-args", default="", help="e.g. 'C=0.5 max_iter=500'")
    t.add_argument("--epochs", type=int, default=None, help="dense head: maximum epochs")
    t.add_argument("--c", type=none_or_str, default=None, help="logreg: inverse regularization strength, or auto")
    t.add_argument("--train-rounds", default="all", choices=list(TRAIN_ROUNDS))
    t.add_argument("--cache-dir", default="features_cache")
    t.add_argument("--data-root", type=none_or_str,
                   help="image folder for report.html thumbnails (default: the one the cache records)")
    t.add_argument("--assert-accuracy", type=float, default=None,
                   help=f"exit with code {EXIT_ACCURACY} when val accuracy is below this fraction, e.g. 0.85")

    c = sub.add_parser("compare", help="train several heads on one cache and tabulate them")
    c.add_argument("--features", type=none_or_str)
    c.add_argument("--heads", type=none_or_str, help="comma-separated (default: all)")
    c.add_argument("--out", type=none_or_str, help="folder for compare.md and the runs")
    c.add_argument("--train-rounds", default="all", choices=list(TRAIN_ROUNDS))
    c.add_argument("--cache-dir", default="features_cache")
    c.add_argument("--assert-accuracy", type=float, default=None,
                   help=f"exit with code {EXIT_ACCURACY} when any head's val accuracy is below this fraction")

    b = sub.add_parser("compare-backbones", help="extract DATA with several backbones, train HEAD on each, tabulate")
    b.add_argument("--data", required=True, help="image folder (as for python -m extract)")
    b.add_argument("--backbones", required=True, help="comma-separated, e.g. xception,inceptionv3,resnet50")
    b.add_argument("--head", default="logreg")
    b.add_argument("--head-args", default="", help="e.g. 'C=0.5 max_iter=500'")
    b.add_argument("--labels", type=none_or_str)
    b.add_argument("--test", type=none_or_str)
    b.add_argument("--id-col", type=none_or_str)
    b.add_argument("--label-col", type=none_or_str)
    b.add_argument("--size", type=int, default=None, help="one input side for all (default: each backbone's own)")
    b.add_argument("--pooling", default="avg", choices=["avg", "max", "none"])
    b.add_argument("--weights", default="imagenet", help="imagenet | none")
    b.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    b.add_argument("--val", type=float, default=0.2)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--batch", type=int, default=None, help="images per backbone call (default: extract's)")
    b.add_argument("--cache-dir", default="features_cache")
    b.add_argument("--out", type=none_or_str, help="folder for compare_backbones.md/.png and the runs")
    b.add_argument("--no-progress", action="store_true")

    ex = sub.add_parser("export", help="write a run as one Keras model (+ SavedModel, TFLite) that takes images")
    ex.add_argument("--run", required=True)
    ex.add_argument("--out", type=none_or_str, help="output folder (default: <run>/export)")
    ex.add_argument("--formats", default="keras,saved_model,tflite", help="comma-separated subset")

    pr = sub.add_parser("predict", help="classify images with a trained run")
    pr.add_argument("--run", required=True)
    pr.add_argument("--images", type=none_or_str, default=None,
                    help="image file or folder (default: the test rows of the run's cache, extracted with TEST=)")
    pr.add_argument("--out", type=none_or_str)
    pr.add_argument("--submission", action="store_true")
    pr.add_argument("--batch", type=int, default=32)
    pr.add_argument("--max-pixels", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    def go():
        from .train import AccuracyBelowThreshold  # noqa: PLC0415

        try:
            dispatch()
        except AccuracyBelowThreshold as err:
            print(f"error: ASSERT_ACCURACY failed: {err}", file=sys.stderr)
            sys.exit(EXIT_ACCURACY)

    def dispatch():
        from . import predict, train_head  # noqa: PLC0415
        from .train import parse_head_args  # noqa: PLC0415

        if args.command == "train":
            head_args = parse_head_args(args.head_args)
            for name, variable, value in (("epochs", "EPOCHS", args.epochs), ("C", "C", args.c)):
                if value is None:
                    continue
                value = parse_head_args(f"{name}={value}")[name]
                if name in head_args and head_args[name] != value:  # neither silently wins
                    raise ValueError(f"HEAD_ARGS sets {name}={head_args[name]} and {variable}={value} sets it too; "
                                     f"pass it once")
                head_args[name] = value
            train_head(args.head, args.features, args.run, head_args=head_args,
                       train_rounds=args.train_rounds, cache_dir=args.cache_dir, data_root=args.data_root,
                       assert_accuracy=args.assert_accuracy)
        elif args.command == "compare":
            from .compare import compare_heads  # noqa: PLC0415

            compare_heads(args.features, [h.strip() for h in args.heads.split(",")] if args.heads else None,
                          args.out, train_rounds=args.train_rounds, cache_dir=args.cache_dir,
                          assert_accuracy=args.assert_accuracy)
        elif args.command == "compare-backbones":
            from .compare_backbones import compare_backbones  # noqa: PLC0415

            compare_backbones(
                args.data, args.backbones.split(","), args.head, out_dir=args.out,
                head_args=parse_head_args(args.head_args), cache_dir=args.cache_dir, labels=args.labels,
                test=args.test, id_col=args.id_col, label_col=args.label_col, size=args.size, pooling=args.pooling,
                weights=args.weights, dtype=args.dtype, val=args.val, seed=args.seed, batch_size=args.batch,
                progress=not args.no_progress,
            )
        elif args.command == "export":
            from .export import export_run  # noqa: PLC0415  (imports TensorFlow)

            export_run(args.run, args.out, formats=[f.strip() for f in args.formats.split(",") if f.strip()])
        elif args.command == "predict":
            table = predict(args.run, args.images, args.out, submission=args.submission, batch_size=args.batch,
                            max_pixels=args.max_pixels)
            if hasattr(sys.stdout, "reconfigure"):  # a file name that is not UTF-8 is shown escaped, as on stderr
                sys.stdout.reconfigure(errors="backslashreplace")
            with_pd_options(lambda: print(table.drop(columns=["error"]).to_string(index=False, max_rows=SHOWN_ROWS)))
            if args.out is None and len(table) > SHOWN_ROWS:  # the rows left out are written nowhere
                print(f"shown: the first and last {SHOWN_ROWS // 2} of {len(table):,} rows; pass OUT=<file.csv> to "
                      f"write every row, with its error", file=sys.stderr)

    run_cli(go)


def with_pd_options(fn) -> None:
    import pandas as pd  # noqa: PLC0415

    with pd.option_context("display.max_colwidth", 60, "display.width", 160):
        fn()


if __name__ == "__main__":
    main()
