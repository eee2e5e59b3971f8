"""Numbers or shape? A retrieval-conditioned model's numbers written into the true program's structure.

Template decoding (``decoding.template``) with each image's own true program as the template: every
token that is not a number is forced to the true program's, and the model, reading its usual
context (its ``retrieval_k`` nearest training programs, which do not hold a validation image's own
program), chooses every number
freely (``--bias 0``) or with the true number raised by ``--bias``. The Best IoU that results is
what the model's numbers are worth once the program's shape is right; set beside the model's own
beam search and the lookup, it says which of the two the model loses on. A study on validation
images: it reads their true programs.

    python scripts/oracle_structure.py --model models/img2cad-small --data data/synth-val --split validation \\
        --limit 192 --out docs/results/oracle_structure-shipped-val192.json
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
from cad.cli import guarded  # noqa: E402
from cad.data import load_gencad, to_image, undecoded  # noqa: E402
from cad.io import require_model_dir  # noqa: E402
from cad.programs import NUMBER_RE, normalize_scale, structure  # noqa: E402
from cad.sandbox import SandboxPool  # noqa: E402
from decoding.predict import DecodeConfig, Predictor  # noqa: E402
from decoding.retrieval import load_saved_index  # noqa: E402
from decoding.template import TemplateLogitsProcessor, number_token_mask  # noqa: E402
from reward.evaluate import evaluate_pairs  # noqa: E402
from sft.model import load_model  # noqa: E402
from sft.tokenizer import canonical_target  # noqa: E402


class TruthTemplatePredictor(Predictor):
    """Template decoding whose templates are ``truths`` (one program per image of the batch)
    instead of each image's first retrieved program; the model's context is unchanged."""

    truths: list[str] = []

    def template_processor(self, rows: list[list[str]], rows_per_template: int):
        if self._numbers is None:
            self._numbers = number_token_mask(self.tok)
        templates = [self._tokens(normalize_scale(code, self.scale) if self.scale else code) for code in self.truths]
        return TemplateLogitsProcessor(templates, self._numbers, self.cfg.template_bias, rows_per_template)


def changed_share(pairs: list[tuple[str, str]]) -> float:
    """The share of numbers written differently from the template's, over programs of its structure."""
    changed = total = 0
    for code, template in pairs:
        if structure(code) != structure(template):
            continue
        a, b = NUMBER_RE.findall(canonical_target(code)), NUMBER_RE.findall(canonical_target(template))
        changed += sum(x != y for x, y in zip(a, b))
        total += len(b)
    return round(changed / total, 4) if total else 0.0


@guarded()
@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a retrieval-conditioned model folder with its saved index")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=192)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--bias", type=float, default=0.0, help="added to the true number's score (0: the model's choice)")
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    require_model_dir(args.model)
    model, tok, proc = load_model(args.model, torch.device("cpu"))
    model.eval()
    if not model.config.retrieval_layers:
        raise SystemExit(f"error: {args.model}: a plain model (retrieval_layers 0) reads no retrieved program")
    index = load_saved_index(args.model)
    cfg = DecodeConfig(strategy="beam", num_beams=args.beams, template_bias=args.bias, max_new_tokens=args.max_new_tokens)
    predictor = TruthTemplatePredictor(model, tok, proc, cfg, index=index)
    rows = list(undecoded(load_gencad(args.data, split=args.split, limit=args.limit)))
    preds: list[str] = []
    for start in tqdm(range(0, len(rows), args.batch_size), desc="oracle structure", unit="batch"):
        batch = rows[start:start + args.batch_size]
        predictor.truths = [canonical_target(r["cadquery"], cfg.canonical_grid) for r in batch]
        cands = predictor.generate([to_image(r["image"]) for r in batch])
        preds.extend(c[0].code for c in cands)
    truths = [r["cadquery"] for r in rows]
    with SandboxPool(args.workers) as pool:
        summary, scored = evaluate_pairs([(str(r["deepcad_id"]), p, t) for r, p, t in zip(rows, preds, truths)], pool)
    report = {
        "benchmark": "oracle_structure", "model": args.model, "data": args.data, "split": args.split,
        "command": " ".join(["python scripts/oracle_structure.py", *(argv or sys.argv[1:])]),
        "beams": args.beams, "bias": args.bias, **summary,
        "iou_fail0": round(float(np.mean([r["iou"] or 0.0 for r in scored])), 4),
        "numbers_changed_share": changed_share(list(zip(preds, truths))),
        "rows": [{"id": r["id"], "iou": r["iou"], "status": r["status"], "code": p} for r, p in zip(scored, preds)],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
