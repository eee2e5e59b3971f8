"""The study's evaluation: every decoding configuration of a model (and of its DPO version).

    scripts/eval_all.sh MODEL_DIR [TEST_DATA] [DPO_MODEL_DIR]
    python -m scripts.eval_all --model DIR [--data NAME=PATH ...] [--dpo-model DIR] [--grpo-model DIR] [--run NAME]

Under ``accelerate launch`` the processes share every configuration's batches and scoring
(``cad.distributed``); the main process writes the reports.

On each test set it runs the rows of the study's table (retrieval baseline, beam 4, + grammar,
+ execution-checked best-of-N, + reranker, + DPO) and its ablations (grammar none / basic / full;
best-of-N for N in {1, 3, 6, 10}; reranking none / heuristic / full / full + refinement), then writes
``results/<run>/``:

* ``table.md`` / ``.csv`` / ``.json``: VSR, Executable %, Best IoU (exact, and voxel as the study
  measured it), structure match (``reward.metrics``), training time and memory of the model,
  inference seconds and peak memory;
* ``ablations.md`` / ``.json``; ``errors.md`` / ``.json`` (error classes per configuration, their
  change against beam 4, the most frequent messages); ``paired.md`` / ``.json`` (each configuration
  against beam 4 id by id: Best IoU on the ids both execute, and with failures counted as 0);
  ``lookup_bands.md`` / ``.json`` (each configuration against the lookup id by id, in bands of the
  lookup's Best IoU); ``structure.md`` / ``.json`` (each configuration against the lookup on the ids
  where it writes the true program's structure and on the others);
* ``plots/``: Best IoU histograms, VSR and IoU against N, a grid of examples (input image,
  rendered prediction, rendered ground truth);
* ``report.md``, which ties them together.

Predictions and scores are cached per (data, model, configuration) and per sample under
``results/<run>/cache``: an interrupted run resumes, and a repeated one only rewrites the reports.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from cad.data import DatasetUnavailable, load_gencad, undecoded
from cad.distributed import combine_stats, is_main_process, run_sharded, state
from cad.io import InputError, done_ids, files_fingerprint, read_jsonl
from cad.sandbox import SandboxPool
from decoding.predict import DECODING_VERSION, DecodeConfig, parse_grid, predict
from decoding.rerank import DEFAULT_WEIGHTS, parse_objective, parse_weights
from decoding.retrieval import saved_index
from reward.critic import FILE as CRITIC_FILE
from reward.critic import saved_critic
from reward.evaluate import evaluate_pairs
from reward.metrics import ERROR_CLASSES, summarise
from reward.score import CRITIC

HEURISTIC_WEIGHTS = {"logprob": 1.0, "sanity": 0.5, "silhouette": 0.0, "edges": 0.0, "pixel": 0.0}  # the study's


@dataclass
class Variant:
    """One decoding configuration; ``labels`` maps each section it belongs to onto its row name there."""

    key: str
    model: str | None  # "sft", "dpo", "grpo", or None for retrieval
    cfg: DecodeConfig
    labels: dict[str, str] = field(default_factory=dict)


def plan(n: int = 6, k: int = 2, ns: tuple[int, ...] = (1, 3, 6, 10), max_new_tokens: int = 512,
         dpo: bool = False, batch_size: int = 16, canonical_grid: int | None = 256, refine: int = 48,
         conditioned: bool = False, grpo: bool = False, weights: dict | None = None,
         refine_objective: dict | None = None, copy_bias: float = 0.0) -> list[Variant]:
    """The study's rows and ablations; a configuration shared by several sections runs once. For a
    retrieval-conditioned model every model row edits retrieved programs, and a row of its plain
    mode (no retrieved program) is added. ``copy_bias`` applies to every row of a copy-head model."""
    common = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "canonical_grid": canonical_grid,
              "copy_bias": copy_bias}
    g = {"grammar": True, "repair": True, **common}
    rerank = DecodeConfig(strategy="rerank", n=n, k_retrieval=k, **g, **({"weights": dict(weights)} if weights else {}))
    out = [
        Variant("retrieval", None, DecodeConfig(strategy="retrieval"), {"main": "retrieval (nearest training image)"}),
        Variant("beam4", "sft", DecodeConfig(strategy="beam", **common),
                {"main": "SFT retrieval-conditioned, beam 4" if conditioned else "SFT, beam 4 (study baseline)", "grammar": "none"}),
        Variant("beam4-repair", "sft", DecodeConfig(strategy="beam", repair=True, **common),
                {"grammar": "validate + repair only"}),
        Variant("grammar-basic", "sft", DecodeConfig(strategy="grammar", grammar_name="cadquery", **common),
                {"grammar": "basic: CadQuery grammar, constrained + repair"}),
        Variant("grammar", "sft", DecodeConfig(strategy="grammar", **common),
                {"main": "+ grammar (GenCAD grammar, constrained + repair)",
                 "grammar": "full: typed GenCAD grammar, constrained + repair"}),
    ]
    if conditioned:
        out.insert(1, Variant("plain-beam4", "sft", DecodeConfig(strategy="beam", context_k=0, **common),
                              {"main": "SFT plain mode (no retrieved program), beam 4"}))
    for m in sorted(set(ns) | {n}):
        labels = {"bestofn": f"N={m}"} if m in ns else {}
        if m == n:
            labels["main"] = f"+ best-of-{n} with execution"
        out.append(Variant(f"bestof{m}", "sft", DecodeConfig(strategy="bestofn", n=m, **g), labels))
    out += [
        Variant(f"bestof{n}-k{k}", "sft", DecodeConfig(strategy="bestofn", n=n, k_retrieval=k, **g),
                {"rerank": "none: most likely executable"}),
        Variant(f"rerank{n}-k{k}-heuristic", "sft", DecodeConfig(strategy="rerank", n=n, k_retrieval=k,
                                                                weights=dict(HEURISTIC_WEIGHTS), **g),
                {"rerank": "heuristic: log-prob, sanity (the study)"}),
        Variant(f"rerank{n}-k{k}", "sft", rerank,
                {"main": f"+ rerank (render-compare, {k} retrieved)", "rerank": "full: render-and-compare, fitted weights"}),
    ]
    if refine:
        out.append(Variant(f"rerank{n}-k{k}-refine{refine}", "sft", DecodeConfig(**{**asdict(rerank), "refine_evaluations": refine,
                                                                                        "refine_objective": refine_objective}),
                           {"rerank": f"full + refinement ({refine} renders)"}))
    out.append(Variant(f"rerank{n}-k{k}-prisms", "sft", DecodeConfig(**{**asdict(rerank), "prisms": True}),
                       {"rerank": "full + the three best caps' profile prisms and the union of two (img2cad predict's default)"}))
    with_primitives = DecodeConfig(**{**asdict(rerank), "primitives": True})
    out.append(Variant(f"rerank{n}-k{k}-primitives", "sft", with_primitives,
                       {"rerank": "full + primitives (box, L or U section, cylinder, tube, profile prisms fit to the image)"}))
    if refine:
        out.append(Variant(f"rerank{n}-k{k}-primitives-refine{refine}", "sft",
                           DecodeConfig(**{**asdict(with_primitives), "refine_evaluations": refine, "refine_objective": refine_objective}),
                           {"main": f"+ primitives + refinement ({refine} renders)",
                            "rerank": f"full + primitives + refinement ({refine} renders)"}))
    if dpo:
        out += [Variant("dpo-beam4", "dpo", DecodeConfig(strategy="beam", **common), {"main": "DPO, beam 4"}),
                Variant(f"dpo-rerank{n}-k{k}", "dpo", DecodeConfig(**asdict(rerank)),
                        {"main": f"+ DPO (rerank, {k} retrieved)"})]
    if grpo:
        out += [Variant("grpo-beam4", "grpo", DecodeConfig(strategy="beam", **common), {"main": "GRPO, beam 4"}),
                Variant(f"grpo-rerank{n}-k{k}", "grpo", DecodeConfig(**asdict(rerank)),
                        {"main": f"+ GRPO (rerank, {k} retrieved)"})]
    return out


def _digest(payload) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def model_key(model_dir: str | Path) -> str:
    """Readable and content-addressed: the folder name plus a hash of the weights."""
    path = Path(model_dir)
    weights = path / "model.safetensors"
    if not weights.exists():
        raise SystemExit(f"error: {path}: no model.safetensors; pass a folder written by `python -m sft` or `python -m rl.dpo`")
    h = hashlib.sha1()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    name = "-".join(p for p in path.resolve().parts[-2:] if p not in ("/",))
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{h.hexdigest()[:10]}"


def config_key(v: Variant) -> str:
    cfg = {k: val for k, val in asdict(v.cfg).items() if k not in ("batch_size", "device")}
    return f"{v.key}-{_digest([cfg, DECODING_VERSION])}"


RL_STAGES = (("dpo_metrics.json", "dpo_config.yaml", "DPO"), ("grpo_metrics.json", "grpo_config.yaml", "GRPO"))


def training_info(model_dir: str | Path | None) -> dict:
    """Training seconds and peak memory of a model: an RL stage (DPO, GRPO) added to the SFT model
    it started from, an SFT run to the model it was initialised from (``init_from``)."""
    if model_dir is None:
        return {}
    path = Path(model_dir)
    for metrics_name, config_name, stage in RL_STAGES:
        if (path / metrics_name).exists():
            m = json.loads((path / metrics_name).read_text())
            cfg_path = path / config_name
            base = training_info((yaml.safe_load(cfg_path.read_text()) or {}).get("sft_model")) if cfg_path.exists() else {}
            seconds = m.get("train_seconds", m.get("train_runtime"))
            return {"train_seconds": (base.get("train_seconds") or 0) + (seconds or 0),
                    "train_detail": f"{base.get('train_detail', 'SFT ?')} + {stage} {seconds or 0:.0f} s",
                    "train_memory_mb": max(base.get("train_memory_mb") or 0, m.get("peak_memory_mb") or 0) or None}
    if (path / "training_metrics.json").exists():
        m = json.loads((path / "training_metrics.json").read_text())
        seconds, detail = m.get("train_seconds") or 0, f"SFT {m.get('train_seconds', 0):.0f} s"
        if m.get("init_from_train_seconds"):
            seconds += m["init_from_train_seconds"]
            detail = f"SFT {m['init_from_train_seconds']:.0f} s + {m.get('train_seconds', 0):.0f} s"
        return {"train_seconds": seconds, "train_detail": detail, "train_memory_mb": m.get("peak_memory_mb")}
    return {}


def default_retrieval_data(model_dir: str | Path) -> str | None:
    cfg = Path(model_dir) / "sft_config.yaml"
    return (yaml.safe_load(cfg.read_text()) or {}).get("train_data") if cfg.exists() else None


def jsonl_rows(path: Path) -> list[dict]:
    """The well-formed rows of a cache file (a line cut short by an interruption is redone)."""
    return [row for _, row, _ in read_jsonl(path) if row] if path.exists() else []


class PeakMemory:
    """Peak memory while the block runs: the accelerator's allocator on a GPU, else the
    process's resident set, sampled every 20 ms from /proc (None where there is no /proc)."""

    def __enter__(self) -> "PeakMemory":
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        elif Path("/proc/self/statm").exists():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        peak = 0.0
        while True:
            peak = max(peak, int(Path("/proc/self/statm").read_text().split()[1]) * page_mb)
            self.peak_mb = round(peak, 1)
            if self._stop.wait(0.02):
                return

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            self.peak_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()


class Harness:
    """Runs variants on datasets with per-sample caching; models and the index load only when needed."""

    def __init__(self, out: Path, models: dict[str, str], retrieval_data: str | None, pool: SandboxPool,
                 limit: int | None = None, progress: bool = True, index_file: str | None = None):
        self.out, self.models, self.retrieval_data, self.pool = out, models, retrieval_data, pool
        self.index_file = index_file
        self.limit, self.progress = limit, progress
        self.model_keys = {role: model_key(path) for role, path in models.items()}
        self._loaded: dict[str, tuple] = {}
        self._index = None
        self._data: dict[str, tuple[list[dict], list[tuple[str, str]]]] = {}

    def model(self, role: str) -> tuple:
        if role not in self._loaded:
            from decoding.predict import resolve_device
            from sft.model import load_model

            self._loaded.clear()  # one model in memory at a time
            self._loaded[role] = load_model(self.models[role], resolve_device("auto"))
        return self._loaded[role]

    def index(self):
        if self._index is None:
            from decoding.retrieval import RetrievalIndex

            if self.index_file:  # a saved index: the one the model was trained with, or --index
                self._index = RetrievalIndex.load(self.index_file)
                return self._index
            if not self.retrieval_data:
                raise SystemExit("error: retrieval needs an index: pass --index FILE or --retrieval-data DIR (the "
                                 "model folder has no saved index and no sft_config.yaml naming its train_data)")
            self._index = RetrievalIndex.build(self.retrieval_data)
        return self._index

    def data(self, name: str, source: str | None) -> tuple[list[dict], list[tuple[str, str]]]:
        if name not in self._data:
            ds = undecoded(load_gencad(source, limit=self.limit))
            self._data[name] = ([{"id": r["deepcad_id"], "image": r["image"]} for r in ds],
                                [(r["deepcad_id"], r["cadquery"]) for r in ds])
        return self._data[name]

    def uses_index(self, v: Variant) -> bool:
        """Does ``v`` read the retrieval index (the lookup, retrieved candidates, a conditioned model's context)?"""
        if v.cfg.strategy == "retrieval" or v.cfg.k_retrieval:
            return True
        config = Path(self.models[v.model]) / "config.json" if v.model else None
        return bool(config and config.exists() and v.cfg.context_k != 0
                    and json.loads(config.read_text()).get("retrieval_layers"))

    def cache_dir(self, name: str, source: str | None, v: Variant) -> Path:
        data_key = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{_digest([str(source), self.limit])}"
        key = config_key(v)
        if self.uses_index(v):  # another index, or one rebuilt at the same path, is another entry
            key += "-" + files_fingerprint(self.index_file or self.retrieval_data)[:10]
        if v.model and v.cfg.weights.get(CRITIC):  # a retrained critic is another entry too
            key += "-" + files_fingerprint(Path(self.models[v.model]) / CRITIC_FILE)[:10]
        return self.out / "cache" / data_key / (self.model_keys[v.model] if v.model else "no-model") / key

    def run(self, name: str, source: str | None, v: Variant) -> dict:
        inputs, gts = self.data(name, source)
        d = self.cache_dir(name, source, v)
        d.mkdir(parents=True, exist_ok=True)
        preds, evals, stats_path = d / "preds.jsonl", d / "eval.jsonl", d / "stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {"seconds": 0.0, "decoded": 0,
                                                                                  "select_seconds": 0.0}
        if len(done_ids(preds) & {str(r["id"]) for r in inputs}) < len(inputs):
            model, tok, proc = self.model(v.model) if v.model else (None, None, None)
            index = self.index() if self.uses_index(v) else None
            critic = saved_critic(self.models[v.model]) if v.model and v.cfg.weights.get(CRITIC) else None
            self.pool.clear_cache()  # each configuration pays for its own executions

            def decode(mine: list[dict], part: Path) -> dict:
                with PeakMemory() as mem:
                    s = predict(model, tok, proc, mine, part, v.cfg, self.pool, index, progress=self.progress and is_main_process(),
                                critic=critic)
                return {**s, "peak_memory_mb": mem.peak_mb or 0.0}

            # the processes share the batches, each with its own sandbox pool (cad.distributed)
            s = combine_stats(run_sharded(inputs, preds, v.cfg.batch_size, decode))
            stats = {"seconds": stats["seconds"] + s["seconds"], "decoded": stats["decoded"] + s["decoded"],
                     "select_seconds": stats["select_seconds"] + s.get("select_seconds", 0.0),
                     "peak_memory_mb": max(stats.get("peak_memory_mb") or 0.0, s.get("peak_memory_mb") or 0.0) or None,
                     "device": "cuda" if torch.cuda.is_available() else "cpu", "processes": s.get("processes", 1)}
            if is_main_process():
                stats_path.write_text(json.dumps(stats))
        by_id = {str(p["id"]): p.get("code") for p in jsonl_rows(preds)}
        items = [{"id": str(i), "pred": by_id.get(str(i)), "gt": code} for i, code in gts]

        def score(todo: list[dict], part: Path) -> None:
            with part.open("a") as f:
                for start in tqdm(range(0, len(todo), 8), desc=f"score {v.key}", unit="chunk",
                                  disable=not self.progress or not is_main_process()):
                    # appended in small chunks of ids: an interruption loses little
                    chunk = [(x["id"], x["pred"], x["gt"]) for x in todo[start:start + 8]]
                    _, rows = evaluate_pairs(chunk, self.pool, iou="both", progress=False)
                    f.writelines(json.dumps(row) + "\n" for row in rows)
                    f.flush()

        run_sharded(items, evals, 8, score)
        wanted = {str(i) for i, _ in gts}
        rows = [r for r in jsonl_rows(evals) if str(r["id"]) in wanted]
        decoded = max(stats["decoded"], 1)
        return {"data": name, "key": v.key, "model": v.model, "labels": v.labels, "config": asdict(v.cfg),
                **summarise(rows).to_json(), "rows": rows, "codes": by_id,
                "s_per_image": round(stats["seconds"] / decoded, 4) if stats["decoded"] else None,
                "select_s_per_image": round(stats["select_seconds"] / decoded, 4) if stats["decoded"] else None,
                "peak_memory_mb": stats.get("peak_memory_mb"), "device": stats.get("device"),
                **training_info(self.models.get(v.model) if v.model else None)}


# ---------------------------------------------------------------------------------------- reports
def _f(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def section(records: list[dict], name: str) -> list[dict]:
    return [dict(r, label=r["labels"][name]) for r in records if name in r["labels"]]


def beam_time(records: list[dict], data: str) -> float | None:
    return next((r["s_per_image"] for r in records if r["data"] == data and r["key"] == "beam4"), None)


def main_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["data", "configuration", "n", "VSR", "Executable %", "Best IoU (exact)", "Best IoU (voxel)",
            "structure match", "training time", "train memory (MB)", "s / image", "x beam 4", "decoding peak memory (MB)"]
    body = []
    for r in section(records, "main"):
        base = beam_time(records, r["data"])
        ratio = r["s_per_image"] / base if base and r["s_per_image"] is not None and r["model"] else None
        body.append([r["data"], r["label"], str(r["n"]), _f(r["vsr"]), _f(100 * r["exec_rate"], ".1f"), _f(r["iou_best"]),
                     _f(r.get("iou_best_voxel")), _f(r.get("structure_match")), r.get("train_detail", "-"),
                     _f(r.get("train_memory_mb"), ".0f"), _f(r["s_per_image"], ".3f"), _f(ratio, ".2f"), _f(r.get("peak_memory_mb"), ".0f")])
    return head, body


def against_row(records: list[dict], key: str):
    """Each main configuration other than ``key``, with the ``key`` row of the same data: yields
    (record, its Best IoU per id, the ``key`` row's Best IoU per id), None where a program failed."""
    for r in section(records, "main"):
        base = next((b for b in records if b["data"] == r["data"] and b["key"] == key), None)
        if base is None or r["key"] == key:
            continue
        yield r, {str(x["id"]): x["iou"] for x in r["rows"]}, {str(x["id"]): x["iou"] for x in base["rows"]}


def paired_with_beam(records: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Each main configuration against beam 4 of the same data, id by id: Best IoU on the ids where
    both execute (the table's Best IoU averages each over its own executing ids, so a configuration
    that makes more programs run can lower it while raising every shared id), the mean IoU with
    failures counted as 0, and the ids only one of them executes."""
    head = ["data", "configuration", "ids both execute", "beam 4 IoU on them", "its IoU on them", "beam 4 IoU (fail = 0)",
            "its IoU (fail = 0)", "only it executes", "only beam 4 executes"]
    body, out = [], []
    mean = lambda vals: float(np.mean(vals)) if vals else None  # noqa: E731
    for r, mine, theirs in against_row(records, "beam4"):
        ids = sorted(set(mine) & set(theirs))
        both = [i for i in ids if mine[i] is not None and theirs[i] is not None]
        row = {"data": r["data"], "configuration": r["label"], "ids": len(ids), "both": len(both),
               "beam_iou_both": mean([theirs[i] for i in both]), "iou_both": mean([mine[i] for i in both]),
               "beam_iou_zero": mean([theirs[i] or 0.0 for i in ids]), "iou_zero": mean([mine[i] or 0.0 for i in ids]),
               "only_it": sum(mine[i] is not None and theirs[i] is None for i in ids),
               "only_beam": sum(mine[i] is None and theirs[i] is not None for i in ids)}
        out.append(row)
        body.append([row["data"], row["configuration"], str(row["both"]), _f(row["beam_iou_both"]), _f(row["iou_both"]),
                     _f(row["beam_iou_zero"]), _f(row["iou_zero"]), str(row["only_it"]), str(row["only_beam"])])
    return head, body, out


LOOKUP_BANDS = (0.0, 0.5, 0.8, 0.95)  # lower edges of the bands of the lookup's per-id Best IoU


def against_lookup(records: list[dict], tie: float = 0.01) -> tuple[list[str], list[list[str]], list[dict]]:
    """Each main configuration against the retrieval lookup of the same data, id by id, in bands
    of the lookup's Best IoU: where a configuration loses to the program it could have copied.
    Failures count as 0; better / worse means more than ``tie`` apart."""
    head = ["data", "configuration", "lookup IoU band", "ids", "lookup IoU", "its IoU (fail = 0)", "better", "worse"]
    body, out = [], []
    edges = [*LOOKUP_BANDS, float("inf")]
    for r, mine, lookup in against_row(records, "retrieval"):
        mine = {i: v or 0.0 for i, v in mine.items()}
        lookup = {i: v or 0.0 for i, v in lookup.items()}
        ids = sorted(set(lookup) & set(mine))
        for lo, hi in zip(edges, edges[1:]):
            band = [i for i in ids if lo <= lookup[i] < hi]
            if not band:
                continue
            row = {"data": r["data"], "configuration": r["label"], "band": [lo, min(hi, 1.0)], "ids": len(band),
                   "lookup_iou": float(np.mean([lookup[i] for i in band])), "iou_zero": float(np.mean([mine[i] for i in band])),
                   "better": sum(mine[i] > lookup[i] + tie for i in band), "worse": sum(mine[i] < lookup[i] - tie for i in band)}
            out.append(row)
            body.append([row["data"], row["configuration"], f"{lo:.2f}-{min(hi, 1.0):.2f}", str(row["ids"]),
                         _f(row["lookup_iou"]), _f(row["iou_zero"]), str(row["better"]), str(row["worse"])])
    return head, body, out


def by_structure(records: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Each main configuration against the lookup of the same data, on the ids where it writes the
    true program's structure (``cad.programs.structure``) and on the others: whether it loses on
    the numbers or on the program's shape. Failures count as 0; configurations scored before rows
    carried ``same_structure`` are left out."""
    head = ["data", "configuration", "its structure", "ids", "executes", "its IoU (fail = 0)", "lookup IoU",
            "lookup has the true structure"]
    body, out = [], []
    for r, mine, lookup in against_row(records, "retrieval"):
        base = next(b for b in records if b["data"] == r["data"] and b["key"] == "retrieval")
        same = {str(x["id"]): x.get("same_structure") for x in r["rows"]}
        base_same = {str(x["id"]): x.get("same_structure") for x in base["rows"]}
        ids = sorted(set(mine) & set(lookup))
        if not ids or any(same[i] is None or base_same[i] is None for i in ids):
            continue
        for name, group in (("true", [i for i in ids if same[i]]), ("other", [i for i in ids if not same[i]])):
            if not group:
                continue
            row = {"data": r["data"], "configuration": r["label"], "structure": name, "ids": len(group),
                   "executes": sum(mine[i] is not None for i in group),
                   "iou_zero": float(np.mean([mine[i] or 0.0 for i in group])),
                   "lookup_iou": float(np.mean([lookup[i] or 0.0 for i in group])),
                   "lookup_same": sum(bool(base_same[i]) for i in group)}
            out.append(row)
            body.append([row["data"], row["configuration"], name, str(row["ids"]), str(row["executes"]),
                         _f(row["iou_zero"]), _f(row["lookup_iou"]), str(row["lookup_same"])])
    return head, body, out


def markdown(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(row) + " |" for row in body]) + "\n"


def ablation_tables(records: list[dict]) -> dict[str, tuple[list[str], list[list[str]]]]:
    out = {}
    rows = []
    for r in section(records, "grammar"):
        rows.append([r["data"], r["label"], _f(r["vsr"]), _f(100 * r["exec_rate"], ".1f"), _f(r["iou_best"]),
                     str(r["errors"]["syntax"]["count"]), _f(r["s_per_image"])])
    out["grammar"] = (["data", "grammar", "VSR", "Executable %", "Best IoU", "syntax errors", "s / image"], rows)
    rows = []
    for r in section(records, "bestofn"):
        base = beam_time(records, r["data"])
        ratio = r["s_per_image"] / base if base and r["s_per_image"] else None
        rows.append([r["data"], r["label"], _f(r["vsr"]), _f(100 * r["exec_rate"], ".1f"), _f(r["iou_best"]),
                     _f(r["s_per_image"]), _f(ratio, ".2f")])
    out["bestofn"] = (["data", "best-of-N", "VSR", "Executable %", "Best IoU", "s / image", "time x beam 4"], rows)
    rows = []
    for r in section(records, "rerank"):
        rows.append([r["data"], r["label"], _f(r["vsr"]), _f(100 * r["exec_rate"], ".1f"), _f(r["iou_best"]),
                     _f(r["select_s_per_image"], ".4f"), _f(r["s_per_image"])])
    out["rerank"] = (["data", "reranking", "VSR", "Executable %", "Best IoU", "selection s / image", "s / image"], rows)
    return out


def _message(error: str | None) -> str:
    line = (error or "").strip().splitlines()[-1:] or [""]
    return re.sub(r"-?\d+(\.\d+)?", "#", line[0])[:90]


def error_analysis(records: list[dict]) -> tuple[str, dict]:
    payload, lines = {}, []
    head = ["data", "configuration", *[f"{c} rate" for c in ERROR_CLASSES], *[f"{c} change vs beam 4" for c in ERROR_CLASSES]]
    body = []
    for r in section(records, "main"):
        base = next((b for b in records if b["data"] == r["data"] and b["key"] == "beam4"), None)
        rates = [r["errors"][c]["rate"] for c in ERROR_CLASSES]
        changes = []
        for c, rate in zip(ERROR_CLASSES, rates):
            b = base["errors"][c]["rate"] if base else None
            changes.append("-" if not b else f"{100 * (rate - b) / b:+.0f}%")
        body.append([r["data"], r["label"], *[_f(x) for x in rates], *changes])
        messages = Counter(_message(row["error"]) for row in r["rows"] if row["error_class"])
        payload.setdefault(r["data"], {})[r["label"]] = {
            "errors": r["errors"], "statuses": r["statuses"], "top_messages": messages.most_common(5)}
    lines.append(markdown(head, body))
    lines.append("\nMost frequent failure messages (numbers masked as #):\n")
    for data, configs in payload.items():
        for label, info in configs.items():
            if info["top_messages"]:
                lines.append(f"- **{data}, {label}**: " + "; ".join(f"`{m or '(empty)'}` x{c}" for m, c in info["top_messages"]))
    return "\n".join(lines) + "\n", payload


def write_reports(records: list[dict], out: Path, meta: dict, plots: dict[str, list[str]]) -> str:
    head, body = main_table(records)
    table_md = markdown(head, body)
    (out / "table.md").write_text(table_md)
    with (out / "table.csv").open("w", newline="") as f:
        csv.writer(f).writerows([head, *body])
    slim = [{k: v for k, v in r.items() if k not in ("rows", "codes")} for r in records]
    (out / "table.json").write_text(json.dumps({"meta": meta, "records": [r for r in slim if "main" in r["labels"]]}, indent=2))
    abl = ablation_tables(records)
    abl_md = "\n".join(f"### {title}\n\n{markdown(*abl[key])}" for key, title in
                       (("grammar", "Grammar: none / basic / full"), ("bestofn", "Execution-checked best-of-N"),
                        ("rerank", "Reranking: none / heuristic / full")))
    (out / "ablations.md").write_text(abl_md)
    (out / "ablations.json").write_text(json.dumps({k: [r for r in slim if k in r["labels"]] for k in ("grammar", "bestofn", "rerank")}, indent=2))
    phead, pbody, paired = paired_with_beam(records)
    paired_md = markdown(phead, pbody)
    (out / "paired.md").write_text(paired_md)
    (out / "paired.json").write_text(json.dumps(paired, indent=2))
    lhead, lbody, bands = against_lookup(records)
    bands_md = markdown(lhead, lbody)
    (out / "lookup_bands.md").write_text(bands_md)
    (out / "lookup_bands.json").write_text(json.dumps(bands, indent=2))
    shead, sbody, shapes = by_structure(records)
    shapes_md = markdown(shead, sbody)
    (out / "structure.md").write_text(shapes_md)
    (out / "structure.json").write_text(json.dumps(shapes, indent=2))
    err_md, err = error_analysis(records)
    (out / "errors.md").write_text(err_md)
    (out / "errors.json").write_text(json.dumps(err, indent=2))
    figs = "\n".join(f"![{Path(p).stem}]({p})" for group in plots.values() for p in group)
    report = [
        f"# Evaluation: {meta['run']}", "",
        f"- SFT model: `{meta['model']}`" + (f"; DPO model: `{meta['dpo_model']}`" if meta.get("dpo_model") else "")
        + (f"; GRPO model: `{meta['grpo_model']}`" if meta.get("grpo_model") else ""),
        f"- test data: {', '.join(f'`{k}` ({v})' for k, v in meta['data'].items())}; retrieval index: `{meta['retrieval_data']}`",
        f"- device: {meta['device']}; best-of-N uses N={meta['n']} samples (temperature {meta['temperature']}, "
        f"top-p {meta['top_p']}) and reranking adds the {meta['k']} nearest training programs"
        + (f" (weights {json.dumps(meta['rerank_weights'])})." if meta.get("rerank_weights") else ".")
        + (f" Model rows decode with copy bias {meta['copy_bias']} (the copy gate shifted towards copying)."
           if meta.get("copy_bias") else ""),
        f"- written {meta['date']} by `{meta['command']}`", "",
        "Definitions (`reward/metrics.py`): VSR = runs and leaves a solid; Executable % = a valid closed solid; "
        "Best IoU = mean over ids where prediction and ground truth both execute, exact (mesh booleans, best of the "
        "study's poses and 24 cube rotations) and voxel (the study's pitch-0.05 voxels). Training time and memory "
        "come from the model folder; s / image is wall time of decoding plus execution and selection, "
        "x beam 4 its ratio to beam 4 measured in this run; decoding peak memory is the GPU allocator's peak, or "
        "on CPU the process's peak resident set while that configuration decoded.", "",
        "## Main table", "", table_md,
        "## Paired with beam 4", "", "Best IoU on the ids where both this configuration and beam 4 execute, and with "
        "failures counted as 0 (`paired.json`).", "", paired_md,
        "## Against the lookup", "", "Each configuration against the nearest training program it could have copied, "
        "id by id, in bands of that program's Best IoU; failures count as 0, better / worse means more than 0.01 "
        "apart (`lookup_bands.json`).", "", bands_md,
        "## Structure", "", "Each configuration on the ids where it writes the true program up to its numbers "
        "(`cad.programs.structure`) and on the others, against the lookup on the same ids; failures count as 0 "
        "(`structure.json`).", "", shapes_md,
        "## Ablations", "", abl_md,
        "## Error analysis", "", "Rates per test image; change is relative to beam 4.", "", err_md,
        "## Plots", "", figs, "",
    ]
    text = "\n".join(report)
    (out / "report.md").write_text(text)
    return table_md


def parse_data(specs: list[str] | None) -> dict[str, str | None]:
    if not specs:
        return {"gencad-test": None}
    out = {}
    for spec in ",".join(specs).split(","):
        if spec:
            name, path = spec.split("=", 1) if "=" in spec else (Path(spec).stem if Path(spec).is_file() else Path(spec).name, spec)
            out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    from scripts.eval_plots import plot_all

    ap = argparse.ArgumentParser(prog="python -m scripts.eval_all", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="SFT model folder")
    ap.add_argument("--dpo-model", help="DPO model folder (adds the + DPO rows)")
    ap.add_argument("--grpo-model", help="GRPO model folder (python -m rl.grpo; adds the + GRPO rows)")
    ap.add_argument("--data", action="append", help="NAME=PATH or PATH, repeatable or comma-separated; "
                                                     "default: the GenCAD-Code test split from the hub")
    ap.add_argument("--retrieval-data", help="training data for the retrieval index (default: the model's train_data)")
    ap.add_argument("--index", help="a saved retrieval index (default: the model folder's retrieval_index.npz, or "
                                    "index.npz as in the shipped folder; else one built from --retrieval-data)")
    ap.add_argument("--run", help="results/<run> (default: the model folder's name)")
    ap.add_argument("--results", default="results")
    ap.add_argument("--limit", type=int, default=None, help="first LIMIT rows of each test set")
    ap.add_argument("--n", type=int, default=6, help="samples per image for best-of-N and reranking")
    ap.add_argument("--k", type=int, default=2, help="retrieved programs added to the reranked candidates")
    ap.add_argument("--ns", default="1,3,6,10", help="N values of the best-of-N ablation")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--refine", type=int, default=48, help="renders for the refinement row of the rerank ablation (0: none)")
    ap.add_argument("--refine-objective", help="the render terms refinement maximises, as JSON weights "
                                                  "(default: the render terms of the rerank weights)")
    ap.add_argument("--canonical-grid", default="256", help="the model's canonical number grid ('none': 3 decimals)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--quiet", action="store_true", help="no per-configuration progress bars")
    ap.add_argument("--weights", help="rerank weights as JSON (default: decoding.rerank.DEFAULT_WEIGHTS); fit them on "
                                      "a validation split with scripts/rerank_correlation.py")
    ap.add_argument("--copy-bias", type=float, default=0.0,
                    help="copy-head model: shift its copy gate towards copying retrieved tokens while decoding (fit on validation)")
    ap.add_argument("--only", help="comma-separated configuration keys to run (default: all of the plan)")
    args = ap.parse_args(argv)
    try:
        weights = {**DEFAULT_WEIGHTS, **parse_weights(args.weights)} if args.weights else None
        objective = parse_objective(args.refine_objective) if args.refine_objective else None
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model_dir = Path(args.model)
    run = args.run or "-".join(p for p in model_dir.resolve().parts[-2:])
    out = Path(args.results) / run
    out.mkdir(parents=True, exist_ok=True)
    data = parse_data(args.data)
    models = {"sft": args.model, **({"dpo": args.dpo_model} if args.dpo_model else {}),
              **({"grpo": args.grpo_model} if args.grpo_model else {})}
    retrieval = args.retrieval_data or default_retrieval_data(model_dir)
    own_index = saved_index(model_dir)
    index_file = args.index or (str(own_index) if own_index else None)
    if index_file:
        retrieval = index_file
    conditioned = bool(json.loads((model_dir / "config.json").read_text()).get("retrieval_layers")) \
        if (model_dir / "config.json").exists() else False
    variants = plan(args.n, args.k, tuple(int(x) for x in args.ns.split(",")), args.max_new_tokens,
                    dpo=bool(args.dpo_model), batch_size=args.batch_size, canonical_grid=parse_grid(args.canonical_grid), refine=args.refine,
                    conditioned=conditioned, grpo=bool(args.grpo_model), weights=weights,
                    refine_objective=objective, copy_bias=args.copy_bias)
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - {v.key for v in variants}
        if unknown:
            print(f"error: --only names unknown configurations {sorted(unknown)}; known: {[v.key for v in variants]}", file=sys.stderr)
            return 2
        variants = [v for v in variants if v.key in keep]
    t0 = time.perf_counter()
    records = []
    main_process = state().is_main_process  # joins the other processes (accelerate launch); "cuda" is this one's GPU
    with SandboxPool(args.workers) as pool:
        harness = Harness(out, models, retrieval, pool, args.limit, progress=not args.quiet, index_file=index_file)
        for name, source in data.items():
            try:
                harness.data(name, source)
            except DatasetUnavailable as exc:
                print(f"error: test data {name!r}: {exc}", file=sys.stderr)
                return 2
            for v in variants:
                t = time.perf_counter()
                r = harness.run(name, source, v)
                records.append(r)
                if main_process:
                    print(f"{name:18s} {v.key:24s} VSR {r['vsr']:.3f}  exec {r['exec_rate']:.3f}  IoU {_f(r['iou_best'])}"
                          f"  ({time.perf_counter() - t:.0f} s)", flush=True)
        if not main_process:
            return 0  # the main process alone writes plots and reports
        plots = plot_all(records, out / "plots", harness, data, examples=args.examples)
    meta = {"run": run, "model": args.model, "dpo_model": args.dpo_model, "grpo_model": args.grpo_model, "data": {k: str(v or "hub") for k, v in data.items()},
            "retrieval_data": retrieval, "device": "cuda" if torch.cuda.is_available() else "cpu", "n": args.n, "k": args.k, "rerank_weights": weights or dict(DecodeConfig().weights),
            "temperature": DecodeConfig().temperature, "top_p": DecodeConfig().top_p, "limit": args.limit, "copy_bias": args.copy_bias,
            "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python -m scripts.eval_all", *(argv or sys.argv[1:])])}
    plots_rel = {k: [str(Path(p).relative_to(out)) for p in v] for k, v in plots.items()}
    table = write_reports(records, out, meta, plots_rel)
    print(table)
    print(f"{time.perf_counter() - t0:.0f} s; report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
