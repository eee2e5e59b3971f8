"""How much does a retrieval-conditioned model use its retrieved programs?

Token-weighted validation loss of the model's programs given the image and the k nearest
training programs (its folder's retrieval index, as decoding uses them), given the image and no
retrieved program (the plain mode), and given the image and a perturbed copy of the true program
(an upper reference: what a near-perfect neighbour is worth). A model that ignores its retrieved
programs scores the first two alike. Each loss is also split by the kind of token predicted:
number tokens (those holding a digit) and the rest (the program's structure), as a neighbour
can help a model with its structure and not with its numbers; and, in each context, over the
number tokens that the perturbed copy holds (its exact numbers and the ones it shares): a model
that copies pays much less for those given the copy than given nothing.

    python scripts/retrieval_use.py --model DIR --data data/synth-val --split validation \\
        [--limit 128] [--out docs/results/retrieval_use.json]

DIR is an sft run's model folder (its index: retrieval_index.npz) or a shipped model folder
(models/img2cad-small, whose index is index.npz).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.data import load_gencad, undecoded  # noqa: E402
from decoding.retrieval import load_saved_index  # noqa: E402
from sft.config import SFTConfig  # noqa: E402
from sft.data import Examples, RetrievalSpec, attach_edits, attach_neighbours, build_examples, collate, program_tokens  # noqa: E402
from sft.model import load_model  # noqa: E402


@torch.no_grad()
def loss_by_kind(model, ex: Examples, is_number: torch.Tensor, pad_id: int, batch_size: int, device,
                 copies: list[list[int]]) -> dict[str, list]:
    """[token-weighted mean loss, token count] over all predicted tokens, over number tokens, over
    the rest, and over the number tokens that row's ``copies[i]`` (a token list) holds."""
    model.eval()
    sums = {kind: [0.0, 0] for kind in ("all", "numbers", "structure", "numbers_the_copy_holds")}
    for start in range(0, len(ex), batch_size):
        rows = list(range(start, min(start + batch_size, len(ex))))
        batch = {k: v.to(device) for k, v in collate(ex, rows, pad_id).items()}
        out = model(**batch, fused_lm_head=True)  # per-token log-probs of the labels (sft.model.per_token_outputs)
        labels, nll, valid = batch["labels"][:, 1:], -out.log_probs, out.label_mask
        number = valid & is_number.to(device)[labels.clamp(min=0)]
        held = torch.stack([torch.isin(labels[j], torch.tensor(copies[i], device=device)) for j, i in enumerate(rows)])
        for kind, mask in (("all", valid), ("numbers", number), ("structure", valid & ~number),
                           ("numbers_the_copy_holds", number & held)):
            sums[kind][0] += float(nll[mask].sum())
            sums[kind][1] += int(mask.sum())
    return {kind: [s / max(n, 1), n] for kind, (s, n) in sums.items()}


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
    index = load_saved_index(args.model)
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

    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    is_number = torch.tensor([any(ch.isdigit() for ch in t) for t in vocab])

    def loss(neighbours) -> dict[str, float]:
        return loss_by_kind(model, dataclasses.replace(ex, neighbours=neighbours), is_number, tok.pad_token_id,
                            args.batch, accelerator.device, [e[0] for e in ex.edits])

    report = {"model": args.model, "data": args.data, "split": args.split, "rows": len(ex), "k": k}
    for name, neighbours in (("with_retrieved", ex.neighbours), ("without_retrieved", [[] for _ in range(len(ex))]),
                             ("with_perturbed_own_program", [e[:1] for e in ex.edits])):
        by_kind = loss(neighbours)
        report[f"loss_{name}"] = round(by_kind["all"][0], 6)
        report[f"loss_{name}_numbers"] = round(by_kind["numbers"][0], 6)
        report[f"loss_{name}_structure"] = round(by_kind["structure"][0], 6)
        report[f"loss_{name}_numbers_the_copy_holds"] = round(by_kind["numbers_the_copy_holds"][0], 6)
    report["tokens_numbers"], report["tokens_structure"] = by_kind["numbers"][1], by_kind["structure"][1]
    report["tokens_numbers_the_copy_holds"] = by_kind["numbers_the_copy_holds"][1]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
