"""Search error or model error? The model's score of its beam program against its nearest neighbour.

Where beam 4 of a retrieval-conditioned model ends below the nearest training program it read,
either beam search missed that program although the model scores it higher (a search error), or
the model prefers its own rewrite (a model error). For each image this scores, under the model
and in the context beam search read (the model's ``retrieval_k`` nearest, rescaled as decoding
does), the beam program of a ``python -m decoding`` JSONL and the nearest program left unchanged:
the summed log-probability and the per-token mean (beam search ranks finished programs by the
sum over the length, length penalty 1). With ``--iou`` (a ``reward.evaluate`` output of the beam
programs) and ``--lookup-iou`` (one of ``--strategy retrieval --k-retrieval 1``) it splits the
counts by which of the two is closer to the truth.

    python scripts/beam_vs_neighbour.py --model DIR --data data/synth-val --split validation --limit 192 \\
        --pred BEAM.jsonl [--iou BEAM_EVAL.json --lookup-iou LOOKUP_EVAL.json] --out JSON
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, to_image, undecoded  # noqa: E402
from cad.cli import guarded  # noqa: E402
from cad.io import read_jsonl, require_model_dir  # noqa: E402
from decoding.predict import DecodeConfig, Predictor  # noqa: E402
from decoding.retrieval import load_saved_index  # noqa: E402
from sft.data import program_tokens  # noqa: E402
from sft.model import load_model  # noqa: E402
from sft.tokenizer import canonical_target  # noqa: E402


def per_id_iou(path: str | None) -> dict[str, float]:
    """Best IoU per id of a ``reward.evaluate`` output, failures as 0."""
    if not path:
        return {}
    return {str(r["id"]): r["iou"] or 0.0 for r in json.loads(Path(path).read_text())["rows"]}


@guarded()
@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=192)
    ap.add_argument("--pred", required=True, help="beam programs: a python -m decoding JSONL")
    ap.add_argument("--iou", help="reward.evaluate output of those beam programs")
    ap.add_argument("--lookup-iou", help="reward.evaluate output of the nearest programs (--strategy retrieval)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    require_model_dir(args.model)
    beam = {str(r["id"]): r["code"] for _, r, _ in read_jsonl(args.pred) if r and "code" in r}

    model, tok, proc = load_model(args.model, torch.device("cpu"))
    model.eval()
    index = load_saved_index(args.model)
    predictor = Predictor(model, tok, proc, DecodeConfig(strategy="beam"), index=index)
    rows = [r for r in undecoded(load_gencad(args.data, split=args.split, limit=args.limit)) if str(r["deepcad_id"]) in beam]

    def tokens(code: str) -> list[int]:
        return program_tokens(tok, canonical_target(code, predictor.cfg.canonical_grid), False)  # as decoding tokenizes

    out = []
    for start in tqdm(range(0, len(rows), args.batch_size), desc="score", unit="batch"):
        chunk = rows[start:start + args.batch_size]
        images = [to_image(r["image"]).convert("RGB") for r in chunk]
        contexts = [per[0] for per in predictor.neighbour_sets(index.query(images, predictor.context_k), 1)]
        retrieved = predictor.retrieved_inputs(contexts, torch.device("cpu"))
        px = proc(images)
        beam_toks = [tokens(beam[str(r["deepcad_id"])]) for r in chunk]
        near_toks = [tokens(ctx[0]) for ctx in contexts]
        lp_beam = model.score_sequences(px, beam_toks, **retrieved).tolist()
        lp_near = model.score_sequences(px, near_toks, **retrieved).tolist()
        for r, b, n, bt, nt in zip(chunk, lp_beam, lp_near, beam_toks, near_toks):
            out.append({"id": str(r["deepcad_id"]), "beam_logprob": round(b, 3), "neighbour_logprob": round(n, 3),
                        "beam_tokens": len(bt), "neighbour_tokens": len(nt)})

    beam_iou, near_iou = per_id_iou(args.iou), per_id_iou(args.lookup_iou)

    def counts(items: list[dict]) -> dict:
        if not items:
            return {"ids": 0}
        by_sum = [x["neighbour_logprob"] > x["beam_logprob"] for x in items]
        by_mean = [x["neighbour_logprob"] / x["neighbour_tokens"] > x["beam_logprob"] / x["beam_tokens"] for x in items]
        return {"ids": len(items), "neighbour_higher_by_sum": int(sum(by_sum)), "neighbour_higher_per_token": int(sum(by_mean)),
                "mean_beam_logprob": round(float(np.mean([x["beam_logprob"] for x in items])), 3),
                "mean_neighbour_logprob": round(float(np.mean([x["neighbour_logprob"] for x in items])), 3),
                "mean_beam_per_token": round(float(np.mean([x["beam_logprob"] / x["beam_tokens"] for x in items])), 4),
                "mean_neighbour_per_token": round(float(np.mean([x["neighbour_logprob"] / x["neighbour_tokens"] for x in items])), 4)}

    summary = {"all": counts(out)}
    if beam_iou and near_iou:
        summary["neighbour_closer_by_0.01"] = counts([x for x in out if near_iou[x["id"]] > beam_iou[x["id"]] + 0.01])
        summary["beam_closer_by_0.01"] = counts([x for x in out if beam_iou[x["id"]] > near_iou[x["id"]] + 0.01])
        summary["neighbour_at_0.95_or_more"] = counts([x for x in out if near_iou[x["id"]] >= 0.95])
    result = {"command": "python scripts/beam_vs_neighbour.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": args.model, "summary": summary, "rows": out}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
