"""``python -m decoding --model DIR --data DATA --strategy beam --out preds.jsonl``.

DATA is anything ``cad.data.load_gencad`` reads (a GenCAD-schema folder, a JSONL of rows with
image paths, or nothing for the hub). Output lines ``{"id", "code", "strategy", "logprob",
"tokens"}`` are what ``python -m reward.evaluate`` reads; an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys

from cad.data import DatasetUnavailable, load_gencad
from decoding.predict import DecodeConfig, predict, resolve_device
from sft.model import load_model

STRATEGIES = ("greedy", "beam")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m decoding", description="Predict CadQuery programs from images")
    ap.add_argument("--model", required=True, help="a model directory written by python -m sft (final/)")
    ap.add_argument("--data", help="dataset folder / JSONL (omit for the hub)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N rows only")
    ap.add_argument("--strategy", choices=STRATEGIES, default="beam")
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        ds = load_gencad(args.data, split=args.split, limit=args.limit)
    except DatasetUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model, tokenizer, processor = load_model(args.model, resolve_device(args.device))
    rows = [{"id": r["deepcad_id"], "image": r["image"]} for r in ds]
    cfg = DecodeConfig(args.strategy, args.beams, args.batch_size, args.max_new_tokens, args.device)
    stats = predict(model, tokenizer, processor, rows, args.out, cfg)
    print(json.dumps({"n": len(rows), **stats, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
