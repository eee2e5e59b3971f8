"""Batched program prediction from images, written as ``{"id", "code", ...}`` JSONL, resumable.

Strategies implemented here: ``greedy`` and ``beam`` (beam 4, the study's baseline). Each output
line carries the strategy, the sequence log-probability and the number of tokens.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cad.data import to_image

log = logging.getLogger(__name__)


@dataclass
class DecodeConfig:
    strategy: str = "beam"
    num_beams: int = 4
    batch_size: int = 16
    max_new_tokens: int = 512
    device: str = "auto"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by an interruption is redone
    return done


def predict(model, tokenizer, processor, rows: list[dict], out_path: str | Path, cfg: DecodeConfig,
            progress: bool = True) -> dict:
    """Decode every row (``{"id", "image"}``) not yet in ``out_path``; append results there."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out)
    todo = [r for r in rows if str(r["id"]) not in done]
    device = next(model.parameters()).device
    kwargs = {"num_beams": cfg.num_beams if cfg.strategy == "beam" else 1}
    t0 = time.perf_counter()
    unreadable = 0
    with out.open("a") as f, tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"decode {cfg.strategy}",
                                  unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start:start + cfg.batch_size]
            images, keep = [], []
            for r in chunk:
                try:
                    images.append(to_image(r["image"]))
                    keep.append(r)
                except Exception as exc:  # noqa: BLE001 - reported per id, never silently dropped
                    unreadable += 1
                    f.write(json.dumps({"id": str(r["id"]), "code": "", "strategy": cfg.strategy,
                                        "error": f"unreadable image: {type(exc).__name__}: {exc}"}) + "\n")
            if keep:
                px = processor(images).to(device)
                gen = model.generate_programs(px, max_new_tokens=cfg.max_new_tokens, **kwargs)
                texts = tokenizer.batch_decode(gen.sequences, skip_special_tokens=True)
                for r, text, lp, seq in zip(keep, texts, gen.logprobs.tolist(), gen.sequences):
                    n_tok = int((seq != tokenizer.pad_token_id).sum())
                    f.write(json.dumps({"id": str(r["id"]), "code": text, "strategy": cfg.strategy,
                                        "logprob": round(lp, 4), "tokens": n_tok}) + "\n")
            f.flush()
            bar.update(len(chunk))
    seconds = time.perf_counter() - t0
    return {"decoded": len(todo), "unreadable": unreadable, "seconds": round(seconds, 2),
            "seconds_per_image": round(seconds / max(len(todo), 1), 4)}
