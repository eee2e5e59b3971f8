"""Plots of ``scripts.eval_all``: Best IoU histograms, best-of-N curves, example grids (PNG)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cad.data import to_image  # noqa: E402
from cad.render import Style, render_geometry  # noqa: E402
from cad.sandbox import ExecOptions  # noqa: E402

CELL = 160  # pixels per image in the example grid


def _save(fig, axes, used: int, title: str, path: Path, dpi: int = 100) -> Path:
    """Blank the unused panels of a grid, title it, write the PNG."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def iou_histograms(records: list[dict], data: str, path: Path) -> Path:
    """One panel per configuration of the main table: per-id Best IoU, failures counted apart."""
    rows = [r for r in records if r["data"] == data and "main" in r["labels"]]
    cols = min(4, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows), squeeze=False, sharex=True)
    for ax, r in zip(axes.flat, rows):
        ious = [x["iou"] for x in r["rows"] if x["iou"] is not None]
        ax.hist(ious, bins=np.linspace(0, 1, 11), color="#4477aa", edgecolor="white")
        ax.bar(-0.08, r["n"] - len(ious), width=0.08, color="#cc3311")  # no IoU: prediction failed
        mean = f"{np.mean(ious):.3f}" if ious else "-"
        ax.set_title(f"{r['labels']['main']}\nmean {mean}, {r['n'] - len(ious)}/{r['n']} failed (red)", fontsize=8)
        ax.set_xlabel("Best IoU", fontsize=8)
        ax.tick_params(labelsize=7)
    return _save(fig, axes, len(rows), f"Best IoU per test image: {data}", path, dpi=110)


def bestofn_curves(records: list[dict], path: Path) -> Path | None:
    """VSR, Best IoU and time (x beam 4) against N, one line per test set."""
    rows = [r for r in records if "bestofn" in r["labels"]]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for data in dict.fromkeys(r["data"] for r in rows):
        pts = sorted((r["config"]["n"], r) for r in rows if r["data"] == data)
        ns = [n for n, _ in pts]
        beam = next((r["s_per_image"] for r in records if r["data"] == data and r["key"] == "beam4"), None)
        axes[0].plot(ns, [r["vsr"] for _, r in pts], marker="o", label=data)
        axes[1].plot(ns, [r["iou_best"] or 0.0 for _, r in pts], marker="o", label=data)
        if beam:
            axes[2].plot(ns, [(r["s_per_image"] or 0.0) / beam for _, r in pts], marker="o", label=data)
    for ax, title in zip(axes, ("VSR", "Best IoU", "time per image / beam 4")):
        ax.set_xlabel("N samples")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _render(result, size: int) -> np.ndarray:
    if result is None or not result.ok or result.geometry is None:
        img = np.full((size, size, 3), 235, np.uint8)
        img[size // 2 - 1:size // 2 + 1] = 180  # a grey bar: nothing to render
        return img
    return render_geometry(result.geometry, Style(size=size))


def example_grid(record: dict, inputs: list[dict], gts: list[tuple[str, str]], pool, path: Path, count: int = 16) -> Path:
    """``count`` examples as (input image | rendered prediction | rendered ground truth)."""
    preds = {str(x["id"]): x for x in record["rows"]}
    chosen = [(inp, gt) for inp, gt in zip(inputs, gts)][:count]
    opts = ExecOptions(want_geometry=True)
    pred_codes = [record["codes"].get(str(inp["id"])) or "" for inp, _ in chosen]
    results = pool.run_many(pred_codes + [gt for _, (_, gt) in chosen], opts)
    cols = 4
    nrows = -(-len(chosen) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 1.6 * nrows + 0.4), squeeze=False)
    for i, (ax, (inp, _)) in enumerate(zip(axes.flat, chosen)):
        image = np.asarray(to_image(inp["image"]).convert("RGB").resize((CELL, CELL)))
        strip = np.concatenate([image, _render(results[i], CELL), _render(results[len(chosen) + i], CELL)], 1)
        ax.imshow(strip)
        iou = preds.get(str(inp["id"]), {}).get("iou")
        ax.set_title(f"{inp['id']}  IoU {'-' if iou is None else f'{iou:.2f}'}", fontsize=7)
        ax.axis("off")
    return _save(fig, axes, len(chosen), f"{record['data']}, {record['labels']['main']}: input | prediction | ground truth", path)


def plot_all(records: list[dict], out: Path, harness, data: dict[str, str | None], examples: int = 16) -> dict[str, list[str]]:
    """Every plot of the report; returns their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, list[str]] = {"iou": [], "bestofn": [], "examples": []}
    for name, source in data.items():
        plots["iou"].append(str(iou_histograms(records, name, out / f"iou_hist-{name}.png")))
        final = [r for r in records if r["data"] == name and "main" in r["labels"] and r["model"]]
        if final and examples:
            inputs, gts = harness.data(name, source)
            plots["examples"].append(str(example_grid(final[-1], inputs, gts, harness.pool, out / f"examples-{name}.png", examples)))
    curve = bestofn_curves(records, out / "bestofn.png")
    if curve:
        plots["bestofn"].append(str(curve))
    return plots
