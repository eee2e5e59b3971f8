"""Batched program prediction from images, written as ``{"id", "code", ...}`` JSONL, resumable.

Strategies (flags combine):

* ``greedy``, ``beam``: one program per image (beam 4 is the study's baseline).
* ``grammar``: beam search constrained by a grammar (``decoding.constrained``; ``grammar_name``
  ``gencad``, GenCAD-Code's typed subset, or ``cadquery``, the wider API), then
  ``decoding.grammar.repair`` for programs cut by the length limit.
* ``bestofn``: sample N programs per image, execute them all in the sandbox, keep the executable
  ones and return the most likely; the most likely overall when none executes.
* ``rerank``: best-of-N, then choose by ``decoding.rerank.combined_score`` (heuristics plus
  render-and-compare against the input image; no ground truth).
* ``retrieval``: the program of the nearest training image (``decoding.retrieval``).

``refine_evaluations > 0`` (rerank) then adjusts the chosen program's numbers by a short search
that re-renders it against the input (``decoding.refine``).

``k_retrieval > 0`` adds the k nearest training programs to the candidates of best-of-N and
rerank, scored by the model's own log-probability of them; ``grammar=True`` constrains sampling
too; ``repair=True`` repairs every candidate.
Execution and scoring of one batch overlap with generation of the next (a worker thread).
"""
from __future__ import annotations

import json
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LogitsProcessorList
from tqdm import tqdm

from cad.data import to_image
from cad.io import done_ids
from cad.sandbox import ExecOptions, SandboxPool
from decoding.grammar import GRAMMARS
from decoding.grammar import repair as repair_program
from decoding.refine import refine
from decoding.rerank import DEFAULT_WEIGHTS, Candidate, combined_score, needs_render
from sft.tokenizer import canonical_target

STRATEGIES = ("greedy", "beam", "grammar", "bestofn", "rerank", "retrieval")
DECODING_VERSION = 2  # bump when a change gives different outputs for the same DecodeConfig (result caches key on it)


@dataclass
class DecodeConfig:
    strategy: str = "beam"
    num_beams: int = 4
    n: int = 6
    temperature: float = 0.8
    top_p: float = 0.95
    grammar: bool = False
    grammar_name: str = "gencad"  # decoding.grammar.GRAMMARS: "gencad" (typed, GenCAD's subset) or "cadquery"
    repair: bool = False
    k_retrieval: int = 0
    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    batch_size: int = 16
    max_new_tokens: int = 512
    timeout: float = 5.0
    device: str = "auto"
    seed: int = 0
    refine_evaluations: int = 0  # rerank: renders spent refining the chosen program's numbers (decoding.refine)
    canonical_grid: int | None = 256  # the canonical form the model was trained on (None: 3 decimals only)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.strategy == "grammar":
            self.grammar = self.repair = True
        if self.grammar_name not in GRAMMARS:
            raise ValueError(f"unknown grammar {self.grammar_name!r}; choose from {sorted(GRAMMARS)}")


def parse_grid(text: str | int | None) -> int | None:
    """A canonical number grid from the command line: an integer, or 'none' for 3 decimals only."""
    return None if text is None or str(text).lower() in ("none", "null", "0") else int(text)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Predictor:
    """Holds the model, tokenizer, processor, sandbox and optional retrieval index."""

    def __init__(self, model, tokenizer, processor, cfg: DecodeConfig, pool: SandboxPool | None = None, index=None):
        self.model, self.tok, self.proc, self.cfg = model, tokenizer, processor, cfg
        self.pool, self.index = pool, index
        self.grammar_processor = None
        if cfg.grammar and model is not None:
            from decoding.constrained import GrammarLogitsProcessor

            self.grammar_processor = GrammarLogitsProcessor(tokenizer, GRAMMARS[cfg.grammar_name])
        if (cfg.strategy == "retrieval" or cfg.k_retrieval) and index is None:
            raise ValueError("retrieval needs an index: pass --index or --retrieval-data")
        self.select_seconds = 0.0  # execution and scoring of candidates, summed over images

    @property
    def renders(self) -> bool:
        return self.cfg.strategy == "rerank" and needs_render(self.cfg.weights)

    def generate(self, images) -> list[list[Candidate]]:
        """Candidates per image, before execution."""
        cfg = self.cfg
        out: list[list[Candidate]] = [[] for _ in images]
        if cfg.strategy != "retrieval":
            device = next(self.model.parameters()).device
            px = self.proc(images).to(device)
            sampling = cfg.strategy in ("bestofn", "rerank")
            kwargs = ({"do_sample": True, "num_return_sequences": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p}
                      if sampling else {"num_beams": 1 if cfg.strategy == "greedy" else cfg.num_beams})
            procs = None
            if self.grammar_processor is not None:
                self.grammar_processor.reset()
                procs = LogitsProcessorList([self.grammar_processor])
            gen = self.model.generate_programs(px, max_new_tokens=cfg.max_new_tokens, logits_processor=procs, **kwargs)
            texts = self.tok.batch_decode(gen.sequences, skip_special_tokens=True)
            per = len(texts) // len(images)
            for i, (text, lp, seq) in enumerate(zip(texts, gen.logprobs.tolist(), gen.sequences)):
                n_tok = int((seq != self.tok.pad_token_id).sum())
                out[i // per].append(Candidate(text, lp, n_tok, "sample" if sampling else cfg.strategy))
        k = 1 if cfg.strategy == "retrieval" else cfg.k_retrieval
        if k:
            for i, hits in enumerate(self.index.query(images, k)):
                out[i].extend(Candidate(code, 0.0, 1, "retrieval", scores={"similarity": sim}) for code, sim in hits)
            if cfg.strategy != "retrieval":
                self.score_retrieved(px, out)
        if cfg.repair:
            for cands in out:
                for c in cands:
                    if c.source != "retrieval":  # training programs need no repair
                        c.code = repair_program(c.code, cfg.grammar_name).code
        return out

    def score_retrieved(self, px: torch.Tensor, out: list[list[Candidate]]) -> None:
        """Give retrieved programs the model's own log-probability, so they rank with the samples."""
        retrieved = [(i, c) for i, cands in enumerate(out) for c in cands if c.source == "retrieval"]
        if not retrieved:
            return
        seqs = [self.tok(canonical_target(c.code, self.cfg.canonical_grid), add_special_tokens=False)["input_ids"]
                + [self.tok.eos_token_id] for _, c in retrieved]
        logprobs = self.model.score_sequences(px[[i for i, _ in retrieved]], seqs).tolist()
        for (_, c), lp, seq in zip(retrieved, logprobs, seqs):
            c.logprob, c.tokens = lp, len(seq)

    def select(self, cands: list[Candidate], image) -> tuple[Candidate, dict]:
        """Execute (when the strategy needs it) and choose one candidate."""
        t0 = time.perf_counter()
        try:
            return self._select(cands, image)
        finally:
            self.select_seconds += time.perf_counter() - t0

    def _select(self, cands: list[Candidate], image) -> tuple[Candidate, dict]:
        cfg = self.cfg
        info = {"n_candidates": len(cands)}
        if cfg.strategy not in ("bestofn", "rerank") or len(cands) == 1:
            return cands[0], info
        if self.pool is None:
            raise ValueError(f"strategy {cfg.strategy} executes candidates: pass a SandboxPool")
        opts = ExecOptions(timeout=cfg.timeout, want_geometry=self.renders)
        for c, r in zip(cands, self.pool.imap([c.code for c in cands], opts)):
            c.result = r
        executable = [c for c in cands if c.result.executable]
        info["n_executable"] = len(executable)
        if not executable:
            return max(cands, key=lambda c: c.logprob if c.source != "retrieval" else float("-inf")), info
        if cfg.strategy == "bestofn":
            model_made = [c for c in executable if c.source != "retrieval"] or executable
            return max(model_made, key=lambda c: c.logprob), info
        for c in executable:
            combined_score(c, image, cfg.weights)
        chosen = max(executable, key=lambda c: c.total)
        if cfg.refine_evaluations and image is not None:
            r = refine(chosen.code, image, self.pool, cfg.refine_evaluations, cfg.timeout)
            info["refine"] = {"from": round(r.start_score, 4), "to": round(r.score, 4), "renders": r.evaluations}
            chosen.code = r.code
        return chosen, info


def predict(model, tokenizer, processor, rows: list[dict], out_path: str | Path, cfg: DecodeConfig,
            pool: SandboxPool | None = None, index=None, progress: bool = True) -> dict:
    """Decode every row (``{"id", "image"}``) not yet in ``out_path``; append results in input order."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    todo = [r for r in rows if str(r["id"]) not in done]
    predictor = Predictor(model, tokenizer, processor, cfg, pool, index)
    t0 = time.perf_counter()
    unreadable = 0

    def finish(batch: list[dict], images: list, cands: list[list[Candidate]]) -> list[dict]:
        lines = []
        for r, img, cs in zip(batch, images, cands):
            chosen, info = predictor.select(cs, img)
            lines.append({"id": str(r["id"]), "code": chosen.code, "strategy": cfg.strategy,
                          "logprob": round(chosen.logprob, 4), "tokens": chosen.tokens, "source": chosen.source,
                          **info, **({"scores": {k: round(v, 4) for k, v in chosen.scores.items()}} if chosen.scores else {})})
        return lines

    with out.open("a") as f, ThreadPoolExecutor(1) as worker, tqdm(
            total=len(rows), initial=len(rows) - len(todo), desc=f"decode {cfg.strategy}", unit="img", disable=not progress) as bar:
        pending = None
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start:start + cfg.batch_size]
            images, keep = [], []
            for r in chunk:
                try:
                    images.append(to_image(r["image"]).convert("RGB"))
                    keep.append(r)
                except Exception as exc:  # noqa: BLE001 - reported per id, never silently dropped
                    unreadable += 1
                    f.write(json.dumps({"id": str(r["id"]), "code": "", "strategy": cfg.strategy,
                                        "error": f"unreadable image: {type(exc).__name__}: {exc}"}) + "\n")
            # sampling is seeded per batch from the config seed and the batch's ids: same config, same output
            torch.manual_seed(cfg.seed + zlib.crc32("\n".join(str(r["id"]) for r in keep).encode()))
            cands = predictor.generate(images) if keep else []
            if pending is not None:  # execution of the previous batch ran while this one generated
                for line in pending.result():
                    f.write(json.dumps(line) + "\n")
                f.flush()
            pending = worker.submit(finish, keep, images, cands)
            bar.update(len(chunk))
        if pending is not None:
            for line in pending.result():
                f.write(json.dumps(line) + "\n")
    seconds = time.perf_counter() - t0
    return {"decoded": len(todo), "unreadable": unreadable, "seconds": round(seconds, 2),
            "seconds_per_image": round(seconds / max(len(todo), 1), 4),
            "select_seconds": round(predictor.select_seconds, 3)}
