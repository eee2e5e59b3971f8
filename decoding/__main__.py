"""``python -m decoding --model DIR --data DATA --strategy beam --out preds.jsonl``.

DATA is anything ``cad.data.load_gencad`` reads (a GenCAD-schema folder, a JSONL of rows with
image paths, or nothing for the hub). Output lines ``{"id", "code", "strategy", "logprob",
"tokens"}`` are what ``python -m reward.evaluate`` reads; an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys

from pathlib import Path

from cad.data import DatasetUnavailable, load_gencad, undecoded
from cad.sandbox import SandboxPool
from decoding.predict import STRATEGIES, DecodeConfig, parse_grid, predict, resolve_device
from decoding.retrieval import RetrievalIndex


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m decoding", description="Predict CadQuery programs from images")
    ap.add_argument("--model", help="a model directory written by python -m sft (final/); not needed for retrieval")
    ap.add_argument("--data", help="dataset folder / JSONL (omit for the hub)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N rows only")
    ap.add_argument("--strategy", choices=STRATEGIES, default="beam")
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--n", type=int, default=6, help="samples per image for bestofn / rerank")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--grammar", action="store_true", help="grammar-constrained generation")
    ap.add_argument("--repair", action="store_true", help="repair candidates that fail the grammar")
    ap.add_argument("--grammar-name", choices=("gencad", "cadquery"), default="gencad",
                    help="gencad: GenCAD-Code's subset with arities (default); cadquery: the wider API")
    ap.add_argument("--k-retrieval", type=int, default=0, help="nearest training programs added as candidates")
    ap.add_argument("--retrieval-data", help="training data for the retrieval index")
    ap.add_argument("--index", help="retrieval index file (.npz): loaded if present, else built and saved")
    ap.add_argument("--weights", help="rerank weights as JSON, e.g. '{\"silhouette\": 2}'")
    ap.add_argument("--workers", type=int, default=2, help="sandbox workers")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same output)")
    ap.add_argument("--canonical-grid", default="256",
                    help="number grid of the model's canonical targets, for scoring retrieved programs ('none': 3 decimals)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.model is None and args.strategy != "retrieval":
        print("error: --model is required for every strategy but retrieval", file=sys.stderr)
        return 2
    try:
        ds = load_gencad(args.data, split=args.split, limit=args.limit)
    except DatasetUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = DecodeConfig(strategy=args.strategy, num_beams=args.beams, n=args.n, temperature=args.temperature,
                       top_p=args.top_p, grammar=args.grammar, grammar_name=args.grammar_name, repair=args.repair, k_retrieval=args.k_retrieval,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device,
                       seed=args.seed, canonical_grid=parse_grid(args.canonical_grid))
    if args.weights:
        cfg.weights.update(json.loads(args.weights))
    index = None
    if cfg.strategy == "retrieval" or cfg.k_retrieval:
        if args.index and Path(args.index).exists():
            index = RetrievalIndex.load(args.index)
        elif args.retrieval_data:
            index = RetrievalIndex.build(args.retrieval_data)
            if args.index:
                index.save(args.index)
        else:
            print("error: retrieval needs --retrieval-data DIR (training data) or an existing --index FILE", file=sys.stderr)
            return 2
    model = tokenizer = processor = None
    if cfg.strategy != "retrieval":
        from sft.model import load_model

        model, tokenizer, processor = load_model(args.model, resolve_device(args.device))
    rows = [{"id": r["deepcad_id"], "image": r["image"]} for r in undecoded(ds)]
    pool = SandboxPool(args.workers) if cfg.strategy in ("bestofn", "rerank") else None
    try:
        stats = predict(model, tokenizer, processor, rows, args.out, cfg, pool, index)
    finally:
        if pool is not None:
            pool.close()
    print(json.dumps({"n": len(rows), **stats, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
