"""Template decoding: a retrieval-conditioned model keeps a retrieved program's text and rewrites
only its numbers.

Left free, a conditioned model writes a program like its neighbours but also rewrites what it
should have copied. Here the first retrieved program of each row is the template. At each position
where the template holds a non-number token, that token is forced; where it holds a number token
(``sft.tokenizer``: every number in [-2, 2] on the 0.001 step or the 1/256 grid is one token), the
model chooses among the number tokens, with the template's own number raised by ``bias`` (added to
the scores: 0 lets the model pick freely, a large bias copies the template). As in the edit
examples the model is trained on (``cad.programs.perturb``), 0 and ±1 are kept (plane directions,
sketch origins), and equal numbers stay equal: where the template repeats a number (a corner shared
by two segments, a radius used twice), the repeat is forced to what the model chose at its first
occurrence, so a rectangle stays a rectangle. A number outside that vocabulary (several pieces) is kept as the template has it, and
the program ends where the template ends, so the result always has the template's structure.
"""
from __future__ import annotations

import torch
from transformers import LogitsProcessor

from sft.tokenizer import number_tokens


def number_token_mask(tokenizer) -> torch.Tensor:
    """Bool (vocab,): which token ids are whole numbers a template may change (all but 0 and ±1);
    an error for a tokenizer without number tokens."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in number_tokens() if t in vocab and abs(float(t)) > 1e-9 and abs(abs(float(t)) - 1) > 1e-9]
    if not ids:
        raise ValueError("template decoding needs the number-aware tokenizer (sft.tokenizer), where a number is one token")
    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    mask[ids] = True
    return mask


class TemplateLogitsProcessor(LogitsProcessor):
    """Row i of the batch follows ``templates[i // rows_per_template]`` (token ids ending in EOS)."""

    def __init__(self, templates: list[list[int]], numbers: torch.Tensor, bias: float,
                 rows_per_template: int = 1, skip_first: int = 1):
        self.templates, self.numbers, self.bias = templates, numbers, float(bias)
        self.rows_per_template, self.skip_first = rows_per_template, skip_first
        self.first = [_first_occurrences(t, numbers) for t in templates]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        pos = input_ids.shape[1] - self.skip_first
        rows = [i for i in range(input_ids.shape[0]) if pos < len(self.templates[i // self.rows_per_template])]
        if not rows:
            return scores  # every template has ended: only finished rows (padding) remain
        ids = input_ids.tolist()
        target, free = [], []
        for i in rows:
            t = i // self.rows_per_template
            q = self.first[t][pos]
            target.append(ids[i][q + self.skip_first] if q >= 0 else self.templates[t][pos])  # a repeat copies its first
            free.append(q < 0)
        target = torch.tensor(target, device=scores.device)
        numbers = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)  # the model's vocabulary
        numbers[: len(self.numbers)] = self.numbers[: scores.shape[-1]].to(scores.device)  # may be padded
        is_number = numbers[target] & torch.tensor(free, device=scores.device)
        allowed = torch.zeros(len(rows), scores.shape[-1], dtype=torch.bool, device=scores.device)
        allowed[is_number] = numbers
        allowed[torch.arange(len(rows), device=scores.device), target] = True
        idx = torch.tensor(rows, device=scores.device)
        sub = scores[idx].masked_fill(~allowed, float("-inf"))
        sub[torch.arange(len(rows), device=scores.device), target] += torch.where(is_number, self.bias, 0.0).to(sub.dtype)
        scores = scores.clone()
        scores[idx] = sub
        return scores


def _first_occurrences(template: list[int], numbers: torch.Tensor) -> list[int]:
    """Per position: where the same number token first occurs, if earlier (else -1)."""
    seen: dict[int, int] = {}
    out = []
    for p, tok in enumerate(template):
        is_number = tok < len(numbers) and bool(numbers[tok])
        out.append(seen.get(tok, -1) if is_number else -1)
        if is_number:
            seen.setdefault(tok, p)
    return out
