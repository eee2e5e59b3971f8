"""Evaluate decoding strategies of one model on one or more datasets; writes table.md / table.json.

    python -m scripts.eval_strategies --model DIR --data TEST [--data real=../shared/gencad_reference]
        --retrieval-data TRAIN [--limit 48] [--n 4] [--out results/strategies]

Rows: retrieval, beam 4 (the study's baseline), + grammar, + best-of-N with execution, + rerank.
Predictions are cached per (dataset, strategy) in OUT/preds and resumed, so a second run of the
same configuration only re-scores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cad.data import load_gencad, undecoded
from cad.sandbox import SandboxPool
from decoding.predict import DecodeConfig, predict
from decoding.retrieval import RetrievalIndex
from reward.evaluate import evaluate_pairs


def default_strategies(n: int = 4, k: int = 2, max_new_tokens: int = 384) -> dict[str, DecodeConfig]:
    return {
        "retrieval (nearest training image)": DecodeConfig(strategy="retrieval"),
        "baseline: beam 4": DecodeConfig(strategy="beam", max_new_tokens=max_new_tokens),
        "+ grammar (constrained + repair)": DecodeConfig(strategy="grammar", max_new_tokens=max_new_tokens),
        f"+ best-of-{n} with execution": DecodeConfig(strategy="bestofn", n=n, grammar=True, repair=True, max_new_tokens=max_new_tokens),
        f"+ rerank (render-compare, {k} retrieved)": DecodeConfig(strategy="rerank", n=n, grammar=True, repair=True,
                                                                   k_retrieval=k, max_new_tokens=max_new_tokens),
    }


def rows_of(source: str, limit: int | None) -> tuple[list[dict], list[tuple[str, str]]]:
    ds = undecoded(load_gencad(source, limit=limit))
    return ([{"id": r["deepcad_id"], "image": r["image"]} for r in ds], [(r["deepcad_id"], r["cadquery"]) for r in ds])


def evaluate_strategies(model, tok, proc, data: dict[str, str], strategies: dict[str, DecodeConfig], index,
                        out: Path, limit: int | None = None, model_name: str = "SFT") -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    table = []
    with SandboxPool(2) as pool:
        for name, source in data.items():
            inputs, gts = rows_of(source, limit)
            for label, cfg in strategies.items():
                preds = out / "preds" / f"{name}-{cfg.strategy}.jsonl"
                stats = predict(model, tok, proc, inputs, preds, cfg, pool, index, progress=False)
                by_id = {json.loads(x)["id"]: json.loads(x)["code"] for x in preds.read_text().splitlines()}
                summary, rows = evaluate_pairs([(i, by_id.get(i), code) for i, code in gts], pool, progress=False)
                (out / "preds" / f"{name}-{cfg.strategy}.eval.json").write_text(json.dumps({"summary": summary, "rows": rows}))
                spi = stats["seconds_per_image"] if stats["decoded"] else None
                table.append({"data": name, "model": label if cfg.strategy == "retrieval" else f"{model_name}, {label}",
                              **summary, "s_per_image": spi})
                iou = "-" if summary["iou_best"] is None else f"{summary['iou_best']:.3f}"
                print(f"{name:20s} {label:42s} VSR {summary['vsr']:.3f}  exec {summary['exec_rate']:.3f}  IoU {iou}", flush=True)
    write_table(table, out)
    return table


def write_table(table: list[dict], out: Path) -> str:
    lines = ["| data | model / strategy | n | VSR | Executable | Best IoU (exact) | syntax / semantic / structural errors | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        iou = "-" if r.get("iou_best") is None else f"{r['iou_best']:.3f}"
        err = " / ".join(str(r["errors"][k]["count"]) for k in ("syntax", "semantic", "structural"))
        spi = "-" if r.get("s_per_image") is None else f"{r['s_per_image']:.3f}"
        lines.append(f"| {r['data']} | {r['model']} | {r['n']} | {r['vsr']:.3f} | {r['exec_rate']:.3f} | {iou} | {err} | {spi} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(json.dumps(table, indent=2))
    return text


def main() -> None:
    from sft.model import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", action="append", required=True, help="NAME=PATH or PATH (repeatable)")
    ap.add_argument("--retrieval-data", required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--strategies", default="retrieval,beam,grammar,bestofn,rerank",
                    help="comma-separated subset of retrieval, beam, grammar, bestofn, rerank")
    ap.add_argument("--name", default="SFT", help="model name in the table")
    ap.add_argument("--out", default="results/strategies")
    args = ap.parse_args()
    wanted = set(args.strategies.split(","))
    data = dict(d.split("=", 1) if "=" in d else (Path(d).name, d) for d in args.data)
    t0 = time.perf_counter()
    model, tok, proc = load_model(args.model)
    strategies = {k: v for k, v in default_strategies(args.n, args.k, args.max_new_tokens).items() if v.strategy in wanted}
    needs_index = any(v.strategy == "retrieval" or v.k_retrieval for v in strategies.values())
    index = RetrievalIndex.build(args.retrieval_data) if needs_index else None
    table = evaluate_strategies(model, tok, proc, data, strategies, index, Path(args.out), args.limit, args.name)
    print(write_table(table, Path(args.out)))
    print(f"{time.perf_counter() - t0:.0f} s; table in {args.out}/table.md")


if __name__ == "__main__":
    main()
