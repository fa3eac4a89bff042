"""Generate a small labelled image set locally: five kinds of chart drawn with matplotlib.

Like the session-4 tutorial's chart data set, but made on the spot (no download):
``make_charts("demo_data/charts", per_class=60)`` writes ``<out>/<kind>/<kind>_NNN.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

KINDS = ("bar", "line", "pie", "scatter", "area")


def _draw(ax, kind: str, rng: np.random.Generator) -> None:
    n = int(rng.integers(4, 12))
    colour = rng.random(3) * 0.8
    x = np.arange(n)
    if kind == "bar":
        ax.bar(x, rng.random(n) + 0.1, color=colour)
    elif kind == "line":
        ax.plot(x, np.cumsum(rng.normal(size=n)), color=colour, linewidth=rng.uniform(1, 4))
    elif kind == "pie":
        ax.pie(rng.random(n) + 0.1, colors=[rng.random(3) for _ in range(n)])
    elif kind == "scatter":
        m = int(rng.integers(15, 80))
        ax.scatter(rng.normal(size=m), rng.normal(size=m), color=colour, s=rng.uniform(5, 60))
    elif kind == "area":
        ax.fill_between(x, np.abs(np.cumsum(rng.normal(size=n))) + 0.2, color=colour, alpha=0.8)
    else:
        raise ValueError(f"unknown chart kind {kind!r}; kinds are {', '.join(KINDS)}")


def make_charts(out: str | Path, per_class: int = 60, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> Path:
    """Draw ``per_class`` random charts of each kind into ``out/<kind>/``; return ``out``."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out = Path(out)
    rng = np.random.default_rng(seed)
    for kind in kinds:
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = rng.uniform(1.2, 2.4), rng.uniform(1.2, 2.4)
            fig, ax = plt.subplots(figsize=(w, h), dpi=60)
            _draw(ax, kind, rng)
            if rng.random() < 0.5:
                ax.set_axis_off()
            fig.savefig(out / kind / f"{kind}_{i:03d}.png")
            plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (Path(args.out) / KINDS[0]).is_dir():
        print(f"{args.out} exists; reusing it")
        return
    make_charts(args.out, args.per_class, args.seed)
    print(f"wrote {args.per_class} images of each of {len(KINDS)} chart kinds to {args.out}")


if __name__ == "__main__":
    main()
