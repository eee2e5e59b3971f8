"""Where the default decoding loses IoU: in the choice among its candidates, or in the candidates.

    python scripts/candidate_oracle.py --data data/synth-val --split validation --limit 96 \\
        --out docs/results/candidate_oracle-val96.json
    python scripts/candidate_oracle.py --out /tmp/oracle-real10.json  # the ten reference rows

Each row's picture is decoded by the shipped model's default (``img2cad.engine.Engine``, what
``img2cad predict`` runs; ``--thorough`` for its slower setting). Every candidate it ranked (the
model's edits, the retrieved programs, the prisms and unions read off the picture) and the program
it chose are then scored against the row's program (exact Best IoU, ``reward.evaluate``). The
report gives the mean Best IoU of the chosen program and of each row's best candidate (the
oracle: what a perfect reranker would reach with these candidates), the source of the best
candidates, both means by the number of sketches in the true program, and the rows where the
best candidate beats the chosen one by more than ``--gap``; each row lists every candidate's source,
the reranker's total and its IoU (``scored``), and for a program read off the picture with the
frame that draws it where the picture shows it, how many pixels the picture's own framing (the
window fit of its bounding box, ``cad.render.frame_offset``) would draw it away from there
(``framing_error``); the chosen programs' IoU is also given by that error (``by_framing_error``).
A test split is refused.
"""
from __future__ import annotations

import argparse
import collections
import math
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.render import frame_offset  # noqa: E402
from cad.sandbox import SandboxPool  # noqa: E402
from img2cad.images import load_input  # noqa: E402
from reward.evaluate import evaluate_pairs  # noqa: E402
from scripts._common import add_row_arguments, machine, row_picture, rows_of, write_json  # noqa: E402


def sketches(code: str) -> int:
    """The number of workplanes (sketches) a GenCAD program draws on."""
    return code.count("cq.Workplane(")


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


FRAMING_BINS = (0.0, 2.0, 4.0, math.inf)  # pixels: bins of the chosen programs' framing error


def framing_error(candidate) -> float | None:
    """``cad.render.frame_offset`` of a candidate drawn by its own frame, None for one without."""
    if candidate.frame is None or candidate.result is None or candidate.result.geometry is None:
        return None
    return round(frame_offset(candidate.result.geometry, candidate.frame), 2)


def summarise(rows: list[dict], gap: float) -> dict:
    """Means of the chosen and the best candidates' IoU, overall and by sketch count; the best
    candidates' sources; the rows whose best candidate beats the chosen by more than ``gap``."""
    by_sketches: dict[int, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_sketches[r["sketches"]].append(r)
    return {
        "iou_chosen": _mean([r["chosen_iou"] for r in rows]),
        "iou_oracle": _mean([r["oracle_iou"] for r in rows]),
        "oracle_sources": dict(collections.Counter(r["oracle_source"] for r in rows).most_common()),
        "by_sketches": {str(k): {"n": len(v), "iou_chosen": _mean([r["chosen_iou"] for r in v]),
                                 "iou_oracle": _mean([r["oracle_iou"] for r in v])}
                        for k, v in sorted(by_sketches.items())},
        "by_framing_error": {f"[{lo:g}, {hi:g})": {"n": len(v), "iou_chosen": _mean([r["chosen_iou"] for r in v])}
                             for lo, hi in zip(FRAMING_BINS, FRAMING_BINS[1:])
                             for v in [[r for r in rows if r.get("chosen_framing_error") is not None
                                        and lo <= r["chosen_framing_error"] < hi]]},
        "rerank_losses": [{k: r[k] for k in ("id", "chosen_source", "chosen_iou", "oracle_source", "oracle_iou")}
                          for r in sorted(rows, key=lambda r: r["chosen_iou"] - r["oracle_iou"])
                          if r["oracle_iou"] - r["chosen_iou"] > gap],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_row_arguments(ap)
    ap.add_argument("--thorough", action="store_true", help="decode with img2cad's --thorough setting")
    ap.add_argument("--gap", type=float, default=0.05, help="list the rows whose best candidate beats the chosen by more")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from img2cad.engine import Engine, decode_config
    from img2cad.shipped import DEFAULT_MODEL, load_shipped

    data = rows_of(ap, args)
    shipped = load_shipped(args.model or DEFAULT_MODEL)
    cfg = decode_config(shipped)
    pairs, meta = [], []
    with tempfile.TemporaryDirectory() as tmp, Engine(shipped, cfg, workers=args.workers) as engine, \
            SandboxPool(args.workers) as pool:
        for row in tqdm(data, desc="decode", unit="img"):
            path = Path(tmp) / f"{row['deepcad_id']}.png"
            row_picture(row).save(path)
            pred = engine.predict(load_input(path), thorough=args.thorough)
            codes, sources = [c.code for c in pred.candidates], [c.source for c in pred.candidates]
            totals = [c.total for c in pred.candidates]
            framing = [framing_error(c) for c in pred.candidates]
            if pred.chosen.code not in codes:  # a refined program is no candidate: score it too
                codes.append(pred.chosen.code)
                sources.append("refined")
                totals.append(pred.chosen.total)
                framing.append(None)
            for i, code in enumerate(codes):
                pairs.append((f"{row['deepcad_id']}#{i}", code, row["cadquery"]))
            meta.append((row, codes, sources, totals, framing, codes.index(pred.chosen.code)))
        _, scored = evaluate_pairs(pairs, pool, progress=True)
    iou = {r["id"]: r["iou"] or 0.0 for r in scored}  # a program that fails scores 0, as in Best IoU
    rows = []
    for row, codes, sources, totals, framing, chosen in meta:
        ious = [iou[f"{row['deepcad_id']}#{i}"] for i in range(len(codes))]
        best = max(range(len(codes)), key=lambda i: (ious[i], i == chosen))
        rows.append({"id": row["deepcad_id"], "sketches": sketches(row["cadquery"]), "candidates": len(codes),
                     "chosen_source": sources[chosen], "chosen_iou": round(ious[chosen], 4),
                     "oracle_source": sources[best].split(":")[0], "oracle_iou": round(ious[best], 4),
                     "chosen_framing_error": framing[chosen],
                     "scored": [{"source": s, "total": round(t, 4) if math.isfinite(t) else None, "iou": round(v, 4),
                                 "framing_error": f} for s, t, v, f in zip(sources, totals, ious, framing)]})
    result = {"benchmark": "candidate_oracle", "command": "python " + " ".join(sys.argv), "model": shipped.name,
              "decoding": "thorough" if args.thorough else cfg.strategy, "n": len(rows), "machine": machine(),
              **summarise(rows, args.gap), "rows": rows}
    write_json(args.out, result)
    print(f"chosen {result['iou_chosen']}, oracle {result['iou_oracle']} over {len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
