"""Which refinement settings raise the true IoU? Refines given predictions several ways, scores each.

    python scripts/refine_study.py --pred PRED.jsonl --data VAL --split validation [--limit 64] \\
        --variant NAME=GROUPS:RENDERS[/FACTORS][:OBJECTIVE_JSON] ... [--out results/refine_study.json]

``--pred`` holds the programs to refine (``python -m decoding --strategy rerank ...`` without
refinement), ``--data`` the input images and their ground truth. Each variant runs
``decoding.refine.refine`` on every prediction with its parameter groups (comma-separated, from
``decoding.refine.ALL_GROUPS``), render budget, the factors each group tries per round
(comma-separated after ``/``, default ``decoding.refine.FACTORS``) and objective (render-term
weights, default the silhouette), then the refined programs are scored against the ground truth (exact Best IoU,
``reward.evaluate``). Reports per variant the mean Best IoU before and after, how many predictions
got better and worse, renders and seconds per image. A test split is refused: the settings chosen
here go into the decoding config, so they are tuned on validation data.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, to_image  # noqa: E402
from cad.sandbox import SandboxPool  # noqa: E402
from decoding.refine import ALL_GROUPS, FACTORS, refine  # noqa: E402
from decoding.rerank import check_objective, parse_weights  # noqa: E402
from reward.evaluate import evaluate_pairs  # noqa: E402
from scripts._common import machine, write_json  # noqa: E402


Variant = tuple[str, tuple[str, ...], int, tuple[float, ...], dict | None]


def parse_variant(text: str) -> Variant:
    """``NAME=GROUPS:RENDERS[/FACTORS][:OBJECTIVE_JSON]`` -> (name, groups, renders, factors, objective)."""
    name, sep, spec = text.partition("=")
    parts = spec.split(":", 2)
    if not sep or not name or len(parts) < 2:
        raise ValueError(f"variant {text!r}: expected NAME=GROUPS:RENDERS[/FACTORS][:OBJECTIVE_JSON]")
    groups = tuple(g for g in parts[0].split(",") if g)
    if set(groups) - set(ALL_GROUPS):
        raise ValueError(f"variant {text!r}: groups must come from {ALL_GROUPS}")
    renders, slash, factor_text = parts[1].partition("/")
    if not renders.isdigit() or int(renders) < 1:
        raise ValueError(f"variant {text!r}: RENDERS must be a positive integer")
    try:
        factors = tuple(float(f) for f in factor_text.split(",")) if slash else FACTORS
    except ValueError:
        factors = ()
    if not factors or any(not f > 0 for f in factors):
        raise ValueError(f"variant {text!r}: FACTORS must be positive numbers separated by commas")
    objective = parse_weights(parts[2], "OBJECTIVE_JSON") if len(parts) == 3 else None
    if objective is not None:
        try:
            check_objective(objective)  # the same check as the decoding config's
        except ValueError as exc:
            raise ValueError(f"variant {text!r}: {exc}") from None
    return name, groups, int(renders), factors, objective


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pred", required=True, help="JSONL of {id, code}: the programs to refine")
    ap.add_argument("--data", required=True, help="images and ground truth (a validation split)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--variant", action="append", required=True, help="NAME=GROUPS:RENDERS[/FACTORS][:OBJECTIVE_JSON]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="results/refine_study.json")
    args = ap.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as exc:
        ap.exit(2, f"error: {exc}\n")
    pred = {str(r["id"]): r["code"] for r in map(json.loads, Path(args.pred).read_text().splitlines()) if "code" in r}
    ds = load_gencad(args.data, split=args.split, limit=args.limit, allow_test=False)
    rows = [r for r in ds if str(r["deepcad_id"]) in pred]
    missing = len(ds) - len(rows)
    if missing:
        print(f"warning: {missing} rows of {args.data} have no prediction in {args.pred}; they are left out", file=sys.stderr)
    results = {}
    with SandboxPool(args.workers) as pool:
        _, start_rows = evaluate_pairs([(str(r["deepcad_id"]), pred[str(r["deepcad_id"])], r["cadquery"]) for r in rows], pool, progress=False)
        before = {row["id"]: row["iou"] or 0.0 for row in start_rows}
        for name, groups, renders, factors, objective in variants:
            t0, refined, used = time.perf_counter(), [], 0
            for r in tqdm(rows, desc=name, unit="img"):
                out = refine(pred[str(r["deepcad_id"])], to_image(r["image"]), pool, renders, objective=objective, groups=groups,
                             factors=factors)
                refined.append((str(r["deepcad_id"]), out.code, r["cadquery"]))
                used += out.evaluations
            seconds = time.perf_counter() - t0
            summary, scored = evaluate_pairs(refined, pool, progress=False)
            after = {row["id"]: row["iou"] or 0.0 for row in scored}
            results[name] = {
                "groups": list(groups), "renders": renders, "factors": list(factors), "objective": objective or {"silhouette": 1.0},
                "iou_before": round(sum(before.values()) / len(before), 4),
                "iou_after": round(sum(after.values()) / len(after), 4),
                "better": sum(after[i] > before[i] + 1e-6 for i in after),
                "worse": sum(after[i] < before[i] - 1e-6 for i in after),
                "renders_per_image": round(used / len(rows), 1), "seconds_per_image": round(seconds / len(rows), 3),
            }
            print(name, results[name], file=sys.stderr)
    write_json(args.out, {"benchmark": "refine_study", "pred": args.pred, "data": args.data, "split": args.split,
                          "n": len(rows), "workers": args.workers, "machine": machine(), "variants": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
