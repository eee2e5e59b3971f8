"""Grammar-constrained decoding: a transformers ``LogitsProcessor`` backed by llguidance.

At every step each row (a beam, a sample or a batch element) may only emit tokens that keep its
program inside the grammar it is given (one of ``decoding.grammar.GRAMMARS``; callers pass the
decoding config's ``grammar_name``, ``gencad`` by default); end-of-sequence is allowed only where
the program is complete. Matcher states are cached by token prefix, so beams that share a prefix
share work and a reordered beam finds its parent state in one lookup.
"""
from __future__ import annotations

import llguidance
import llguidance.hf
import llguidance.torch as llt
import torch
from transformers import LogitsProcessor

from decoding.grammar import CADQUERY_LARK


class GrammarLogitsProcessor(LogitsProcessor):
    def __init__(self, tokenizer, grammar: str = CADQUERY_LARK, skip_first: int = 1):
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))
        self.grammar = llguidance.LLMatcher.grammar_from_lark(grammar)
        self.root = llguidance.LLMatcher(self.ll_tokenizer, self.grammar)
        if self.root.is_error():
            raise ValueError(f"grammar rejected by llguidance: {self.root.get_error()}")
        self.skip_first = skip_first  # the decoder start token is not part of the program
        self.states: dict[tuple[int, ...], llguidance.LLMatcher] = {}
        self.steps = 0

    def reset(self) -> None:
        self.states = {}

    def _matcher(self, prefix: tuple[int, ...]) -> llguidance.LLMatcher:
        parent = self.states.get(prefix[:-1]) if prefix else None
        if parent is not None:
            m = parent.deep_copy()
            m.consume_token(prefix[-1])
        else:
            m = self.root.deep_copy()
            m.consume_tokens(list(prefix))
        return m

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids.shape[0]
        mask = llt.allocate_token_bitmask(rows, self.ll_tokenizer.vocab_size)
        constrained = torch.zeros(rows, dtype=torch.bool)
        states: dict[tuple[int, ...], llguidance.LLMatcher] = {}
        for i, row in enumerate(input_ids.tolist()):
            prefix = tuple(row[self.skip_first:])
            m = states.get(prefix) or self._matcher(prefix)
            states[prefix] = m
            if m.is_error() or m.is_stopped():
                continue  # a finished row (padding follows): leave it alone
            llt.fill_next_token_bitmask(m, mask, i)
            constrained[i] = True
        self.states = states
        self.steps += 1
        if constrained.any():
            allowed = unpack_bitmask(mask, scores.shape[-1]).to(scores.device)
            allowed[~constrained] = True
            scores = scores.masked_fill(~allowed, float("-inf"))
        return scores


_SHIFTS = torch.arange(32, dtype=torch.int32)


def unpack_bitmask(mask: torch.Tensor, vocab: int) -> torch.Tensor:
    """llguidance's packed int32 bitmask (rows, ceil(V/32)) to a bool tensor (rows, V)."""
    bits = (mask.unsqueeze(-1) >> _SHIFTS) & 1
    return bits.reshape(mask.shape[0], -1)[:, :vocab].bool()
