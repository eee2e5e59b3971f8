"""Decoding cost: per-image latency of beam 4 against best-of-N + reranking for N in {1, 3, 6, 10}
(each with ``--k`` retrieved candidates, N = 1 with the quick prisms too, and N = 1 with each of ``--more-k``;
``models/img2cad-small/decoding.json`` holds ``img2cad predict``'s default, N = 1 with 4 retrieved and the prisms), as ratios measured in one run (with the time spent executing and scoring candidates, which overlaps
generation); plus grammar-constrained decoding overhead per token for each grammar and the
repair rate on a corpus of broken programs (truncated and mutated reference rows).

    python scripts/bench_decode.py --model DIR --data DATA [--split S] [--limit 8] [--k 2] [--out results/bench_decode.json]

A retrieval-conditioned model uses the index in its folder (``retrieval_index.npz``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, to_image  # noqa: E402
from cad.sandbox import SandboxPool  # noqa: E402
from decoding.constrained import GrammarLogitsProcessor  # noqa: E402
from decoding.grammar import GRAMMARS, repair, validate  # noqa: E402
from decoding.predict import DecodeConfig, predict  # noqa: E402
from decoding.rerank import DEFAULT_WEIGHTS, parse_weights  # noqa: E402
from decoding.retrieval import RetrievalIndex, saved_index  # noqa: E402
from scripts._common import machine, reference_rows, write_json  # noqa: E402
from sft.model import load_model  # noqa: E402


def repair_corpus(seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    broken = []
    for row in reference_rows():
        code = row["cadquery"]
        for frac in (0.3, 0.5, 0.7, 0.9, 0.97):
            broken.append(code[: int(len(code) * frac)])
        broken.append(code.replace("import cadquery as cq\n", "", 1))
        closers = [k for k, ch in enumerate(code) if ch == ")"]
        for k in rng.choice(closers, size=3, replace=False):
            broken.append(code[:k] + code[k + 1:])
        broken.append("\n".join(ln for ln in code.splitlines() if not ln.startswith("solid=")))
    return [b for b in broken if not validate(b).ok]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--k", type=int, default=2, help="retrieved programs added to the reranked candidates")
    ap.add_argument("--more-k", default="", help="comma-separated: more retrieved-candidate counts, timed with N = 1 "
                                                 "(rerank_n1_k<K>)")
    ap.add_argument("--weights", help="rerank weights as JSON over the defaults (decoding.rerank.DEFAULT_WEIGHTS)")
    ap.add_argument("--batch-size", type=int, default=4, help="images per batch for every configuration")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", default="results/bench_decode.json")
    args = ap.parse_args()
    model, tok, proc = load_model(args.model, "cuda" if torch.cuda.is_available() else "cpu")
    ds = load_gencad(args.data, split=args.split, limit=args.limit)
    own = saved_index(args.model)
    index = RetrievalIndex.load(own) if own else None
    k = args.k if index is not None else 0
    rows = [{"id": r["deepcad_id"], "image": r["image"]} for r in ds]
    weights = {**DEFAULT_WEIGHTS, **(parse_weights(args.weights) if args.weights else {})}
    rerank = {"strategy": "rerank", "repair": True, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
              "weights": weights}
    timings, selection = {}, {}
    with SandboxPool(2) as pool, tempfile.TemporaryDirectory() as tmp:
        runs = [("beam4", DecodeConfig(strategy="beam", max_new_tokens=args.max_new_tokens, batch_size=args.batch_size))]
        runs += [(f"rerank_n{n}", DecodeConfig(n=n, k_retrieval=k, **rerank)) for n in (1, 3, 6, 10)]
        runs += [("rerank_n1_prisms", DecodeConfig(n=1, k_retrieval=k, prisms=True, **rerank))]
        if index is not None:
            runs += [(f"rerank_n1_k{m}", DecodeConfig(n=1, k_retrieval=m, **rerank))
                     for m in sorted({int(x) for x in args.more_k.split(",") if x} - {k})]
        # warm-up, untimed: the first generation and the sandbox's first programs pay one-off costs
        predict(model, tok, proc, rows[:2], Path(tmp) / "warmup.jsonl", runs[-1][1], pool, index, progress=False)
        for name, cfg in runs:
            pool.clear_cache()  # each configuration pays for its own executions
            stats = predict(model, tok, proc, rows, Path(tmp) / f"{name}.jsonl", cfg, pool, index, progress=False)
            timings[name] = stats["seconds_per_image"]
            selection[name] = round(stats["select_seconds"] / max(stats["decoded"], 1), 4)
    base = timings["beam4"]
    # grammar-constrained overhead per generated token (greedy, same images)
    px = proc([to_image(r["image"]) for r in rows])
    t0 = time.perf_counter()
    free = model.generate_programs(px, max_new_tokens=args.max_new_tokens)
    t_free = time.perf_counter() - t0
    from transformers import LogitsProcessorList

    n_free = int((free.sequences != tok.pad_token_id).sum())
    grammar = {"ms_per_token_free": round(1000 * t_free / max(n_free, 1), 3)}
    for name, text in GRAMMARS.items():
        gp = GrammarLogitsProcessor(tok, text)
        t0 = time.perf_counter()
        constrained = model.generate_programs(px, max_new_tokens=args.max_new_tokens, logits_processor=LogitsProcessorList([gp]))
        t_con = time.perf_counter() - t0
        n_con = int((constrained.sequences != tok.pad_token_id).sum())
        grammar[f"ms_per_token_{name}"] = round(1000 * t_con / max(n_con, 1), 3)
        grammar[f"overhead_ratio_{name}"] = round((t_con / max(n_con, 1)) / (t_free / max(n_free, 1)), 2)
    broken = repair_corpus()
    fixed = [repair(b) for b in broken]
    write_json(args.out, {
        "benchmark": "decode", "machine": machine(), "device": str(next(model.parameters()).device),
        "images": len(rows), "model": args.model, "retrieval_conditioned": bool(getattr(model.config, "retrieval_layers", 0)),
        "k_retrieval": k, "batch_size": args.batch_size, "rerank_weights": weights, "seconds_per_image": timings,
        "ratio_to_beam4": {k: round(v / base, 2) for k, v in timings.items()},
        "selection_seconds_per_image": selection,
        "grammar": grammar,
        "repair": {"broken_programs": len(broken), "repaired_to_grammar": sum(f.ok for f in fixed),
                   "repair_rate": round(sum(f.ok for f in fixed) / max(len(broken), 1), 3)},
        "target": "img2cad predict's default (rerank_n1_prisms with --k 4 for models/img2cad-small) at most 2x beam4",
    })


if __name__ == "__main__":
    main()
