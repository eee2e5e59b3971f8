"""``python -m decoding --model DIR --data DATA --strategy beam --out preds.jsonl``.

DATA is anything ``cad.data.load_gencad`` reads (a GenCAD-schema folder, a JSONL of rows with
image paths, or nothing for the hub). Output lines ``{"id", "code", "strategy", "logprob",
"tokens"}`` are what ``python -m reward.evaluate`` reads; an interrupted run resumes. Under
``accelerate launch`` the processes share the batches and merge one output (``cad.distributed``).
"""
from __future__ import annotations

import argparse
import json
import sys

from pathlib import Path

from cad.cli import LIMIT, SEED, WORKERS, ArgumentParser, float_in, guarded, int_in
from cad.data import load_gencad, undecoded
from cad.io import InputError, check_output_file, files_fingerprint, fingerprint, prune_stale, require_model_dir
from cad.distributed import combine_stats, is_main_process, merge, part_paths, run_sharded, state
from cad.sandbox import SandboxPool
from decoding.predict import (STRATEGIES, DecodeConfig, decode_fingerprints, model_option_problem, parse_grid, predict,
                              resolve_device)
from decoding.rerank import parse_objective, parse_weights
from decoding.retrieval import RetrievalIndex, saved_index
from reward.critic import FILE as CRITIC_FILE
from reward.critic import saved_critic
from reward.score import CRITIC


def _grid(text: str) -> int | None:
    try:
        grid = parse_grid(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer grid or 'none', got {text!r}") from None
    if grid is not None and not 1 <= grid <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text} is out of range: expected 1 to 1000000 or 'none'")
    return grid


@guarded("rerun the same command to resume; rows decoded from the same image and options are kept")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m decoding", description="Predict CadQuery programs from images")
    ap.add_argument("--model", help="a model directory written by python -m sft (final/); not needed for retrieval")
    ap.add_argument("--data", help="dataset folder / JSONL (omit for the hub)")
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=LIMIT, default=None, help="first N rows only")
    ap.add_argument("--strategy", choices=STRATEGIES, default="beam")
    ap.add_argument("--beams", type=int_in(1, 64), default=4)
    ap.add_argument("--n", type=int_in(1, 256), default=6, help="samples per image for bestofn / rerank")
    ap.add_argument("--temperature", type=float_in(0.0, 10.0, lo_open=True), default=0.8)
    ap.add_argument("--top-p", type=float_in(0.0, 1.0, lo_open=True), default=0.95)
    ap.add_argument("--grammar", action="store_true", help="grammar-constrained generation")
    ap.add_argument("--repair", action="store_true", help="repair candidates that fail the grammar")
    ap.add_argument("--grammar-name", choices=("gencad", "cadquery"), default="gencad",
                    help="gencad: GenCAD-Code's subset with arities (default); cadquery: the wider API")
    ap.add_argument("--k-retrieval", type=int_in(0, 256), default=0, help="nearest training programs added as candidates")
    ap.add_argument("--retrieval-data", help="training data for the retrieval index")
    ap.add_argument("--index", help="retrieval index file (.npz): loaded if present, else built and saved")
    ap.add_argument("--weights", help="rerank weights as JSON, e.g. '{\"silhouette\": 2}'")
    ap.add_argument("--refine", type=int_in(0, 10_000), default=0,
                    help="rerank: renders spent adjusting the chosen program's numbers against the image (decoding.refine)")
    ap.add_argument("--refine-objective", help="the render terms refinement maximises, as JSON weights "
                    "(default: the render terms of the rerank weights)")
    ap.add_argument("--primitives", action="store_true",
                    help="rerank: add the box, L or U section, cylinder and tube fit to the image and the profile "
                         "prisms read off it as candidates (decoding.primitives, decoding.prism)")
    ap.add_argument("--prisms", action="store_true",
                    help="rerank: add the three best caps' profile prisms (with and without their holes), the bosses "
                         "or pockets and the union of two prisms as candidates: the quick part of --primitives (decoding.prism)")
    ap.add_argument("--context-scale", type=float_in(0.0, 100.0, lo_open=True), default=None,
                    help="retrieval-conditioned model: rescale the programs it reads to this largest side (1.5: GenCAD's frame)")
    ap.add_argument("--template-bias", type=float_in(0.0, 1000.0), default=None,
                    help="retrieval-conditioned model: keep the nearest program's text, rewrite its numbers (decoding.template)")
    ap.add_argument("--context-k", type=int_in(0, 64), default=None,
                    help="retrieval-conditioned model: retrieved programs it edits (default: as trained; 0: its plain mode)")
    ap.add_argument("--copy-bias", type=float_in(-100.0, 100.0), default=0.0,
                    help="copy-head model: shift its copy gate towards copying retrieved tokens (> 0) while decoding")
    ap.add_argument("--workers", type=WORKERS, default=2, help="sandbox workers")
    ap.add_argument("--batch-size", type=int_in(1, 4096), default=16)
    ap.add_argument("--max-new-tokens", type=int_in(1, 8192), default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=SEED, default=0, help="sampling seed (same seed, same output)")
    ap.add_argument("--canonical-grid", type=_grid, default="256",
                    help="number grid of the model's canonical targets, for scoring retrieved programs ('none': 3 decimals)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.strategy != "retrieval":
        require_model_dir(args.model)
    if args.refine and args.strategy != "rerank":
        raise InputError(f"--refine adjusts the program chosen by rerank, not {args.strategy}: add --strategy rerank")
    for flag in ("primitives", "prisms"):
        if getattr(args, flag) and args.strategy != "rerank":
            raise InputError(f"--{flag} adds candidates to rerank, not to {args.strategy}: add --strategy rerank")
    check_output_file(args.out, args.data)
    weights = parse_weights(args.weights) if args.weights else {}
    objective = parse_objective(args.refine_objective) if args.refine_objective else None
    ds = load_gencad(args.data, split=args.split, limit=args.limit)
    cfg = DecodeConfig(strategy=args.strategy, num_beams=args.beams, n=args.n, temperature=args.temperature,
                       top_p=args.top_p, grammar=args.grammar, grammar_name=args.grammar_name, repair=args.repair, k_retrieval=args.k_retrieval,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, device=args.device,
                       seed=args.seed, canonical_grid=args.canonical_grid, refine_evaluations=args.refine,
                       refine_objective=objective, template_bias=args.template_bias, context_scale=args.context_scale,
                       copy_bias=args.copy_bias, context_k=args.context_k, primitives=args.primitives,
                       prisms=args.prisms)
    cfg.weights.update(weights)
    index = None
    own_index = saved_index(args.model)
    if not args.index and not args.retrieval_data and own_index:
        args.index = str(own_index)  # the index the model was trained with
    if cfg.strategy == "retrieval" or cfg.k_retrieval or args.index:
        if args.index and Path(args.index).exists():
            index = RetrievalIndex.load(args.index)
        elif args.retrieval_data:
            index = RetrievalIndex.build(args.retrieval_data)
            if args.index and is_main_process():  # one writer however many processes run
                index.save(args.index)
        else:
            print("error: retrieval needs --retrieval-data DIR (training data) or an existing --index FILE", file=sys.stderr)
            return 2
    weighs_critic = cfg.strategy == "rerank" and bool(cfg.weights.get(CRITIC))
    if weighs_critic and not (args.model and (Path(args.model) / CRITIC_FILE).is_file()):
        raise InputError(f"{args.model}: the rerank weights use the {CRITIC} term but the folder has no {CRITIC_FILE}; "
                         f"train one (python -m scripts.train_critic) or pass --weights '{{\"{CRITIC}\": 0}}'")
    model = tokenizer = processor = None
    if cfg.strategy != "retrieval":
        from sft.model import load_model

        config = json.loads((Path(args.model) / "config.json").read_text())  # checked before loading the weights
        problem = model_option_problem(cfg, config, index is not None)
        if problem:
            raise InputError(f"{args.model}: {problem}")

        # "auto" is this process's own accelerator when several processes run (accelerate launch)
        model, tokenizer, processor = load_model(args.model, state().device if args.device == "auto" else resolve_device(args.device))
    critic = saved_critic(args.model) if weighs_critic else None
    rows = [{"id": r["deepcad_id"], "image": r["image"]} for r in undecoded(ds)]
    # what makes a line: the model's files and the retrieval source, with the options and image
    context = fingerprint(files_fingerprint(args.model) if cfg.strategy != "retrieval" else None,
                          files_fingerprint(args.index if args.index and Path(args.index).exists() else args.retrieval_data)
                          if index is not None else None)
    if is_main_process():  # lines made from another image or with other options are decoded again
        fps = decode_fingerprints(rows, cfg, context)
        for path in [Path(args.out), *part_paths(Path(args.out))]:
            prune_stale(path, fps)
    state().wait_for_everyone()
    pool = SandboxPool(args.workers) if cfg.strategy in ("bestofn", "rerank") else None
    try:
        # each process decodes its share of the batches with its own sandbox pool; one output, in input order
        stats = combine_stats(run_sharded(rows, args.out, cfg.batch_size, lambda mine, part: predict(
            model, tokenizer, processor, mine, part, cfg, pool, index, context=context, critic=critic)))
    finally:
        if pool is not None:
            pool.close()
    if is_main_process():
        merge(Path(args.out), [str(r["id"]) for r in rows])  # input order, also after a resumed run
    if is_main_process():
        print(json.dumps({"n": len(rows), **stats, "kept": len(rows) - stats.get("decoded", 0), "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
