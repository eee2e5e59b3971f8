"""Plot a training run's TensorBoard scalars to one PNG.

    python scripts/plot_training.py OUTPUT_DIR [--out curves.png]
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

PANELS = [("train/loss", "val/loss"), ("train/token_accuracy",), ("val/sample_vsr", "val/sample_exec_rate"), ("train/lr",)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an SFT output_dir (holds tensorboard/ event files)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    files = sorted(glob.glob(str(Path(args.run) / "**" / "events*"), recursive=True))
    if not files:
        raise SystemExit(f"{args.run}: no TensorBoard event files found")
    scalars: dict[str, list] = {}
    for f in files:
        ea = EventAccumulator(f)
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    panels = [tags for tags in PANELS if any(scalars.get(t) for t in tags)]  # runs without sampling have no VSR
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, tags in zip(axes[0], panels):
        for tag in tags:
            pts = sorted(scalars.get(tag, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, label=tag)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(str(args.run))
    fig.tight_layout()
    out = args.out or str(Path(args.run) / "curves.png")
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
