"""Training examples: images as uint8 arrays and programs as token ids, held in memory.

Rows whose image cannot be read or whose program is empty are reported by id and skipped, never
silently; programs longer than ``max_target_length`` are truncated and counted.

For a retrieval-conditioned model each example also holds the token lists of its nearest training
programs (``attach_neighbours``); ``collate`` then adds ``retrieved_ids`` and
``retrieved_attention_mask``: k of them drawn at random among the pool when training (none at all
with probability ``none_prob``), the k nearest in order otherwise.

Edit examples (``attach_edits``, training only): with probability ``edit_prob`` one of the k drawn
programs is replaced by a copy of the example's own program with its numbers perturbed
(``cad.programs.perturb``): copying its structure and correcting its numbers from the image is what
lowers the loss on such an example, the edit the model is asked to make at inference
(``scripts/retrieval_use.py`` measures how much a model reads its retrieved programs).
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cad.data import to_image, undecoded
from cad.programs import normalize_scale
from sft.image_processing import ImageProcessor
from sft.tokenizer import canonical_target

log = logging.getLogger(__name__)


@dataclass
class RetrievalSpec:
    k: int  # retrieved programs per example
    none_prob: float  # training only: share of examples given none
    eos_id: int  # a lone EOS stands for "no retrieved program"
    pad_id: int
    max_length: int
    edit_prob: float = 0.0  # training only: share of examples given a perturbed copy of their own program


@dataclass
class Examples:
    ids: list[str]
    images: np.ndarray  # (N, C, H, W) uint8
    tokens: list[list[int]]  # each starts with the decoder start token and ends with eos
    codes: list[str]  # target programs as trained on (canonical when enabled)
    skipped: list[dict] = field(default_factory=list)
    truncated: int = 0
    neighbours: list[list[list[int]]] | None = None  # per example: token lists of its nearest programs, best first
    edits: list[list[list[int]]] | None = None  # per example: token lists of perturbed copies of its own program
    retrieval: RetrievalSpec | None = None

    def __len__(self) -> int:
        return len(self.ids)


def target_text(code: str, canonical: bool, scale: float | None = None) -> str:
    """A program as the model writes and reads it: rescaled to ``scale`` (``cad.programs.normalize_scale``)
    when given, then in canonical form when ``canonical``."""
    code = normalize_scale(code, scale) if scale else code
    return canonical_target(code) if canonical else code


def _map_in_order(fn, items, workers: int, chunksize: int):
    """``fn`` over ``items``, in order: in ``workers`` forked processes when above 1, else here."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(fn, items, chunksize=chunksize)


def token_lists(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids followed by EOS, tokenized in one batch."""
    if not texts:
        return []
    return [t + [tokenizer.eos_token_id] for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _prepare_row(row: tuple, processor: ImageProcessor, canonical: bool, scale: float | None) -> tuple:
    """(id, image array or None, target text or the reason the row is skipped) of one undecoded row."""
    rid, code, image = row
    if not code.strip():
        return rid, None, "empty program"
    try:
        arr = processor.to_array(to_image(image))
    except Exception as exc:  # noqa: BLE001 - any unreadable image is reported and skipped
        return rid, None, f"unreadable image: {type(exc).__name__}: {exc}"
    return rid, arr, target_text(code, canonical, scale)


def build_examples(ds, processor: ImageProcessor, tokenizer, max_length: int, canonical: bool,
                   start_token_id: int, desc: str = "prepare", scale: float | None = None,
                   workers: int = 0) -> Examples:
    """Decode the images and rewrite the programs of ``ds`` (in ``workers`` forked processes when
    above 1, in order), then tokenize all programs in one batch."""
    rows = ((str(r.get("deepcad_id")), r.get("cadquery") or "", r.get("image")) for r in undecoded(ds))
    prepare = functools.partial(_prepare_row, processor=processor, canonical=canonical, scale=scale)
    ids, images, codes, skipped = [], [], [], []
    for rid, arr, text in tqdm(_map_in_order(prepare, rows, workers, 64), total=len(ds), desc=desc, unit="row", leave=False):
        if arr is None:
            skipped.append({"id": rid, "reason": text})
            continue
        ids.append(rid)
        images.append(arr)
        codes.append(text)
    tokens, truncated = [], 0
    for body in token_lists(tokenizer, codes):
        tok = [start_token_id] + body
        if len(tok) > max_length:
            tok = tok[: max_length - 1] + [tokenizer.eos_token_id]
            truncated += 1
        tokens.append(tok)
    for s in skipped:
        log.warning("skipped row %s: %s", s["id"], s["reason"])
    if truncated:
        log.warning("%d programs truncated to %d tokens", truncated, max_length)
    shape = (0, processor.channels, processor.size, processor.size)
    return Examples(ids, np.stack(images) if images else np.zeros(shape, np.uint8), tokens, codes, skipped, truncated)


def program_tokens(tokenizer, code: str, canonical: bool = True, scale: float | None = None) -> list[int]:
    """A program as the model reads it among retrieved programs: its target tokens and EOS."""
    return token_lists(tokenizer, [target_text(code, canonical, scale)])[0]


def attach_neighbours(ex: Examples, neighbour_rows: np.ndarray, bank: list[list[int]], spec: RetrievalSpec) -> None:
    """Give example i the token lists ``bank[j]`` for j in ``neighbour_rows[i]`` (-1 skipped)."""
    ex.neighbours = [[bank[j] for j in row if j >= 0] for row in neighbour_rows]
    ex.retrieval = spec


def _perturbed_copies(item: tuple, variants: int, sigma: float, share: float, seed: int) -> list[str]:
    from cad.programs import perturb
    from sft.tokenizer import NUMBER_DECIMALS

    i, code = item
    return [perturb(code, np.random.default_rng([seed, i, v]), sigma, NUMBER_DECIMALS, share) for v in range(variants)]


def attach_edits(ex: Examples, tokenizer, variants: int, sigma: float, share: float, seed: int, workers: int = 0) -> None:
    """Give every example ``variants`` perturbed copies of its own (trained-on) program, as token
    lists; seeded by ``seed`` and the row's position, so the same data gives the same copies
    (in ``workers`` forked processes when above 1)."""
    copies = functools.partial(_perturbed_copies, variants=variants, sigma=sigma, share=share, seed=seed)
    flat = token_lists(tokenizer, [t for row in _map_in_order(copies, enumerate(ex.codes), workers, 256) for t in row])
    ex.edits = [flat[i * variants:(i + 1) * variants] for i in range(len(ex))]


def pack_retrieved(choices: list[list[list[int]]], spec: RetrievalSpec) -> dict[str, torch.Tensor]:
    """``retrieved_ids`` / ``retrieved_attention_mask`` from each row's chosen token lists,
    concatenated and cut at ``spec.max_length`` (a lone EOS for a row with none)."""
    rows = []
    for chosen in choices:
        seq = [t for toks in chosen for t in toks][: spec.max_length] or [spec.eos_id]
        rows.append(seq)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), spec.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"retrieved_ids": ids, "retrieved_attention_mask": mask}


def choose_neighbours(pool: list[list[int]], spec: RetrievalSpec, rng: np.random.Generator | None,
                      edits: list[list[int]] | None = None) -> list[list[int]]:
    """The k nearest in order (no rng), or k drawn at random from the pool (none with ``none_prob``),
    one of them then replaced by one of ``edits`` with probability ``edit_prob``."""
    if rng is None:
        return pool[: spec.k]
    if not pool or rng.random() < spec.none_prob:
        return []
    pick = rng.choice(len(pool), size=min(spec.k, len(pool)), replace=False)
    chosen = [pool[j] for j in pick]
    if edits and spec.edit_prob > 0 and rng.random() < spec.edit_prob:
        chosen[int(rng.integers(len(chosen)))] = edits[int(rng.integers(len(edits)))]
    return chosen


def collate(ex: Examples, index: np.ndarray | list[int], pad_id: int, shift: int = 0,
            rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """A batch: pixel_values, input_ids, attention_mask, labels (pad positions -100), and for a
    retrieval-conditioned model retrieved_ids and retrieved_attention_mask."""
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
    batch = {"pixel_values": ImageProcessor.normalise(imgs), "input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if ex.retrieval is not None and ex.neighbours is not None and ex.retrieval.k > 0:
        edits = ex.edits if rng is not None and ex.edits is not None else None
        batch.update(pack_retrieved([choose_neighbours(ex.neighbours[i], ex.retrieval, rng, edits[i] if edits else None)
                                     for i in index], ex.retrieval))
    return batch


def add_retrieval(train_ds, val_ds, train_ex: Examples, val_ex: Examples, tokenizer, canonical: bool, k: int,
                  pool: int, none_prob: float, max_length: int, embedding: str, dims: int, index_path=None,
                  meta: dict | None = None, scale: float | None = None):
    """Index the training rows (``decoding.retrieval``), give every training example its ``pool``
    nearest other training programs and every validation example its ``pool`` nearest training
    programs; returns the index (saved to ``index_path`` when given, reused from there if it
    indexes the same rows)."""
    from decoding.retrieval import RetrievalIndex

    index = None
    if index_path is not None and Path(index_path).exists():
        index = RetrievalIndex.load(index_path)
        if index.ids != [str(i) for i in train_ds["deepcad_id"]] or index.embedding != embedding:
            index = None
    if index is None:
        index = RetrievalIndex.from_rows(train_ds, embedding, dims, meta)
        if index_path is not None:
            index.save(index_path)
    # the bank holds the training programs as the model reads them: the texts build_examples made, by id
    text_of = dict(zip(train_ex.ids, train_ex.codes))
    texts = [text_of.get(rid) or target_text(code, canonical, scale) for rid, code in zip(index.ids, index.programs)]
    bank = token_lists(tokenizer, texts)
    spec = RetrievalSpec(k, none_prob, tokenizer.eos_token_id, tokenizer.pad_token_id, max_length)
    row_of = {rid: i for i, rid in enumerate(index.ids)}
    neighbours = index.training_neighbours(pool)
    attach_neighbours(train_ex, neighbours[[row_of[i] for i in train_ex.ids]], bank, spec)
    if len(val_ex):
        val_rows = {str(r["deepcad_id"]): r["image"] for r in undecoded(val_ds)}
        queries = index.embed([val_rows[i] for i in val_ex.ids])
        attach_neighbours(val_ex, index.search(queries, pool)[0], bank, spec)
    return index
