"""Scoring candidates without ground truth: heuristics and render-and-compare.

* ``heuristic_score``: the study's basic heuristics: mean token log-probability, a length
  prior, structural sanity (every sketch is used, extrusions are non-zero, ``solid`` assigned).
* ``render_compare``: render the executed candidate in the input's style (``cad.render``) and
  compare with the input image: silhouette IoU and agreement of edge pixels (dilated by one
  pixel), at the input's resolution, and the cosine similarity of the retrieval index's pixel
  embedding (64 px ink), the measure by which retrieval picks its nearest training image.
* ``combined_score``: a weighted sum (weights in the decoding config); non-executable candidates
  score ``-inf``. The reward module plugs in here as the scorer at inference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cad.render import Style, render_geometry, silhouette
from cad.sandbox import ExecResult
from decoding.retrieval import embed

# Fitted on held-out synthetic images (scripts/rerank_correlation.py on a validation split, see
# docs/results/rerank_correlation.json): for the CPU-trained model the silhouette IoU tracks the
# true IoU best (Spearman 0.81) and its own log-probability anti-correlates (-0.22: it prefers its
# own samples over better retrieved programs). Refit for a new model; the decoding config overrides.
RENDER_TERMS = ("silhouette", "edges", "pixel")  # the terms that need the candidate rendered


def needs_render(weights: dict) -> bool:
    return any(weights.get(t) for t in RENDER_TERMS)


DEFAULT_WEIGHTS = {"logprob": 0.0, "sanity": 0.0, "silhouette": 1.0, "edges": 0.0, "pixel": 0.0}


@dataclass
class Candidate:
    code: str
    logprob: float = 0.0
    tokens: int = 1
    source: str = "beam"
    result: ExecResult | None = None
    scores: dict = field(default_factory=dict)
    total: float = float("-inf")


def sanity(code: str) -> float:
    """Fraction of structural checks passed: sketches used, extrusions non-zero, solid assigned."""
    sketches = set(re.findall(r"^(wp_sketch\d+)\s*=", code, re.M))
    used = {s for s in sketches if re.search(rf"\b{s}\.(add|moveTo|circle|rect|box)", code)}
    extrudes = re.findall(r"\.extrude\(\s*(-?[\d.e-]+)", code)
    checks = [
        bool(re.search(r"^solid\s*=", code, re.M)),
        not sketches or used == sketches,
        all(abs(float(x)) > 1e-9 for x in extrudes) if extrudes else True,
    ]
    return sum(checks) / len(checks)


def heuristic_score(c: Candidate) -> dict:
    return {"logprob": c.logprob / max(c.tokens, 1), "sanity": sanity(c.code)}


def _edges(img: np.ndarray) -> np.ndarray:
    dark = (np.asarray(img)[..., :3] < 60).all(-1)
    out = dark.copy()
    out[1:] |= dark[:-1]
    out[:-1] |= dark[1:]
    out[:, 1:] |= dark[:, :-1]
    out[:, :-1] |= dark[:, 1:]
    return out


def render_compare(result: ExecResult, image: Image.Image) -> dict:
    """Silhouette IoU and edge-pixel IoU between the candidate's render and the input image."""
    target = np.asarray(image.convert("RGB"))
    ours = render_geometry(result.geometry, Style(size=target.shape[0]))
    sa, sb = silhouette(target), silhouette(ours)
    union = (sa | sb).sum()
    ea, eb = _edges(target), _edges(ours)
    e_union = (ea | eb).sum()
    pixel = embed([image, Image.fromarray(ours)])
    return {"silhouette": float((sa & sb).sum() / union) if union else 0.0,
            "edges": float((ea & eb).sum() / e_union) if e_union else 0.0,
            "pixel": float(pixel[0] @ pixel[1])}


def combined_score(c: Candidate, image: Image.Image | None, weights: dict | None = None) -> float:
    """Weighted sum of the heuristic and render-and-compare terms; -inf unless executable."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    if c.result is None or not c.result.executable:
        c.scores, c.total = {}, float("-inf")
        return c.total
    c.scores = heuristic_score(c)
    if image is not None and c.result.geometry is not None and needs_render(w):
        c.scores.update(render_compare(c.result, image))
    c.total = float(sum(w.get(k, 0.0) * v for k, v in c.scores.items()))
    return c.total
