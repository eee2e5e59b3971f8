"""Training examples: images as uint8 arrays and programs as token ids, held in memory.

Rows whose image cannot be read or whose program is empty are reported by id and skipped, never
silently; programs longer than ``max_target_length`` are truncated and counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from cad.data import to_image, undecoded
from sft.image_processing import ImageProcessor
from sft.tokenizer import canonical_target

log = logging.getLogger(__name__)


@dataclass
class Examples:
    ids: list[str]
    images: np.ndarray  # (N, C, H, W) uint8
    tokens: list[list[int]]  # each starts with the decoder start token and ends with eos
    codes: list[str]  # target programs as trained on (canonical when enabled)
    skipped: list[dict] = field(default_factory=list)
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def target_text(code: str, canonical: bool) -> str:
    return canonical_target(code) if canonical else code


def build_examples(ds, processor: ImageProcessor, tokenizer, max_length: int, canonical: bool,
                   start_token_id: int, desc: str = "prepare") -> Examples:
    ids, images, tokens, codes, skipped, truncated = [], [], [], [], [], 0
    ds = undecoded(ds)
    for row in tqdm(ds, desc=desc, unit="row", leave=False):
        rid = str(row.get("deepcad_id"))
        code = row.get("cadquery") or ""
        if not code.strip():
            skipped.append({"id": rid, "reason": "empty program"})
            continue
        try:
            arr = processor.to_array(to_image(row["image"]))
        except Exception as exc:  # noqa: BLE001 - any unreadable image is reported and skipped
            skipped.append({"id": rid, "reason": f"unreadable image: {type(exc).__name__}: {exc}"})
            continue
        text = target_text(code, canonical)
        tok = [start_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(tok) > max_length:
            tok = tok[: max_length - 1] + [tokenizer.eos_token_id]
            truncated += 1
        ids.append(rid)
        images.append(arr)
        tokens.append(tok)
        codes.append(text)
    for s in skipped:
        log.warning("skipped row %s: %s", s["id"], s["reason"])
    if truncated:
        log.warning("%d programs truncated to %d tokens", truncated, max_length)
    shape = (0, processor.channels, processor.size, processor.size)
    return Examples(ids, np.stack(images) if images else np.zeros(shape, np.uint8), tokens, codes, skipped, truncated)


def collate(ex: Examples, index: np.ndarray | list[int], pad_id: int, shift: int = 0,
            rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """A batch: pixel_values, input_ids, attention_mask, labels (pad positions -100)."""
    imgs = ex.images[np.asarray(index)]
    if shift and rng is not None:  # random translation, background-filled (white)
        out = np.full_like(imgs, 255)
        h, w = imgs.shape[-2:]
        for i in range(len(imgs)):
            dy, dx = rng.integers(-shift, shift + 1, size=2)
            ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
            yd, xd = slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0))
            out[i, :, ys, xs] = imgs[i, :, yd, xd]
        imgs = out
    seqs = [ex.tokens[i] for i in index]
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"pixel_values": ImageProcessor.normalise(imgs), "input_ids": input_ids, "attention_mask": mask, "labels": labels}
