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
rerank, scored by the model's own log-probability of them; ``primitives=True`` adds to rerank's
candidates a box, an L or U section, a cylinder and a tube fit to the input image (``decoding.primitives``)
and the profile prisms read off it (``decoding.prism``); ``prisms=True`` adds the three best caps' prisms,
the bosses or pockets and the union of two prisms (``fit_prisms(quick=True)``: a fraction of the fits' cost);
``grammar=True`` constrains sampling too; ``repair=True`` repairs every candidate.
Execution and scoring of one batch overlap with generation of the next (a worker thread), and the
primitives and prisms are fit to a batch's images while the model generates (another thread; on
a CPU, the model then computes on one thread fewer, leaving a core to the fits).
"""
from __future__ import annotations

import json
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import LogitsProcessorList
from tqdm import tqdm

from cad.data import to_image
from cad.io import FP_KEY, done_rows, fingerprint, prune_stale
from cad.programs import normalize_scale
from cad.sandbox import ExecOptions, SandboxPool
from cad.render import Frame
from decoding.grammar import GRAMMARS
from decoding.grammar import repair as repair_program
from decoding.primitives import fit_primitives
from decoding.prism import framed_prisms
from decoding.refine import ALL_GROUPS, DEFAULT_GROUPS, refine
from decoding.rerank import (CRITIC, DEFAULT_WEIGHTS, RENDER_TERMS, Candidate, RenderTarget, check_objective, combined_score,
                             needs_render)
from reward.critic import FILE as CRITIC_FILE
from sft.tokenizer import canonical_target

STRATEGIES = ("greedy", "beam", "grammar", "bestofn", "rerank", "retrieval")
NOT_MODEL = ("retrieval", "primitive")  # candidate sources the model did not write
DECODING_VERSION = 43  # bump when a change gives different outputs for the same DecodeConfig (result caches key on it)


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
    refine_groups: list = field(default_factory=lambda: list(DEFAULT_GROUPS))  # the number groups refinement may scale (decoding.refine.ALL_GROUPS)
    refine_objective: dict | None = None  # the render terms refinement maximises, weighted (None: the render terms of
    # ``weights``, the reranker's own reward)
    canonical_grid: int | None = 256  # the canonical form the model was trained on (None: 3 decimals only)
    context_k: int | None = None  # retrieval-conditioned model: programs it edits (None: as trained; 0: none, the plain mode)
    context_scale: float | None = None  # retrieval-conditioned model: rescale the programs it reads so that their
    # largest side is this (cad.programs.normalize_scale); None: the model's program_scale (as trained)
    template_bias: float | None = None  # retrieval-conditioned model: keep the nearest program's text and rewrite
    # only its numbers, the template's own number raised by this much (decoding.template); None: write freely
    copy_bias: float = 0.0  # copy-head model: subtracted from the copy gate's vocabulary logit while decoding edits
    # (> 0: copy the retrieved programs' tokens more than as trained; sft.model.CopyHead)
    primitives: bool = False  # rerank: add the box, section, cylinder, tube and profile prisms fit to the input image (decoding.primitives, decoding.prism)
    prisms: bool = False  # rerank: add the three best caps' profile prisms, with and without their holes, the
    # bosses or pockets and the union of two prisms (decoding.prism's quick subset; primitives include it)
    edit_mode: str = "neighbours"  # best-of-N of a retrieval-conditioned model: "neighbours" (one greedy edit per
    # neighbour set) or "sample" (N samples given the k nearest: one context per image, what preference pairs need)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose from {STRATEGIES}")
        if self.strategy == "grammar":
            self.grammar = self.repair = True
        if self.edit_mode not in ("neighbours", "sample"):
            raise ValueError(f"unknown edit_mode {self.edit_mode!r}; choose 'neighbours' or 'sample'")
        if self.grammar_name not in GRAMMARS:
            raise ValueError(f"unknown grammar {self.grammar_name!r}; choose from {sorted(GRAMMARS)}")
        self.refine_groups = list(self.refine_groups)  # a list, as JSON gives it back (records compare options)
        if not self.refine_groups or set(self.refine_groups) - set(ALL_GROUPS):
            raise ValueError(f"refine_groups {list(self.refine_groups)}: choose one or more of {ALL_GROUPS}")
        if self.refine_objective is not None:
            check_objective(self.refine_objective)
        for name in ("primitives", "prisms"):
            if getattr(self, name) and self.strategy != "rerank":
                raise ValueError(f"{name} are candidates of rerank, not of {self.strategy}: use strategy rerank")


def parse_grid(text: str | int | None) -> int | None:
    """A canonical number grid from the command line: an integer, or 'none' for 3 decimals only."""
    return None if text is None or str(text).lower() in ("none", "null", "0") else int(text)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_option_problem(cfg: DecodeConfig, model_config: dict | None, has_index: bool) -> str | None:
    """Why ``cfg`` cannot decode with a model of this ``config.json`` (None: no model), or None;
    the decoding CLI asks before it loads the weights, ``Predictor`` when it is built."""
    conditioned = bool(model_config and model_config.get("retrieval_layers"))
    if (cfg.strategy == "retrieval" or cfg.k_retrieval or (conditioned and cfg.context_k != 0)) and not has_index:
        return "retrieval needs an index: pass --index FILE or --retrieval-data DIR (the training data)" + (
            "; this model edits retrieved programs: pass the index it was trained with (a run folder's "
            "retrieval_index.npz), or --context-k 0 for its plain mode" if conditioned else "")
    if cfg.copy_bias and not (model_config and model_config.get("copy_head")):
        return (f"copy_bias (--copy-bias) {cfg.copy_bias} needs a retrieval-conditioned model with a copy head "
                "(copy_head: true); leave it out for this model")
    return None


@contextmanager
def cpu_threads_but_one(active: bool = True):
    """Inside the block (when ``active``), torch computes on one CPU thread fewer (at least one),
    leaving a core to work that runs beside it."""
    threads = torch.get_num_threads()
    if not active or threads == 1:
        yield
        return
    torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Predictor:
    """Holds the model, tokenizer, processor, sandbox and optional retrieval index."""

    def __init__(self, model, tokenizer, processor, cfg: DecodeConfig, pool: SandboxPool | None = None, index=None,
                 retrieved_logprobs: bool | None = None, critic=None):
        self.model, self.tok, self.proc, self.cfg = model, tokenizer, processor, cfg
        if cfg.strategy == "rerank" and cfg.weights.get(CRITIC) and critic is None:
            raise ValueError(f"the rerank weights give the {CRITIC} term weight {cfg.weights[CRITIC]}: pass the model "
                             f"folder's {CRITIC_FILE} (python -m scripts.train_critic), or weigh it 0")
        self.critic = critic if cfg.weights.get(CRITIC) else None
        # the model's log-probability of each retrieved program: what best-of-N ranks by; reranking
        # needs it only when its weights use it (unscored programs keep a NaN log-probability)
        self.retrieved_logprobs = (cfg.strategy != "rerank" or bool(cfg.weights.get("logprob"))) \
            if retrieved_logprobs is None else retrieved_logprobs
        self.pool, self.index = pool, index
        self.grammar_processor = None
        if cfg.grammar and model is not None:
            from decoding.constrained import GrammarLogitsProcessor

            self.grammar_processor = GrammarLogitsProcessor(tokenizer, GRAMMARS[cfg.grammar_name])
        problem = model_option_problem(cfg, model.config.to_dict() if model is not None else None, index is not None)
        if problem:
            raise ValueError(problem)
        self.select_seconds = 0.0  # execution and scoring of candidates, summed over images
        self._token_cache: dict[int, tuple[str, list[int]]] = {}
        self._numbers: torch.Tensor | None = None  # template decoding: which token ids are numbers
        # the size the model reads and writes programs at: the config's, else the one it was trained with
        self.scale = cfg.context_scale or (getattr(model.config, "program_scale", None) if model is not None else None)
        self.contexts: list[list[str]] = []  # per image of the last batch: the retrieved programs its model candidates edit

    @property
    def render_terms(self) -> dict[str, float]:
        """The render terms of the rerank weights (the silhouette IoU when they have none)."""
        return {t: w for t, w in self.cfg.weights.items() if t in RENDER_TERMS and w} or {"silhouette": 1.0}

    @property
    def refine_objective(self) -> dict[str, float]:
        """What refinement maximises: the config's objective, else the reranker's render terms."""
        return dict(self.cfg.refine_objective or self.render_terms)

    @property
    def renders(self) -> bool:
        return self.cfg.strategy == "rerank" and needs_render(self.cfg.weights)

    @property
    def conditioned(self) -> bool:
        """The model edits retrieved programs (``sft/model.py``, retrieval-conditioned mode)."""
        return self.model is not None and bool(getattr(self.model.config, "retrieval_layers", 0))

    @property
    def context_k(self) -> int:
        """How many retrieved programs each edit reads: the config's ``context_k``, else as trained."""
        return int(getattr(self.model.config, "retrieval_k", 1)) if self.cfg.context_k is None else self.cfg.context_k

    def neighbour_sets(self, hits: list[list[tuple[str, float]]], count: int) -> list[list[list[str]]]:
        """Per image, ``count`` sets of retrieved programs to condition on: set j holds the
        model's k neighbours starting at the j-th nearest (wrapping around a short list), rescaled
        to the model's program scale when it has one (``cad.programs.normalize_scale``)."""
        k = self.context_k
        if k <= 0:
            return [[[] for _ in range(count)] for _ in hits]
        sets = []
        for h in hits:
            codes = [c for c, _ in h][: count + k - 1] or [""]  # the ones the sets below read
            if self.scale:
                codes = [normalize_scale(c, self.scale) if c else c for c in codes]
            sets.append([[codes[(j + i) % len(codes)] for i in range(min(k, len(codes)))] for j in range(count)])
        return sets

    def retrieved_inputs(self, sets: list[list[str]], device) -> dict:
        """``retrieved_ids`` / ``retrieved_attention_mask`` for one set of programs per row."""
        from sft.data import RetrievalSpec, pack_retrieved

        spec = RetrievalSpec(1, 0.0, self.tok.eos_token_id, self.tok.pad_token_id, self.model.config.max_retrieved_length)
        toks = [[self._tokens(c) for c in codes if c] for codes in sets]
        return {k: v.to(device) for k, v in pack_retrieved(toks, spec).items()}

    def _tokens(self, code: str) -> list[int]:
        from sft.data import program_tokens

        key = zlib.crc32(code.encode())
        hit = self._token_cache.get(key)
        if hit is None or hit[0] != code:
            hit = self._token_cache[key] = (code, program_tokens(self.tok, canonical_target(code, self.cfg.canonical_grid), False))
        return hit[1]

    def generate(self, images, ids: list[str] | None = None) -> list[list[Candidate]]:
        """Candidates per image, before execution. ``ids``: the images' dataset ids, given when they
        may be rows of the index itself (training images): their own row and copies of their
        program are then never retrieved."""
        cfg = self.cfg
        fitting = cfg.primitives or cfg.prisms
        if fitting and self.pool is None:
            raise ValueError("primitives are fit by rendering: pass a SandboxPool")
        with ThreadPoolExecutor(1) as fitter:  # the fits (renders, waits on the sandbox) run while the model generates
            fits = fitter.submit(self.fit_candidates, images) if fitting else None
            with cpu_threads_but_one(fitting and self.device_is_cpu):  # ... on a core of their own
                out = self.model_candidates(images, ids)
            if cfg.repair:
                for cands in out:
                    for c in cands:
                        if c.source not in NOT_MODEL:  # training programs and primitives need no repair
                            c.code = repair_program(c.code, cfg.grammar_name).code
            if fitting:  # the selection's executions start while the fits go on
                self.prefetch([c.code for cands in out for c in cands])
            for cands, fitted in zip(out, fits.result() if fits is not None else []):
                cands.extend(Candidate(code, float("nan"), 1, "primitive", frame=frame) for code, frame in fitted)
        return out

    def exec_options(self, fitted: bool = False) -> ExecOptions:
        """How ``select`` executes candidates: executable without BRepCheck's verdict; ``fitted``:
        programs the fits wrote (never the model's or a dataset's), which share a sandboxed
        process (``ExecOptions.reuse``)."""
        return ExecOptions(timeout=self.cfg.timeout, want_geometry=self.renders, check_brep=False, reuse=fitted)

    def prefetch(self, codes: list[str], fitted: bool = False) -> None:
        """Start executing candidates that ``select`` will execute (``SandboxPool.prefetch``)."""
        if self.pool is not None and self.cfg.strategy in ("bestofn", "rerank"):
            self.pool.prefetch(codes, self.exec_options(fitted))

    @property
    def device(self) -> torch.device | None:
        """Where the model's weights are (None without a model)."""
        return next(self.model.parameters()).device if self.model is not None else None

    @property
    def device_is_cpu(self) -> bool:
        return self.device is not None and self.device.type == "cpu"

    def model_candidates(self, images, ids: list[str] | None = None) -> list[list[Candidate]]:
        """The model's programs and the retrieved ones, per image (``generate`` without the fits or repair)."""
        cfg = self.cfg
        out: list[list[Candidate]] = [[] for _ in images]
        sampling = cfg.strategy in ("bestofn", "rerank")
        k = 1 if cfg.strategy == "retrieval" else cfg.k_retrieval
        edits = self.conditioned and cfg.context_k != 0
        need = max(k, cfg.n if sampling and edits else 0, self.context_k if edits else 0)  # every set holds context_k programs
        hits = self.index.query(images, need, exclude_ids=ids) if need else None
        if cfg.strategy != "retrieval":
            px = self.proc(images).to(self.device)
        if cfg.strategy != "retrieval" and edits:
            self.generate_edits(px, hits, out, sampling)
        elif cfg.strategy != "retrieval":
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
        if k:
            for i, h in enumerate(hits):
                out[i].extend(Candidate(code, float("nan"), 1, "retrieval", scores={"similarity": sim}) for code, sim in h[:k])
            if cfg.strategy != "retrieval" and self.retrieved_logprobs:
                self.score_retrieved(px, out)
        return out

    def fit_candidates(self, images) -> list[list[tuple[str, Frame | None]]]:
        """Per image, the programs fit to it, each with the frame that draws it where the image
        shows it (None: the primitives, which fit proportions only): with ``primitives``, the
        primitives and all prisms; with ``prisms``, the quick prisms (``decoding.prism.framed_prisms``)."""
        cfg, out = self.cfg, []
        for image in images:
            target = RenderTarget.of(image)
            prisms = framed_prisms(target, self.pool, self.render_terms, quick=not cfg.primitives)
            primitives = fit_primitives(target, self.pool, self.render_terms) if cfg.primitives else []
            out.append([(code, None) for code in primitives] + prisms)
            self.prefetch([code for code, _ in out[-1]], fitted=True)  # executed for the selection while the next image is fit
        return out

    def generate_edits(self, px: torch.Tensor, hits: list[list[tuple[str, float]]], out: list[list[Candidate]],
                       sampling: bool) -> None:
        """Retrieval-conditioned candidates: for best-of-N, one greedy edit per neighbour set
        (N sets, so the N candidates differ by what they edit, and the same image and options
        give the same programs); otherwise greedy or beam search conditioned on the k nearest."""
        cfg = self.cfg
        per_set = sampling and cfg.edit_mode == "neighbours"
        count = cfg.n if per_set else 1
        sets = self.neighbour_sets(hits, count)
        self.contexts = [per[0] for per in sets]  # what each image's first (or only) candidate set edited
        rows = [s for per in sets for s in per]
        retrieved = self.retrieved_inputs(rows, px.device)
        procs = None
        if self.grammar_processor is not None:
            self.grammar_processor.reset()
            procs = LogitsProcessorList([self.grammar_processor])
        if sampling and not per_set:
            kwargs = {"do_sample": True, "num_return_sequences": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p}
        else:
            kwargs = {"num_beams": 1 if sampling or cfg.strategy == "greedy" else cfg.num_beams}
        if cfg.template_bias is not None:
            procs = procs or LogitsProcessorList()
            procs.append(self.template_processor(rows, kwargs.get("num_return_sequences", kwargs.get("num_beams", 1))))
        gen = self.model.generate_programs(px.repeat_interleave(count, 0), max_new_tokens=cfg.max_new_tokens,
                                           logits_processor=procs, copy_bias=cfg.copy_bias, **kwargs, **retrieved)
        texts = self.tok.batch_decode(gen.sequences, skip_special_tokens=True)
        per_image = len(texts) // len(px)
        for r, (text, lp, seq) in enumerate(zip(texts, gen.logprobs.tolist(), gen.sequences)):
            n_tok = int((seq != self.tok.pad_token_id).sum())
            source = f"edit:{r % count + 1}" if per_set else ("sample" if sampling else cfg.strategy)
            out[r // per_image].append(Candidate(text, lp, n_tok, source))

    def template_processor(self, rows: list[list[str]], rows_per_template: int):
        """Template decoding (``decoding.template``) on each row's first retrieved program."""
        from decoding.template import TemplateLogitsProcessor, number_token_mask

        if self._numbers is None:
            self._numbers = number_token_mask(self.tok)
        templates = [self._tokens(codes[0]) if codes and codes[0] else [self.tok.eos_token_id] for codes in rows]
        return TemplateLogitsProcessor(templates, self._numbers, self.cfg.template_bias, rows_per_template)

    def score_retrieved(self, px: torch.Tensor, out: list[list[Candidate]]) -> None:
        """Give retrieved programs the model's own log-probability, so they rank with the samples
        (a retrieval-conditioned model scores them given no retrieved program)."""
        retrieved = [(i, c) for i, cands in enumerate(out) for c in cands if c.source == "retrieval"]
        if not retrieved:
            return
        seqs = [self._tokens(normalize_scale(c.code, self.scale) if self.scale else c.code) for _, c in retrieved]
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
        fitted = {c.code for c in cands if c.source == "primitive"}
        unique = list(dict.fromkeys(c.code for c in cands))  # identical programs execute (and render) once
        results = dict(zip(unique, self.pool.imap(unique, [self.exec_options(code in fitted) for code in unique])))
        for c in cands:
            c.result = results[c.code]
        info["n_unique"] = len(unique)
        executable = [c for c in cands if c.result.executable]
        info["n_executable"] = len(executable)
        if not executable:
            return max(cands, key=lambda c: c.logprob if c.source not in NOT_MODEL else float("-inf")), info
        if cfg.strategy == "bestofn":
            model_made = [c for c in executable if c.source not in NOT_MODEL] or executable
            return max(model_made, key=lambda c: c.logprob), info
        best: dict[str, Candidate] = {}  # one candidate per program: rendering and scoring it once
        for c in executable:
            kept = best.get(c.code)
            if kept is None or (kept.source not in NOT_MODEL, kept.logprob) < (c.source not in NOT_MODEL, c.logprob):
                best[c.code] = c
        target = RenderTarget.of(image, self.critic) if image is not None and needs_render(cfg.weights) else image
        for c in best.values():
            combined_score(c, target, cfg.weights)
        executable = list(best.values())
        chosen = max(executable, key=lambda c: c.total)
        if cfg.refine_evaluations and image is not None:
            r = refine(chosen.code, image, self.pool, cfg.refine_evaluations, cfg.timeout, objective=self.refine_objective,
                       groups=tuple(cfg.refine_groups), frame=chosen.frame if chosen.scores.get("framed") else None)
            info["refine"] = {"from": round(r.start_score, 4), "to": round(r.score, 4), "renders": r.evaluations}
            chosen.code = r.code
        return chosen, info


def _image_key(value) -> bytes | str:
    """What an image row holds, for its fingerprint: the encoded bytes (read from the path when
    there are none), or the reason they cannot be read (fixing the file changes it)."""
    try:
        if isinstance(value, dict) and value.get("bytes"):
            return bytes(value["bytes"])
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, (str, Path)):
            return Path(path).read_bytes()
        if hasattr(value, "tobytes"):  # a decoded PIL image
            return f"{value.mode}{value.size}".encode() + value.tobytes()
    except OSError as exc:
        return f"unreadable: {type(exc).__name__}: {exc}"
    return f"unreadable: {type(value).__name__}"


def decode_fingerprints(rows: list[dict], cfg: DecodeConfig, context: str = "") -> dict[str, str]:
    """Per id, the fingerprint of what decodes it: the decoding config and version, ``context``
    (the caller's fingerprint of the model and retrieval index) and the image bytes."""
    run = fingerprint("decoding", DECODING_VERSION, asdict(cfg), context)
    return {str(r["id"]): fingerprint(run, _image_key(r["image"])) for r in rows}


def predict(model, tokenizer, processor, rows: list[dict], out_path: str | Path, cfg: DecodeConfig,
            pool: SandboxPool | None = None, index=None, progress: bool = True, context: str = "", critic=None) -> dict:
    """Decode every row (``{"id", "image"}``) that ``out_path`` does not hold yet from the same
    image and options (``decode_fingerprints``; rows made otherwise are removed from the file and
    decoded again); append the lines, each batch in input order, unreadable images included."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fps = decode_fingerprints(rows, cfg, context)
    prune_stale(out, fps)  # lines of these ids that another image or option made go
    valid = done_rows([out], fps)
    todo = [r for r in rows if str(r["id"]) not in valid]
    predictor = Predictor(model, tokenizer, processor, cfg, pool, index, critic=critic)
    t0 = time.perf_counter()
    unreadable = 0

    def finish(batch: list[dict], images: list, cands: list[list[Candidate]], failed: dict[str, dict]) -> list[dict]:
        lines, it = [], iter(zip(images, cands))
        for r in batch:
            pid = str(r["id"])
            if pid in failed:
                lines.append(failed[pid])
                continue
            img, cs = next(it)
            chosen, info = predictor.select(cs, img)
            lines.append({"id": pid, "code": chosen.code, "strategy": cfg.strategy,
                          "logprob": round(chosen.logprob, 4) if math.isfinite(chosen.logprob) else None, "tokens": chosen.tokens, "source": chosen.source,
                          **info, **({"scores": {k: round(v, 4) for k, v in chosen.scores.items()}} if chosen.scores else {}),
                          FP_KEY: fps[pid]})
        return lines

    with out.open("a") as f, ThreadPoolExecutor(1) as worker, tqdm(
            total=len(rows), initial=len(rows) - len(todo), desc=f"decode {cfg.strategy}", unit="img", disable=not progress) as bar:
        pending = None
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start:start + cfg.batch_size]
            images, keep, failed = [], [], {}
            for r in chunk:
                try:
                    images.append(to_image(r["image"]).convert("RGB"))
                    keep.append(r)
                except Exception as exc:  # noqa: BLE001 - reported per id, never silently dropped
                    unreadable += 1
                    pid = str(r["id"])
                    failed[pid] = {"id": pid, "code": "", "strategy": cfg.strategy,
                                   "error": f"unreadable image: {type(exc).__name__}: {exc}", FP_KEY: fps[pid]}
            # sampling is seeded per batch from the config seed and the batch's ids: same config, same output
            torch.manual_seed(cfg.seed + zlib.crc32("\n".join(str(r["id"]) for r in keep).encode()))
            cands = predictor.generate(images) if keep else []
            if pending is not None:  # execution of the previous batch ran while this one generated
                for line in pending.result():
                    f.write(json.dumps(line) + "\n")
                f.flush()
            pending = worker.submit(finish, chunk, images, cands, failed)
            bar.update(len(chunk))
        if pending is not None:
            for line in pending.result():
                f.write(json.dumps(line) + "\n")
    seconds = time.perf_counter() - t0
    return {"decoded": len(todo), "kept": len(rows) - len(todo), "unreadable": unreadable, "seconds": round(seconds, 2),
            "seconds_per_image": round(seconds / max(len(todo), 1), 4),
            "select_seconds": round(predictor.select_seconds, 3)}
