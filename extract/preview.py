"""`make preview-augment`: a PNG grid of a few training images, each beside its augmented views."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .augment import parse_augment, view_seed
from .cli_util import MakeVariableParser, run_cli
from .decode import DecodeError, load_array
from .discover import TRAIN, discover


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)



def preview_augment(data: str | Path, augment: str = "tutorial", rounds: int = 4,
                    out: str | Path = "augment_preview.png",
                    *, labels: str | Path | None = None, id_col: str | None = None, label_col: str | None = None,
                    n_images: int = 6, size: int = 160, seed: int = 0, val: float = 0.2,
                    log: Callable[[str], None] = _log) -> Path:
    """Draw ``n_images`` training images (rows) with the clean view and ``rounds`` augmented views (columns).

    The views are exactly those extraction would cache: same layers, same per-view seeds. The rows take
    the classes in turn (each class's images evenly spaced), so every class shows while there are rows.
    """
    from .pipeline import image_dataset  # noqa: PLC0415  (imports TensorFlow)

    spec = parse_augment(augment)
    if not spec.enabled:  # the preview would show unchanged copies as "round 1", "round 2", ...
        raise ValueError(f"nothing to preview: {spec.why_disabled(augment)}")
    found = discover(data, labels=labels, val=val, seed=seed, id_col=id_col, label_col=label_col)
    candidates, left_out, readable = [it for it in found.items if it.split == TRAIN], [], set()
    while True:  # a file that does not decode (extraction skips it) would show as black tiles: pick another
        picks = pick_by_class(candidates, n_images)
        failed = set()
        for it in picks:
            if it.relpath in readable:  # decoded on an earlier pick
                continue
            try:
                load_array(it.abspath, size)
                readable.add(it.relpath)
            except DecodeError as err:
                failed.add(it.relpath)
                left_out.append(f"{it.relpath} ({err.reason})")
        if not failed:
            break
        candidates = [it for it in candidates if it.relpath not in failed]
    if left_out:
        log(f"left out {len(left_out)} training file{'s that do' if len(left_out) > 1 else ' that does'} not decode "
            f"(extraction skips {'them' if len(left_out) > 1 else 'it'} too): " + "; ".join(left_out[:5])
            + ("; ..." if len(left_out) > 5 else ""))
    if not picks:
        raise ValueError(f"DATA={data} has no training image that decodes: nothing to preview")
    views = [(it, r) for it in picks for r in range(rounds + 1)]
    seeds = np.stack([view_seed(seed, it.relpath, r) for it, r in views])
    ds = image_dataset([it.abspath for it, _ in views], size, batch_size=len(views), augment=spec,
                       rounds=[r for _, r in views], seeds=seeds)
    _, images, _ = next(iter(ds))
    images = images.numpy().astype(np.uint8).reshape(len(picks), rounds + 1, size, size, 3)

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(picks), rounds + 1, figsize=(1.6 * (rounds + 1), 1.7 * len(picks)), squeeze=False)
    for r, it in enumerate(picks):
        for c in range(rounds + 1):
            ax = axes[r, c]
            ax.imshow(images[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"round {c}", fontsize=9)
        axes[r, 0].set_ylabel(found.class_names[it.label], fontsize=8)
    fig.suptitle(f"AUGMENT={augment} ({spec.preset}): {dict(spec.params)}", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def pick_by_class(items: list, n: int) -> list:
    """Up to ``n`` of ``items``: the classes in turn, each class's items evenly spaced through it."""
    by_class: dict[int, list] = {}
    for it in items:
        by_class.setdefault(it.label, []).append(it)
    per_class = -(-n // max(len(by_class), 1))
    spaced = [[group[i] for i in np.linspace(0, len(group) - 1, min(per_class, len(group))).astype(int)]
              for _, group in sorted(by_class.items())]
    return [group[k] for k in range(per_class) for group in spaced if k < len(group)][:n]


def main(argv: list[str] | None = None) -> None:
    p = MakeVariableParser(prog="python -m extract.preview", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--labels", default=None)
    p.add_argument("--id-col", default=None)
    p.add_argument("--label-col", default=None)
    p.add_argument("--size", type=int, default=None, help="pixels per view (default 160)")
    p.add_argument("--val", type=float, default=0.2)
    p.add_argument("--augment", default="tutorial")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default="augment_preview.png")
    p.add_argument("--n-images", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run_cli(lambda: print("wrote " + str(preview_augment(
        args.data, args.augment, args.rounds, args.out, labels=args.labels or None, id_col=args.id_col,
        label_col=args.label_col, n_images=args.n_images, size=args.size or 160, seed=args.seed, val=args.val))))


if __name__ == "__main__":
    main()
