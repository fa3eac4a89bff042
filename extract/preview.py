"""`make preview-augment`: a PNG grid of a few training images, each beside its augmented views."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .augment import parse_augment, view_seed
from .cli_util import run_cli
from .discover import TRAIN, discover


def preview_augment(data: str | Path, augment: str = "tutorial", rounds: int = 4,
                    out: str | Path = "augment_preview.png",
                    *, labels: str | Path | None = None, n_images: int = 6, size: int = 160, seed: int = 0,
                    val: float = 0.2) -> Path:
    """Draw ``n_images`` training images (rows) with the clean view and ``rounds`` augmented views (columns).

    The views are exactly those extraction would cache: same layers, same per-view seeds.
    """
    from .pipeline import image_dataset  # noqa: PLC0415  (imports TensorFlow)

    spec = parse_augment(augment)
    found = discover(data, labels=labels, val=val, seed=seed)
    train = [it for it in found.items if it.split == TRAIN]
    picks = [train[i] for i in np.linspace(0, len(train) - 1, min(n_images, len(train))).astype(int)]
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m extract.preview", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--labels", default=None)
    p.add_argument("--augment", default="tutorial")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default="augment_preview.png")
    p.add_argument("--n-images", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run_cli(lambda: print("wrote " + str(preview_augment(
        args.data, args.augment, args.rounds, args.out, labels=args.labels or None, n_images=args.n_images,
        seed=args.seed))))


if __name__ == "__main__":
    main()
