"""Preference pairs for DPO: ``python -m rl.pairs --model SFT_DIR --data TRAIN --k 8 --out PAIRS_DIR``.

Two separable steps, so sampling can run on a GPU machine and scoring here:

1. sample (``--sample-only`` stops after it): K programs per training image from the SFT model,
   appended to ``OUT/samples.jsonl`` (``{"id", "candidates": [{"code", "logprob", "source"}]}``),
   resumable; ``--beam B`` adds the model's beam-B program (source ``beam``, the output that
   beam-search evaluation scores), so a pair can reject exactly what the model writes today;
2. score and pair (``--samples FILE`` starts here): every candidate gets ``reward.score`` against
   the ground-truth program; each image's rewards go to ``OUT/scored.jsonl`` as it finishes
   (resumable). Pairing then reads them: chosen is the best (``--chosen-from`` limits it to some
   sources, e.g. the model's own programs rather than retrieved training programs); rejected are
   clearly worse (reward margin at least ``--margin``): a non-executable one first when there is
   one (unless ``--executed-only``, which keeps only pairs of two executing programs, so the pairs
   teach geometry rather than validity), then the beam program, then the rest, worst first; images
   whose candidates are all near-perfect or all failing are skipped (``--include-reference``
   scores the ground truth with the samples, so a weak model's failing samples still pair against
   it). The pairs are saved as a ``datasets`` dataset in ``OUT/pairs`` with the image
   (``image_ref`` path or id, and ``image_bytes`` when the source embeds it), both programs, both
   rewards and both sources.

Both files resume only rows made from the same inputs and options (``cad.io`` fingerprints: the
model's files, the sampling options and the image; the candidates and the ground truth), so a
changed option redoes its rows instead of serving stale ones. Pairing options (``--margin``,
``--chosen-from``, ``--executed-only``) re-pair the scored rows without executing anything again.

Under ``accelerate launch`` the processes share both steps' rows (``cad.distributed``) and merge
one ``samples.jsonl`` and one ``scored.jsonl`` in input order.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cad.data import DatasetUnavailable, load_gencad, undecoded
from cad.cli import LIMIT, SEED, WORKERS, ArgumentParser, float_in, guarded, int_in
from cad.distributed import is_main_process, run_sharded, state
from cad.io import FP_KEY, files_fingerprint, fingerprint, prune_stale, require_model_dir
from cad.programs import structure
from cad.sandbox import SandboxPool
from reward.score import Reward, score


def sample(model_dir: str, rows: list[dict], k: int, out: Path, batch_size: int = 8, max_new_tokens: int = 512,
           temperature: float = 1.0, top_p: float = 0.95, seed: int = 0, k_retrieved: int = 2, beam: int = 0) -> Path:
    """K sampled programs per image, appended to ``out/samples.jsonl``. Each batch is seeded by
    ``seed`` and its ids; under ``accelerate launch`` the processes share the batches
    (``cad.distributed``), so any number of processes writes the same samples. A
    retrieval-conditioned model samples given the programs of the nearest training images (kept
    as ``retrieved``, the context DPO scores the pair in) and those ``k_retrieved`` programs are
    candidates too. ``beam`` > 0 adds the beam-search program (in the same context) as a candidate."""
    from cad.data import to_image
    from decoding.predict import DecodeConfig, Predictor, decode_fingerprints
    from sft.model import load_model

    path = out / "samples.jsonl"
    model, tok, proc = load_model(model_dir, state().device)
    index = None
    if getattr(model.config, "retrieval_layers", 0):  # samples given the k nearest training programs, which join them
        from decoding.retrieval import load_saved_index

        index = load_saved_index(model_dir)
    cfg = DecodeConfig(strategy="bestofn", n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                       edit_mode="sample", k_retrieval=k_retrieved if index is not None else 0)
    predictor = Predictor(model, tok, proc, cfg, index=index)  # generation only: no sandbox needed here
    beamer = Predictor(model, tok, proc, DecodeConfig(strategy="beam", num_beams=beam, max_new_tokens=max_new_tokens),
                       index=index) if beam else None
    # the decoding options and image of each row, plus the model's files and what this step adds
    fps = decode_fingerprints(rows, cfg, fingerprint("pairs-sample", files_fingerprint(model_dir), batch_size, seed, beam))
    if is_main_process():
        prune_stale(path, fps)  # rows another model, option or image made go
    state().wait_for_everyone()
    unreadable: list[str] = []

    def work(todo: list[dict], part: Path) -> None:
        with part.open("a") as f:
            for start in tqdm(range(0, len(todo), batch_size), desc="sample", unit="batch", disable=not is_main_process()):
                chunk, images = [], []
                for r in todo[start:start + batch_size]:  # an unreadable image costs its row, named and counted
                    try:
                        images.append(to_image(r["image"]).convert("RGB"))
                        chunk.append(r)
                    except Exception as exc:  # noqa: BLE001
                        unreadable.append(f"{r['id']}: {type(exc).__name__}: {exc}")
                torch.manual_seed(seed + zlib.crc32("\n".join(str(r["id"]) for r in chunk).encode()))
                # training images: the index holds them, so exclude each one's own row and program
                cands = predictor.generate(images, [str(r["id"]) for r in chunk]) if images else []
                contexts = predictor.contexts if index is not None else [[] for _ in chunk]
                if beamer is not None and images:  # after sampling, so the samples are those of a run without it
                    for cs, extra in zip(cands, beamer.generate(images, [str(r["id"]) for r in chunk])):
                        cs.extend(extra)
                    if index is not None and beamer.contexts != contexts:
                        raise RuntimeError("the beam program was decoded in another retrieved context than the samples")
                for r, cs, ctx in zip(chunk, cands, contexts):
                    f.write(json.dumps({"id": r["id"], "retrieved": ctx, "candidates": [
                        {"code": c.code, "logprob": round(c.logprob, 4), "source": c.source} for c in cs],
                        FP_KEY: fps[str(r["id"])]}) + "\n")
                f.flush()

    run_sharded(rows, path, batch_size, work, fingerprints=fps)
    if unreadable:
        print(f"warning: {len(unreadable)} unreadable images skipped (first: {unreadable[0]})", file=sys.stderr)
    return path


def make_pairs(candidates: list[str], rewards: list, margin: float, perfect: float = 0.95, max_pairs: int = 2,
               sources: list[str] | None = None, chosen_from: set[str] | None = None,
               executed_only: bool = False) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs for one image, or [] when it teaches nothing. ``sources``
    names each candidate's origin; ``chosen_from`` limits the chosen one to those sources; a
    ``beam`` candidate clearly worse than the chosen is rejected before the other executing ones;
    ``executed_only`` drops the pair against a non-executable program."""
    executed = [r.executed for r in rewards]
    if not any(executed):
        return []  # all failing
    if all(r.executed and r.iou >= perfect for r in rewards):
        return []  # all near-perfect
    sources = sources or ["sample"] * len(candidates)
    totals = np.array([r.total for r in rewards])
    allowed = [i for i in range(len(candidates)) if chosen_from is None or sources[i] in chosen_from]
    if not allowed:
        return []
    best = max(allowed, key=lambda i: (totals[i], -i))
    if not rewards[best].executed:
        return []  # every allowed candidate fails: no program to prefer
    pairs = []
    failing = [i for i, r in enumerate(rewards) if not r.executed and totals[best] - totals[i] >= margin]
    if failing and not executed_only:
        pairs.append((best, min(failing, key=lambda i: totals[i])))
    worse = [int(i) for i in np.argsort(totals, kind="stable") if totals[best] - totals[i] >= margin and rewards[i].executed
             and candidates[i] != candidates[best]]
    worse.sort(key=lambda i: sources[i] != "beam")  # the beam program first (a stable sort keeps worst-first otherwise)
    for i in worse:
        if len(pairs) >= max_pairs:
            break
        pairs.append((best, int(i)))
    return pairs


def score_and_pair(samples: Path, gt: dict[str, dict], out: Path, margin: float, workers: int = 2,
                   include_reference: bool = False, chosen_from: set[str] | None = None,
                   executed_only: bool = False) -> dict:
    """Score every sampled image's candidates against its ground truth (the processes share the
    images, each with its own sandbox pool), keeping every candidate's reward in ``scored.jsonl``;
    the main process then pairs them with the pairing options and builds the dataset, so another
    margin or pairing option re-pairs without executing anything again."""
    scored_path = out / "scored.jsonl"
    lines = [item for item in (json.loads(x) for x in samples.read_text().splitlines() if x.strip()) if item["id"] in gt]
    fps = {str(item["id"]): fingerprint("pairs-score", include_reference, item["candidates"], item.get("retrieved", []),
                                        gt[item["id"]]["cadquery"]) for item in lines}
    if is_main_process():
        prune_stale(scored_path, fps)
    state().wait_for_everyone()

    def work(todo: list[dict], part: Path) -> None:
        with SandboxPool(workers) as pool, part.open("a") as f:
            for item in tqdm(todo, desc="score", unit="img", disable=not is_main_process()):
                codes = [c["code"] for c in item["candidates"]]
                sources = [c.get("source", "sample") for c in item["candidates"]]
                if include_reference:  # the ground truth as a candidate: a chosen program even when no sample runs
                    codes.append(gt[item["id"]]["cadquery"])
                    sources.append("reference")
                row = {"id": item["id"], "retrieved": item.get("retrieved", []), FP_KEY: fps[str(item["id"])]}
                try:
                    rewards = score(codes, pool, reference=gt[item["id"]]["cadquery"])
                except ValueError as exc:  # the ground truth itself fails (e.g. a timeout): no pair, and why
                    f.write(json.dumps({**row, "candidates": [], "error": str(exc)}) + "\n")
                    print(f"warning: {item['id']}: {exc}", file=sys.stderr)
                    continue
                f.write(json.dumps({**row, "candidates": [
                    {"code": c, "source": src, "total": r.total, "executed": r.executed, "grammatical": r.grammatical,
                     "iou": r.iou} for c, src, r in zip(codes, sources, rewards)]}) + "\n")
                f.flush()

    run_sharded(lines, scored_path, 1, work, fingerprints=fps)
    if not is_main_process():
        return {}
    return build_dataset(scored_path, gt, out / "pairs", fps, margin, chosen_from, executed_only)


def build_dataset(scored_path: Path, gt: dict[str, dict], target: Path, fingerprints: dict[str, str] | None = None,
                  margin: float = 1.0, chosen_from: set[str] | None = None, executed_only: bool = False) -> dict:
    """Pair the scored candidates of ``scored_path`` (``make_pairs`` with these options) into a
    ``datasets`` dataset at ``target``, and return its statistics; with ``fingerprints``, only the
    rows of those ids scored from the same candidates (this run's)."""
    import datasets

    rows = {k: [] for k in ("id", "image_ref", "image_bytes", "retrieved", "chosen", "rejected", "chosen_reward",
                            "rejected_reward", "chosen_iou", "rejected_iou", "rejected_executed", "chosen_source",
                            "rejected_source")}
    images = 0
    for line in scored_path.read_text().splitlines():
        item = json.loads(line)
        if item["id"] not in gt or (fingerprints is not None and item.get(FP_KEY) != fingerprints.get(str(item["id"]))):
            continue  # another run's row (another limit or other candidates): not this dataset's
        images += 1
        cands = item["candidates"]
        rewards = [Reward(c["total"], c["executed"], c["grammatical"], c["iou"]) for c in cands]
        codes, sources = [c["code"] for c in cands], [c["source"] for c in cands]
        for a, b in make_pairs(codes, rewards, margin, sources=sources, chosen_from=chosen_from, executed_only=executed_only):
            rows["id"].append(item["id"])
            rows["image_ref"].append(gt[item["id"]]["image_ref"])
            rows["image_bytes"].append(gt[item["id"]].get("image_bytes"))
            rows["retrieved"].append(item.get("retrieved", []))
            for key, i in (("chosen", a), ("rejected", b)):
                rows[key].append(codes[i])
                rows[f"{key}_reward"].append(rewards[i].total)
                rows[f"{key}_iou"].append(rewards[i].iou)
                rows[f"{key}_source"].append(sources[i])
            rows["rejected_executed"].append(rewards[b].executed)
    n = len(rows["id"])
    if target.exists():
        shutil.rmtree(target)
    if n:  # no dataset at all when no image gave a pair (an empty one does not load back)
        datasets.Dataset.from_dict(rows).save_to_disk(str(target))
    margins = np.array(rows["chosen_reward"]) - np.array(rows["rejected_reward"]) if n else np.zeros(0)
    mean_iou = lambda key: round(float(np.mean([v or 0.0 for v in rows[key]])), 4) if n else None  # noqa: E731
    return {"images": images, "pairs": n, "pairs_per_image": round(n / max(images, 1), 3),
            "mean_margin": round(float(margins.mean()), 4) if n else None,
            "rejected_failing_share": round(1.0 - float(np.mean(rows["rejected_executed"])), 4) if n else None,
            "pairs_differing_only_in_numbers": sum(structure(a) == structure(b)
                                                   for a, b in zip(rows["chosen"], rows["rejected"])),
            "chosen_sources": dict(Counter(rows["chosen_source"])), "rejected_sources": dict(Counter(rows["rejected_source"])),
            "mean_chosen_iou": mean_iou("chosen_iou"), "mean_rejected_iou": mean_iou("rejected_iou"),
            "out": str(target) if n else None}


def ground_truth(ds, source: str) -> dict[str, dict]:
    """Program and image reference (path or ``source#id``, plus embedded bytes) per id."""
    return {r["deepcad_id"]: {"cadquery": r["cadquery"], "image_ref": r["image"].get("path") or f"{source}#{r['deepcad_id']}",
                              "image_bytes": r["image"].get("bytes")} for r in ds}


def build_pairs(data: str, out: Path, model: str | None = None, samples: str | None = None, k: int = 8,
                margin: float = 1.0, limit: int | None = None, split: str | None = None, sample_only: bool = False,
                include_reference: bool = False, workers: int = 2, max_new_tokens: int = 512, seed: int = 0,
                batch_size: int = 8, beam: int = 0, chosen_from: set[str] | None = None, executed_only: bool = False) -> dict:
    """Both steps (or one of them) on ``data``; returns the pair statistics (or the samples path)."""
    out.mkdir(parents=True, exist_ok=True)
    ds = undecoded(load_gencad(data, split=split, limit=limit))
    gt = ground_truth(ds, data)
    if samples is None:
        if not model:
            raise ValueError("pass a model to sample from, or an existing samples file")
        rows = [{"id": r["deepcad_id"], "image": r["image"]} for r in ds]
        samples_path = sample(model, rows, k, out, batch_size, max_new_tokens, seed=seed, beam=beam)
    else:
        samples_path = Path(samples)
    if sample_only:
        return {"samples": str(samples_path)}
    return score_and_pair(samples_path, gt, out, margin, workers, include_reference, chosen_from, executed_only)


@guarded("rerun the same command to resume; sampled and scored ids are kept")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m rl.pairs", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="SFT model directory (for sampling)")
    ap.add_argument("--data", required=True, help="training data with ground-truth programs")
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=LIMIT, default=None)
    ap.add_argument("--k", type=int_in(1, 256), default=8)
    ap.add_argument("--margin", type=float_in(0.0, 1000.0), default=1.0, help="minimum reward gap between chosen and rejected")
    ap.add_argument("--samples", help="an existing samples.jsonl: skip sampling")
    ap.add_argument("--sample-only", action="store_true")
    ap.add_argument("--include-reference", action="store_true",
                    help="score the ground-truth program with the samples, so it can be chosen (a weak model's "
                         "images then still give pairs: ground truth over failing samples)")
    ap.add_argument("--beam", type=int_in(0, 64), default=0,
                    help="also decode each image with beam search of this width and add that program (source 'beam')")
    ap.add_argument("--chosen-from", type=lambda v: set(filter(None, v.split(","))) or None, default=None,
                    help="comma-separated sources the chosen program may come from (sample, beam, edit:N, retrieval, "
                         "reference); default any")
    ap.add_argument("--executed-only", action="store_true",
                    help="only pairs of two executing programs (no pair against a program that fails)")
    ap.add_argument("--max-new-tokens", type=int_in(1, 8192), default=512)
    ap.add_argument("--workers", type=WORKERS, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=SEED, default=0, help="sampling seed (same seed, same samples)")
    ap.add_argument("--batch-size", type=int_in(1, 4096), default=8, help="images per sampling batch")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if not args.samples and not args.model:
        print("error: pass --model to sample, or --samples FILE to score existing samples", file=sys.stderr)
        return 2
    if not args.samples:
        require_model_dir(args.model)
    try:
        stats = build_pairs(args.data, Path(args.out), args.model, args.samples, args.k, args.margin, args.limit,
                            args.split, args.sample_only, args.include_reference, args.workers, args.max_new_tokens,
                            args.seed, args.batch_size, args.beam, args.chosen_from, args.executed_only)
    except DatasetUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_main_process():  # one report however many processes ran
        print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
