"""Exact (manifold3d booleans) against voxel (the study's, pitch 0.05) Best IoU time per pair.

    python scripts/bench_iou.py [--pairs 20] [--out results/bench_iou.json]

Pairs are reference programs against perturbed copies of themselves, as in evaluation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.geometry import best_iou  # noqa: E402
from cad.programs import perturb  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from scripts._common import machine, reference_rows, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--out", default="results/bench_iou.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    base = [r["cadquery"] for r in reference_rows()]
    gts = [base[i % len(base)] for i in range(args.pairs)]
    preds = [perturb(g, rng, 0.05) for g in gts]
    with SandboxPool(2) as pool:
        res = pool.run_many(preds + gts, ExecOptions(want_geometry=True))
    pairs = [(p.geometry, g.geometry) for p, g in zip(res[: args.pairs], res[args.pairs:]) if p.executable and g.executable]
    timings, values, per_pair, methods = {}, {}, {}, []
    for mode in ("exact", "voxel"):
        values[mode], per_pair[mode] = [], []
        for p, g in pairs:
            t0 = time.perf_counter()
            r = best_iou(p, g, mode)
            per_pair[mode].append(time.perf_counter() - t0)
            values[mode].append(r.iou)
            if mode == "exact":
                methods.append(r.method)
        timings[mode] = float(np.mean(per_pair[mode]))
    diff = np.abs(np.array(values["exact"]) - np.array(values["voxel"]))
    clean = [i for i, m in enumerate(methods) if m == "exact"]
    clean_ratio = float(np.mean([per_pair["voxel"][i] for i in clean]) / np.mean([per_pair["exact"][i] for i in clean]))
    write_json(args.out, {
        "benchmark": "iou", "machine": machine(), "pairs": len(pairs),
        "exact_s_per_pair": round(timings["exact"], 4), "voxel_s_per_pair": round(timings["voxel"], 3),
        "speedup": round(timings["voxel"] / timings["exact"], 1),
        "median_speedup": round(float(np.median(np.array(per_pair["voxel"]) / np.array(per_pair["exact"]))), 1),
        "exact_methods": {m: methods.count(m) for m in set(methods)},
        "speedup_on_manifold_pairs": round(clean_ratio, 1),
        "mean_iou": {"exact": round(float(np.mean(values["exact"])), 4), "voxel": round(float(np.mean(values["voxel"])), 4)},
        "mean_abs_difference": round(float(diff.mean()), 4),
        "target_speedup": 50,
    })


if __name__ == "__main__":
    main()
