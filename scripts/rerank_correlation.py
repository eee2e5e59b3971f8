"""How well does each term of the reward track the true IoU? Within-image Spearman, fitted weights.

    python scripts/rerank_correlation.py --model DIR --data VAL --split validation \\
        [--report REAL.jsonl ...] [--retrieval-data TRAIN --split-retrieval train | --index FILE] \\
        [--limit 24] [--n 6] [--k 4] [--weights JSON] [--out results/rerank_correlation.json]

For each image of ``--data``: N sampled programs plus the k nearest training programs, executed;
each executable candidate gets every term of ``reward.score`` that needs no ground truth
(``logprob``, ``sanity``, ``grammatical`` and the render terms ``reward.score.RENDER_TERMS``), the reranker's
combined score (``decoding.rerank.combined_score`` with the decoding weights, or ``--weights``)
and its true Best IoU against the ground truth. Reports per term the mean within-image Spearman
correlation with the true IoU and the mean true IoU of its top-1, the oracle, and the weights (a
small grid) whose combined top-1 scores best. Weights are fitted on ``--data`` only, which must
be a validation (or training) split: a test split is refused. Each ``--report`` set (for example
the ten real GenCAD rows) gets the same table, with the fitted weights applied, and is never
fitted on. Put the fitted weights in the decoding config (``--weights``).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, to_image  # noqa: E402
from cad.geometry import best_iou  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from decoding.predict import DecodeConfig, Predictor, parse_grid  # noqa: E402
from decoding.rerank import parse_weights  # noqa: E402
from decoding.retrieval import RetrievalIndex, saved_index  # noqa: E402
from reward.score import RENDER_TERMS, RenderTarget, candidate_terms, weighted  # noqa: E402
from scripts._common import write_json  # noqa: E402
from sft.model import load_model  # noqa: E402

TERMS = ("logprob", "sanity", "grammatical", *RENDER_TERMS)
# The weight grid: the values each term may take (the other terms weigh 0).
GRID = {"logprob": (0.0, 0.1, 0.5), "sanity": (0.0, 0.5), "silhouette": (0.0, 1.0), "edges": (0.0, 1.0),
        "edges_coarse": (0.0, 1.0, 2.0), "edge_distance": (0.0, 1.0, 2.0, 4.0), "pixel": (0.0, 1.0, 2.0)}


def collect(predictor: Predictor, pool: SandboxPool, ds) -> list[list[tuple[dict, float, str]]]:
    """Per image: (terms, true IoU, source) of each executable candidate."""
    images = []
    geo = ExecOptions(want_geometry=True)
    for row in tqdm(ds, desc="candidates", unit="img"):
        image = to_image(row["image"]).convert("RGB")
        target = RenderTarget.of(image)
        cands = predictor.generate([image])[0]
        gt = pool.run(row["cadquery"], geo)
        if not gt.executable:
            continue
        results = pool.run_many([c.code for c in cands], geo)
        scored = []
        for c, r in zip(cands, results):
            if r.executable:
                terms = candidate_terms(c.code, r, {}, image=target, logprob=c.logprob, tokens=c.tokens, want=TERMS)
                scored.append((terms, best_iou(r.geometry, gt.geometry).iou, c.source))
        if scored:
            images.append(scored)
    return images


def table(images: list[list[tuple[dict, float, str]]], weights: dict[str, dict]) -> dict:
    """Mean within-image Spearman with the true IoU and top-1 true IoU, per term and per weighting."""
    columns = {t: (lambda terms, t=t: terms.get(t, 0.0)) for t in TERMS}
    for name, w in weights.items():
        columns[name] = lambda terms, w=w: weighted(terms, w)
    rho = {c: [] for c in columns}
    top1 = {c: [] for c in columns}
    for scored in images:
        ious = np.array([s[1] for s in scored])
        for name, f in columns.items():
            vals = np.array([f(s[0]) for s in scored])
            top1[name].append(ious[int(np.argmax(vals))])
            if len(scored) >= 3 and np.ptp(vals) > 0 and np.ptp(ious) > 0:
                rho[name].append(spearmanr(vals, ious).correlation)
    retrieved = [next((s[1] for s in scored if s[2] == "retrieval"), None) for scored in images]
    retrieved = [x for x in retrieved if x is not None]
    mean = lambda v, d=4: round(float(np.mean(v)), d) if v else None  # noqa: E731
    return {
        "images_with_candidates": len(images),
        "candidates_per_image": mean([len(s) for s in images], 2),
        "spearman_mean": {c: mean(v, 3) for c, v in rho.items()},
        "images_with_spearman": {c: len(v) for c, v in rho.items()},
        "top1_iou": {c: mean(v) for c, v in top1.items()},
        "first_candidate_iou": mean([s[0][1] for s in images]),
        "oracle_iou": mean([max(x[1] for x in s) for s in images]),
        "retrieval_top1_iou": mean(retrieved),
    }


def fit_weights(images: list[list[tuple[dict, float, str]]]) -> tuple[dict, float | None]:
    """The weights (over a small grid) whose combined top-1 has the highest mean true IoU."""
    if not images:
        return {}, None
    best, best_iou_ = {}, -1.0
    for values in itertools.product(*GRID.values()):
        w = dict(zip(GRID, values))
        if not any(w.values()):
            continue
        iou = float(np.mean([max(cands, key=lambda c: weighted(c[0], w))[1] for cands in images]))
        if iou > best_iou_ + 1e-9:
            best, best_iou_ = w, iou
    return best, round(best_iou_, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="validation data with ground truth: the weights are fitted here")
    ap.add_argument("--split", default=None, help="split of --data (a test split is refused)")
    ap.add_argument("--report", nargs="*", default=[], help="more data sets, reported with the fitted weights, never fitted on")
    ap.add_argument("--retrieval-data", help="training data to build the retrieval index from")
    ap.add_argument("--split-retrieval", default=None)
    ap.add_argument("--index", help="a saved retrieval index (default: the one saved in the model folder)")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--canonical-grid", default="256", help="the model's canonical number grid ('none': 3 decimals)")
    ap.add_argument("--weights", help="rerank weights as JSON (the 'combined' column)")
    ap.add_argument("--out", default="results/rerank_correlation.json")
    args = ap.parse_args()
    try:
        weights = parse_weights(args.weights) if args.weights else {}
    except ValueError as exc:
        ap.exit(2, f"error: {exc}\n")
    model, tok, proc = load_model(args.model)
    index_path = Path(args.index) if args.index else saved_index(args.model)
    if args.retrieval_data:
        index = RetrievalIndex.build(args.retrieval_data, split=args.split_retrieval)
    elif index_path:
        index = RetrievalIndex.load(index_path)
    else:
        index = None
    fit_ds = load_gencad(args.data, split=args.split, limit=args.limit, allow_test=False)
    cfg = DecodeConfig(strategy="rerank", n=args.n, k_retrieval=args.k if index else 0, grammar=True, repair=True,
                       max_new_tokens=args.max_new_tokens, canonical_grid=parse_grid(args.canonical_grid))
    cfg.weights.update(weights)
    with SandboxPool(2) as pool:
        predictor = Predictor(model, tok, proc, cfg, pool, index, retrieved_logprobs=True)  # logprob is a term here
        sets = {"fit": collect(predictor, pool, fit_ds)}
        for source in args.report:
            sets[source] = collect(predictor, pool, load_gencad(source, limit=args.limit))
    fitted, fitted_iou = fit_weights(sets["fit"])
    columns = {"combined": dict(cfg.weights), "combined_fitted": fitted} if fitted else {"combined": dict(cfg.weights)}
    write_json(args.out, {
        "benchmark": "rerank_correlation", "model": args.model, "n": args.n, "k_retrieval": cfg.k_retrieval,
        "fit_data": {"source": args.data, "split": args.split}, "decoding_weights": dict(cfg.weights),
        "fitted_weights": fitted, "fitted_top1_iou": fitted_iou,
        "sets": {name: table(images, columns) for name, images in sets.items()},
    })


if __name__ == "__main__":
    main()
