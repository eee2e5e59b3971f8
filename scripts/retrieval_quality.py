"""Retrieval quality: how good are the programs of the nearest training images?

For each embedding of ``decoding.retrieval`` and each query set, the Best IoU (exact) of the
top-1 retrieved program against the query's true program, and the oracle best-of-k (the best IoU
among the k nearest) for k in ``--ks``: the ceiling of every method that picks retrieved programs.
``structure@k`` is the share of queries with a program of the true program's structure among the
k nearest (``cad.programs.structure``): where one can reach the true program by changing numbers
alone. Optionally saves the index of the better embedding (``--save-best``). ``--index NAME=FILE``
measures a saved index (the shipped ``models/img2cad-small/index.npz``) without the training data.

    python scripts/retrieval_quality.py --train data/synth-train --train-split train \
        --data synthetic-val=data/synth-val:validation --data real-10=../shared/gencad_reference/samples.jsonl \
        --limit 64 --out docs/results/retrieval_quality.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad  # noqa: E402
from cad.geometry import best_iou  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from cad.programs import structure  # noqa: E402
from decoding.retrieval import EMBEDDINGS, RetrievalIndex, features, read_rows  # noqa: E402


def parse_data(spec: str) -> tuple[str, str, str | None]:
    name, _, rest = spec.partition("=")
    path, _, split = rest.partition(":") if not rest.endswith(".jsonl") else (rest, "", "")
    return name, path, split or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", help="training data: build an index of it for each of --embeddings")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--data", action="append", required=True, help="NAME=PATH[:SPLIT] (never a test split when tuning)")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--ks", default="1,4,16")
    ap.add_argument("--embeddings", default=",".join(EMBEDDINGS))
    ap.add_argument("--index", action="append", default=[], help="NAME=FILE: also measure this saved index")
    ap.add_argument("--dims", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--save-best", help="write the index of the embedding with the best top-1 IoU on the first query set")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    ks = sorted({int(k) for k in args.ks.split(",")})
    embeddings = args.embeddings.split(",")

    if not args.train and not args.index:
        ap.error("pass --train DIR, --index NAME=FILE or both")
    indexes: dict[str, RetrievalIndex] = {}
    if args.train:
        train = load_gencad(args.train, split=args.train_split, allow_test=False)
        ink, codes, ids = read_rows(train)
        indexes = {e: RetrievalIndex.from_features(features(ink, e), codes, ids, e, args.dims,
                                                   {"source": args.train, "split": args.train_split})
                   for e in embeddings}
        del ink
    for spec in args.index:
        name, _, file = spec.partition("=")
        indexes[name] = RetrievalIndex.load(file)
    pool = SandboxPool(args.workers)
    opts = ExecOptions(timeout=10.0, want_geometry=True)
    report: dict = {"train": args.train, "indexes": {n: len(i.programs) for n, i in indexes.items()},
                    "dims": args.dims, "ks": ks, "sets": {}}
    try:
        for spec in args.data:
            name, path, split = parse_data(spec)
            rows = load_gencad(path, split=split, limit=args.limit)
            q_ink, q_codes, _ = read_rows(rows, progress=False)
            hits = {e: [[idx.programs[j] if j >= 0 else None for j in row]
                        for row in idx.search(idx._project(features(q_ink, idx.embedding)), max(ks))[0]]
                    for e, idx in indexes.items()}
            wanted = sorted({c for h in hits.values() for row in h for c in row if c is not None})
            t0 = time.perf_counter()
            gt = list(pool.imap(q_codes, opts))
            ret = dict(zip(wanted, pool.imap(wanted, opts)))
            cache: dict[tuple[int, str], float] = {}

            def iou(q: int, program: str) -> float:
                if (q, program) not in cache:
                    a, b = ret[program], gt[q]
                    ok = a.executable and b.executable and a.geometry is not None and b.geometry is not None
                    cache[q, program] = best_iou(a.geometry, b.geometry, "exact").iou if ok else 0.0
                return cache[q, program]

            per = {}
            valid = [q for q in range(len(gt)) if gt[q].executable]
            shapes = [structure(c) for c in q_codes]
            shape_of = {c: structure(c) for c in wanted}
            for e, h in hits.items():
                table = np.array([[iou(q, c) if c is not None else 0.0 for c in row]
                                  for q, row in enumerate(tqdm(h, desc=f"{name} {e}", leave=False))])
                same = np.array([[c is not None and shape_of[c] == shapes[q] for c in row] for q, row in enumerate(h)])
                per[e] = {"n": len(valid), "top1_iou": round(float(table[valid, 0].mean()), 4),
                          **{f"oracle@{k}": round(float(table[valid, :k].max(1).mean()), 4) for k in ks},
                          **{f"structure@{k}": round(float(same[valid, :k].any(1).mean()), 4) for k in ks}}
            report["sets"][name] = {"path": path, "split": split, "queries": len(gt), "embeddings": per,
                                    "seconds": round(time.perf_counter() - t0, 1)}
            print(name, json.dumps(per))
    finally:
        pool.close()
    first = report["sets"][parse_data(args.data[0])[0]]["embeddings"]
    best = max(first, key=lambda e: first[e]["top1_iou"])
    report["best_embedding"] = best
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if args.save_best:
        indexes[best].save(args.save_best)
    print(json.dumps({"best": best, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
