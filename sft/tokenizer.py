"""Program tokenizer: CodeT5's where available, otherwise a number-aware byte-level BPE.

The number-aware tokenizer is built for canonical programs (``cad.programs.canonicalize`` with 3
decimals and DeepCAD's 1/256 grid kept exact): every number in [-2, 2] at a 0.001 step, and every
multiple of 1/256 there (73% of GenCAD's numbers), is one token of its own (an added token,
matched before the BPE, longest match first), so predicting a coordinate is one classification over a few
thousand bins instead of a string of digit pieces. The byte-level BPE, trained on the text
*between* numbers, covers the rest (identifiers, punctuation) and any rare number outside the
range, so every program round-trips exactly. Special tokens: ``<pad>`` (also T5's decoder start),
``</s>`` and ``<unk>``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cad.programs import NUMBER_RE, canonicalize, format_number

log = logging.getLogger(__name__)
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
NUMBER_DECIMALS = 3
NUMBER_GRID = 256
NUMBER_RANGE = 2.0


def number_tokens(decimals: int = NUMBER_DECIMALS, bound: float = NUMBER_RANGE, grid: int = NUMBER_GRID) -> list[str]:
    step = 10 ** decimals
    values = {format_number(v / step, decimals) for v in range(-int(bound * step), int(bound * step) + 1)}
    values |= {format_number(v / grid, 10) for v in range(-int(bound * grid), int(bound * grid) + 1)}
    return sorted(values)


def canonical_target(code: str, grid: int | None = NUMBER_GRID) -> str:
    """The program text the model is trained on and writes (``grid=None``: 3 decimals throughout,
    the form of models trained before the 1/256 grid was kept exact)."""
    return canonicalize(code, NUMBER_DECIMALS, grid=grid)


def _between_numbers(programs: Iterable[str]) -> Iterable[str]:
    for code in programs:
        yield from (piece for piece in NUMBER_RE.split(code) if piece)


def train_tokenizer(programs: Iterable[str], vocab_size: int = 1000, canonical: bool = True) -> PreTrainedTokenizerFast:
    """Train the number-aware BPE on (canonicalised) training programs."""
    texts = [canonical_target(p) if canonical else p for p in programs]
    tok = Tokenizer(models.BPE(unk_token=None))
    # no regex pre-split: merges may span punctuation, so glue such as ").lineTo(" becomes one token
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_between_numbers(texts), trainer)
    tok.add_tokens([AddedToken(n, normalized=False, single_word=False) for n in number_tokens()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def load_codet5_tokenizer(name: str = "Salesforce/codet5-small") -> PreTrainedTokenizerFast | None:
    """CodeT5's tokenizer from a local path or the hub; None (with one log line) if unavailable."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - offline or missing: fall back to our own tokenizer
        log.info("tokenizer %s unavailable (%s); training a number-aware BPE instead", name, type(exc).__name__)
        return None


def build_tokenizer(kind: str, programs: Iterable[str], vocab_size: int = 1000, save_dir: str | Path | None = None):
    """``kind``: 'number_bpe' (ours) or a CodeT5 name/path (falls back to ours when unavailable)."""
    tok = None if kind == "number_bpe" else load_codet5_tokenizer(kind)
    if tok is None:
        tok = train_tokenizer(programs, vocab_size)
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok
