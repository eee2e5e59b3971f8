"""Best IoU time per pair: exact (this version and the one before it), CAD-Coder's poses, voxel.

    python scripts/bench_iou.py [--pairs 20] [--out results/bench_iou.json]

Pairs: the ten GenCAD reference programs against perturbed copies of themselves (``--pairs``, as
in evaluation), against each other and against strongly perturbed copies (what an RL policy
samples). Each pair is timed once per method, the methods one after another on the same pair, in
wall-clock and in CPU seconds of this process (the cores are shared: CPU time is the steadier
measure, and ratios are taken within the run). ``exact_cold`` starts from empty caches;
``exact_warm_gt`` has the ground truth prepared, as when it is scored against several
candidates. ``old`` is the exact search of the previous version (commit 0fda879), kept below to
measure against: same scores, bounded by bounding boxes only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad import geometry as G  # noqa: E402
from cad.programs import perturb  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from scripts._common import machine, reference_rows, write_json  # noqa: E402


def old_best_iou(pred, gt) -> tuple[float, str]:
    """The exact Best IoU as computed before (commit 0fda879): all 28 rotations ordered by a
    bounding-box bound on the IoU, intersected until that bound cannot beat the best."""
    try:
        pp, gp = G.pose_of(pred), G.pose_of(gt)
    except ValueError:
        return 0.0, "degenerate"
    rotations = G.candidate_rotations(pp, gp, "exact")
    try:
        pm, gm = G.to_manifold(pred), G.to_manifold(gt)
    except ValueError:
        scores = G._voxel_scores(pred, gt, pp, gp, rotations[:5], max_cells=64)
        return float(min(max(max(scores), 0.0), 1.0)), "voxel_fallback"
    g = gm.transform(G._affine(np.eye(3), gp))
    g_vol = g.volume()
    g_lo, g_hi = np.array(g.bounding_box()[:3]), np.array(g.bounding_box()[3:])
    p0 = pm.transform(G._affine(np.eye(3), pp))
    p_vol = p0.volume()
    lo, hi = np.array(p0.bounding_box()[:3]), np.array(p0.bounding_box()[3:])
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    bounds = []
    for rot in rotations:
        c = corners @ rot.T
        ext = np.clip(np.minimum(c.max(0), g_hi) - np.maximum(c.min(0), g_lo), 0, None)
        inter = min(float(np.prod(ext)), p_vol, g_vol)
        bounds.append(inter / (p_vol + g_vol - inter) if inter > 0 else 0.0)
    best = -1.0
    for i in np.argsort(bounds)[::-1]:
        if bounds[i] <= best:
            break
        inter = (pm.transform(G._affine(rotations[i], pp)) ^ g).volume()
        union = p_vol + g_vol - inter
        best = max(best, inter / union if union > 0 else 0.0)
    return float(min(max(best, 0.0), 1.0)), "exact"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def make_pairs(n_near: int) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(0)
    base = [r["cadquery"] for r in reference_rows()]
    pairs = [("near", perturb(base[i % len(base)], rng, 0.05), base[i % len(base)]) for i in range(n_near)]
    pairs += [("other_part", base[(i + 3) % len(base)], base[i]) for i in range(len(base))]
    pairs += [("far", perturb(base[i], rng, 0.3), base[i]) for i in range(len(base))]
    return pairs


def stats(values: list[float]) -> dict:
    v = np.array(values)
    return {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4), "max": round(float(v.max()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=20, help="reference programs against perturbed copies (sigma 0.05)")
    ap.add_argument("--out", default="results/bench_iou.json")
    args = ap.parse_args()
    pairs = make_pairs(args.pairs)
    with SandboxPool(2) as pool:
        res = pool.run_many([c for _, p, g in pairs for c in (p, g)], ExecOptions(want_geometry=True))
    rows = []
    for k, (kind, _, _) in enumerate(pairs):
        pr, gr = res[2 * k], res[2 * k + 1]
        if not (pr.executable and gr.executable):
            continue
        p, g = pr.geometry, gr.geometry
        row = {"pair": k, "kind": kind, "triangles": int(len(p.triangles) + len(g.triangles))}
        (old, row["old_method"]), row["old_s"], row["old_cpu_s"] = timed(lambda: old_best_iou(p, g))
        G.clear_caches()
        st: dict = {}
        new, row["exact_cold_s"], row["exact_cold_cpu_s"] = timed(lambda: G.best_iou(p, g, "exact", st))
        G.clear_caches()
        if row["old_method"] == "exact":  # the ground truth as it stands after its first candidate
            gp = G.prepare(g)
            gp.symmetries()
            [gp.profile(axis) for axis in np.eye(3)]
        _, row["exact_warm_gt_s"], row["exact_warm_gt_cpu_s"] = timed(lambda: G.best_iou(p, g, "exact"))
        G.clear_caches()
        cad, row["cadcoder_s"], row["cadcoder_cpu_s"] = timed(lambda: G.best_iou(p, g, "cadcoder"))
        vox, row["voxel_s"], row["voxel_cpu_s"] = timed(lambda: G.best_iou(p, g, "voxel"))
        row.update(method=new.method, iou_old=round(old, 7), iou_exact=round(new.iou, 7), iou_cadcoder=round(cad.iou, 7),
                   iou_voxel=round(vox.iou, 7), abs_diff_vs_old=float(abs(new.iou - old)), intersections=st.get("evaluated"),
                   rotation_classes=st.get("classes"),
                   speedup_over_voxel=round(row["voxel_cpu_s"] / max(row["exact_cold_cpu_s"], 1e-9), 1),
                   speedup_over_old=round(row["old_cpu_s"] / max(row["exact_cold_cpu_s"], 1e-9), 2))
        for key in [k for k in row if k.endswith("_s")]:
            row[key] = round(row[key], 5)
        rows.append(row)
        print(row, flush=True)
    exact_rows = [r for r in rows if r["method"] == "exact"]
    summary = {
        "benchmark": "iou", "machine": machine(), "pairs": len(rows), "kinds": {k: sum(r["kind"] == k for r in rows) for k in ("near", "other_part", "far")},
        "methods": {m: sum(r["method"] == m for r in rows) for m in {r["method"] for r in rows}},
        "max_abs_score_difference_new_vs_old": float(max(r["abs_diff_vs_old"] for r in rows)),
        "seconds_per_pair": {m: {"wall": stats([r[f"{m}_s"] for r in rows]), "cpu": stats([r[f"{m}_cpu_s"] for r in rows])}
                             for m in ("old", "exact_cold", "exact_warm_gt", "cadcoder", "voxel")},
        "seconds_per_pair_manifold_pairs": {m: {"cpu": stats([r[f"{m}_cpu_s"] for r in exact_rows])}
                                            for m in ("old", "exact_cold", "exact_warm_gt", "voxel")},
        "ratio_new_over_old_cpu": {
            "of_means": round(float(np.mean([r["exact_cold_cpu_s"] for r in exact_rows]) / np.mean([r["old_cpu_s"] for r in exact_rows])), 3),
            "median_per_pair": round(float(np.median([r["exact_cold_cpu_s"] / r["old_cpu_s"] for r in exact_rows])), 3)},
        "speedup_over_voxel_cpu": {"of_means": round(float(np.mean([r["voxel_cpu_s"] for r in rows]) / np.mean([r["exact_cold_cpu_s"] for r in rows])), 1),
                                   "median_per_pair": float(np.median([r["speedup_over_voxel"] for r in rows])),
                                   "min_per_pair": float(min(r["speedup_over_voxel"] for r in rows))},
        "intersections_per_pair": stats([r["intersections"] for r in exact_rows]),
        "target_seconds_per_pair": 0.03, "target_speedup_over_voxel": 100,
        "rows": rows,
    }
    write_json(args.out, summary)


if __name__ == "__main__":
    main()
