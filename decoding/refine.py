"""Refinement: adjust a chosen program's numbers by a short search against the input image.

No ground truth: each trial program is executed in the sandbox, rendered in the input's style
and scored by ``decoding.rerank.render_compare`` (silhouette IoU, the term that tracks the true
IoU best). Greedy coordinate search over two kinds of parameter, GenCAD's degrees of freedom
that a render shows: each extrusion depth, and the size of each sketch's loops (all loop
coordinates of one sketch scaled together). The renderer fits the part to the frame, so the
overall scale is invisible; proportions are what the search can fix. A change is kept only when
the silhouette IoU rises.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from cad.programs import NUMBER_RE
from cad.sandbox import ExecOptions, SandboxPool
from decoding.rerank import render_compare

EXTRUDE = re.compile(r"\.extrude\(\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
LOOP = re.compile(r"^(loop\d+)\s*=\s*(wp_sketch\d+)(\..*)$", re.M)
FACTORS = (1.25, 0.8, 1.1, 0.91)


@dataclass
class Refinement:
    code: str
    score: float  # silhouette IoU of the refined program's render against the input
    start_score: float
    evaluations: int


def _spans(code: str) -> list[list[tuple[int, int]]]:
    """Groups of number spans that move together: one per extrusion depth, one per sketch's loops."""
    groups = [[m.span(1)] for m in EXTRUDE.finditer(code)]
    sketches: dict[str, list[tuple[int, int]]] = {}
    for m in LOOP.finditer(code):
        start = m.start(3)
        sketches.setdefault(m.group(2), []).extend((start + a, start + b) for a, b in
                                                   (n.span() for n in NUMBER_RE.finditer(m.group(3))))
    return groups + [spans for spans in sketches.values() if spans]


def _scaled(code: str, spans: list[tuple[int, int]], factor: float) -> str:
    out, last = [], 0
    for a, b in sorted(spans):
        out += [code[last:a], f"{float(code[a:b]) * factor:.6g}"]
        last = b
    return "".join(out) + code[last:]


def refine(code: str, image: Image.Image, pool: SandboxPool, max_evaluations: int = 24,
           timeout: float = 5.0) -> Refinement:
    """Greedy coordinate search; returns the input program unchanged when nothing renders closer."""
    opts = ExecOptions(timeout=timeout, want_geometry=True)

    def score(program: str) -> float:
        res = pool.run(program, opts)
        if not res.executable or res.geometry is None:
            return -1.0
        return render_compare(res, image)["silhouette"]

    best_code, best = code, score(code)
    start, evaluations = best, 1
    improved = True
    while improved and evaluations < max_evaluations:
        improved = False
        for i in range(len(_spans(best_code))):
            spans = _spans(best_code)[i]  # positions move when an earlier parameter changed
            for factor in FACTORS:
                if evaluations >= max_evaluations:
                    break
                trial = _scaled(best_code, spans, factor)
                s = score(trial)
                evaluations += 1
                if s > best + 1e-4:
                    best_code, best, improved = trial, s, True
                    break  # next parameter; the span positions of this one changed
    return Refinement(best_code, best, start, evaluations)
