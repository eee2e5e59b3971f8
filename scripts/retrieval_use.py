"""How much does a retrieval-conditioned model use its retrieved programs?

Token-weighted validation loss of the model's programs given the image and the k nearest
training programs (its folder's retrieval index, as decoding uses them), given the image and no
retrieved program (the plain mode), and given the image and a perturbed copy of the true program
(an upper reference: what a near-perfect neighbour is worth). A model that ignores its retrieved
programs scores the first two alike.

    python scripts/retrieval_use.py --model DIR --data data/synth-val --split validation \\
        [--limit 128] [--out docs/results/retrieval_use.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, undecoded  # noqa: E402
from decoding.retrieval import RetrievalIndex  # noqa: E402
from sft.config import SFTConfig  # noqa: E402
from sft.data import RetrievalSpec, attach_edits, attach_neighbours, build_examples, program_tokens  # noqa: E402
from sft.model import load_model  # noqa: E402
from sft.train import validation_loss  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    accelerator = Accelerator()
    model, tok, proc = load_model(args.model, accelerator.device)
    k = int(model.config.retrieval_k)
    if not model.config.retrieval_layers:
        raise SystemExit(f"error: {args.model}: a plain model (retrieval_layers 0) reads no retrieved program")
    index = RetrievalIndex.load(Path(args.model) / "retrieval_index.npz")
    ds = load_gencad(args.data, split=args.split, allow_test=False)
    ds = ds.select(range(min(args.limit, len(ds))))
    scale = getattr(model.config, "program_scale", None)
    ex = build_examples(ds, proc, tok, 512, True, model.config.decoder_start_token_id, "rows", scale)
    images = {str(r["deepcad_id"]): r["image"] for r in undecoded(ds)}
    nearest = index.search(index.embed([images[i] for i in ex.ids]), k)[0]
    bank = [program_tokens(tok, c, scale=scale) for c in index.programs]
    attach_neighbours(ex, nearest, bank, RetrievalSpec(k, 0.0, tok.eos_token_id, tok.pad_token_id,
                                                       int(model.config.max_retrieved_length)))
    recipe = SFTConfig()  # the edit examples of the training recipes
    attach_edits(ex, tok, variants=1, sigma=recipe.retrieval_edit_sigma, share=recipe.retrieval_edit_share, seed=0)

    def loss(neighbours) -> float:
        return validation_loss(model, dataclasses.replace(ex, neighbours=neighbours), tok.pad_token_id, args.batch, accelerator)

    report = {
        "model": args.model, "data": args.data, "split": args.split, "rows": len(ex), "k": k,
        "loss_with_retrieved": loss(ex.neighbours),
        "loss_without_retrieved": loss([[] for _ in range(len(ex))]),
        "loss_with_perturbed_own_program": loss([e[:1] for e in ex.edits]),
    }
    report = {key: round(v, 6) if isinstance(v, float) else v for key, v in report.items()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
