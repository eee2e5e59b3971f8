"""How well do the reranker's scores track the true IoU? Spearman rank correlation on held-out data.

    python scripts/rerank_correlation.py --model DIR --data TEST [--retrieval-data TRAIN] [--limit 24] [--n 6] [--k 4]

For each image: N sampled programs plus the k nearest training programs, executed; each
executable candidate gets every score term (log-probability, sanity, silhouette IoU, edge IoU,
combined) and its true Best IoU against the ground truth. Reports the mean within-image Spearman
correlation of each term with the true IoU, the IoU of the top-1 by each term, the oracle, and the
weights (over a small grid) whose combined top-1 scores best: run it on a validation split, not
on the test set, and put those weights in the decoding config.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, to_image  # noqa: E402
from cad.geometry import best_iou  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from decoding.predict import DecodeConfig, Predictor, parse_grid  # noqa: E402
from decoding.rerank import combined_score  # noqa: E402
from decoding.retrieval import RetrievalIndex  # noqa: E402
from scripts._common import write_json  # noqa: E402
from sft.model import load_model  # noqa: E402

TERMS = ("logprob", "sanity", "silhouette", "edges", "pixel", "combined")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--retrieval-data")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--canonical-grid", default="256", help="the model's canonical number grid ('none': 3 decimals)")
    ap.add_argument("--weights", help="rerank weights as JSON (the combined term)")
    ap.add_argument("--out", default="results/rerank_correlation.json")
    args = ap.parse_args()
    model, tok, proc = load_model(args.model)
    index = RetrievalIndex.build(args.retrieval_data) if args.retrieval_data and args.k else None
    ds = load_gencad(args.data, limit=args.limit)
    cfg = DecodeConfig(strategy="rerank", n=args.n, k_retrieval=args.k if index else 0, grammar=True, repair=True,
                       max_new_tokens=args.max_new_tokens, canonical_grid=parse_grid(args.canonical_grid))
    if args.weights:
        cfg.weights.update(json.loads(args.weights))
    per_term = {t: [] for t in TERMS}
    top1 = {t: [] for t in TERMS}
    oracle, first, retrieved_top1 = [], [], []
    images: list[list[tuple[dict, float]]] = []  # per image: (score terms, true IoU) of each candidate
    with SandboxPool(2) as pool:
        predictor = Predictor(model, tok, proc, cfg, pool, index)
        for row in ds:
            image = to_image(row["image"]).convert("RGB")
            cands = predictor.generate([image])[0]
            gt = pool.run(row["cadquery"], ExecOptions(want_geometry=True))
            results = pool.run_many([c.code for c in cands], ExecOptions(want_geometry=True))
            scored = []
            for c, r in zip(cands, results):
                c.result = r
                if not (r.executable and gt.executable):
                    continue
                combined_score(c, image, cfg.weights)
                terms = {**c.scores, "combined": c.total}
                scored.append((terms, best_iou(r.geometry, gt.geometry).iou))
                if c.source == "retrieval" and len(retrieved_top1) < len(oracle) + 1:
                    retrieved_top1.append(scored[-1][1])  # the nearest training image's program
            if not scored:
                continue
            images.append(scored)
            ious = np.array([s[1] for s in scored])
            oracle.append(ious.max())
            first.append(ious[0])
            for t in TERMS:
                vals = np.array([s[0].get(t, 0.0) for s in scored])
                top1[t].append(ious[int(np.argmax(vals))])
                if len(scored) >= 3 and np.ptp(vals) > 0 and np.ptp(ious) > 0:
                    per_term[t].append(spearmanr(vals, ious).correlation)
    fitted, fitted_iou = fit_weights(images)
    write_json(args.out, {
        "benchmark": "rerank_correlation", "images_with_candidates": len(oracle), "n": args.n, "k_retrieval": args.k,
        "spearman_mean": {t: (round(float(np.mean(v)), 3) if v else None) for t, v in per_term.items()},
        "top1_iou": {t: (round(float(np.mean(v)), 4) if v else None) for t, v in top1.items()},
        "first_candidate_iou": round(float(np.mean(first)), 4) if first else None,
        "oracle_iou": round(float(np.mean(oracle)), 4) if oracle else None,
        "retrieval_top1_iou": round(float(np.mean(retrieved_top1)), 4) if retrieved_top1 else None,
        "fitted_weights": fitted, "fitted_top1_iou": fitted_iou,
    })


def fit_weights(images: list[list[tuple[dict, float]]]) -> tuple[dict, float | None]:
    """The combined-score weights (over a small grid) whose top-1 has the highest mean true IoU."""
    if not images:
        return {}, None
    grid = itertools.product((0.0, 0.1, 0.5, 1.0), (0.0, 0.5), (0.0, 1.0, 2.0), (0.0, 1.0), (0.0, 1.0, 2.0))
    best, best_iou = {}, -1.0
    for lp, sa, si, ed, px in grid:
        w = {"logprob": lp, "sanity": sa, "silhouette": si, "edges": ed, "pixel": px}
        if not any(w.values()):
            continue
        iou = float(np.mean([max(cands, key=lambda c: sum(w[k] * c[0].get(k, 0.0) for k in w))[1] for cands in images]))
        if iou > best_iou + 1e-9:
            best, best_iou = w, iou
    return best, round(best_iou, 4)


if __name__ == "__main__":
    main()
