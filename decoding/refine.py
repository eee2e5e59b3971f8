"""Refinement: adjust a chosen program's numbers by a short search against the input image.

No ground truth: each trial program is executed in the sandbox, rendered in the input's style
and scored by ``decoding.rerank.render_compare``, weighted by ``objective`` (``decoding.predict``
passes the reranker's render-term weights, so refinement climbs the reward that chose the program;
the silhouette IoU alone when none is given). Greedy coordinate search over groups of
numbers that move together, GenCAD's degrees of freedom that a render shows:

- ``depth``: each extrusion depth;
- ``sketch``: all loop coordinates of one sketch, scaled together (its size against the depths);
- ``axes``: the x and the y coordinates of one sketch's points, each scaled alone (its aspect);
- ``radii``: the radii of one sketch's circles, scaled together (its holes and bosses);
- ``world``: the whole part stretched along one world axis (``cad.programs.stretch_spans``): plane
  origins, loop coordinates and depths that lie on that axis, so all bodies stay attached.

The renderer fits the part to the frame, so the overall scale is invisible; proportions are what
the search can fix (``refine_groups`` of the decoding config picks the groups). The trials of one
group (``factors``, default ``FACTORS``) run in parallel on the pool, and the best of them is kept when it raises the
objective.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from cad.programs import sketch_numbers, stretch_spans
from cad.sandbox import ExecOptions, SandboxPool
from decoding.rerank import RenderTarget, render_compare, weighted

EXTRUDE = re.compile(r"\.extrude\(\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
FACTORS = (1.25, 0.8, 1.1, 0.91)
ALL_GROUPS = ("depth", "sketch", "axes", "radii", "world")
DEFAULT_GROUPS = ("depth", "sketch", "axes", "radii")
SILHOUETTE = {"silhouette": 1.0}

Span = tuple[int, int]


@dataclass
class Refinement:
    code: str
    score: float  # the objective of the refined program's render against the input
    start_score: float
    evaluations: int


def parameter_groups(code: str, groups: tuple[str, ...] = DEFAULT_GROUPS) -> list[list[Span]]:
    """Groups of number spans that move together, in a fixed order (world axes, then depths)."""
    unknown = set(groups) - set(ALL_GROUPS)
    if unknown:
        raise ValueError(f"unknown refinement groups {sorted(unknown)}: choose from {ALL_GROUPS}")
    out = [spans for spans in stretch_spans(code).values()] if "world" in groups else []
    if "depth" in groups:
        out += [[m.span(1)] for m in EXTRUDE.finditer(code)]
    for numbers in sketch_numbers(code).values():
        if "sketch" in groups:
            out.append([s for _, s in numbers])
        if "axes" in groups:
            out += [[s for role, s in numbers if role == axis] for axis in "xy"]
        if "radii" in groups:
            out.append([s for role, s in numbers if role == "r"])
    return [g for g in out if any(float(code[a:b]) != 0 for a, b in g)]  # scaling zeros changes nothing


def _scaled(code: str, spans: list[Span], factor: float) -> str:
    out, last = [], 0
    for a, b in sorted(spans):
        out += [code[last:a], f"{float(code[a:b]) * factor:.6g}"]
        last = b
    return "".join(out) + code[last:]


def refine(code: str, image: Image.Image, pool: SandboxPool, max_evaluations: int = 24,
           timeout: float = 5.0, objective: dict[str, float] | None = None,
           groups: tuple[str, ...] = DEFAULT_GROUPS, factors: tuple[float, ...] = FACTORS,
           frame: tuple[float, float, float] | None = None) -> Refinement:
    """Greedy coordinate search; returns the input program unchanged when nothing renders closer.
    ``frame``: draw every trial there (``cad.render``) instead of fit to the window (a prism chosen
    by where the image shows it, ``decoding.prism.program_frame``)."""
    opts = ExecOptions(timeout=timeout, want_geometry=True)
    weights = objective or SILHOUETTE
    target = RenderTarget.of(image)

    def scores(programs: list[str]) -> list[float]:
        return [weighted(render_compare(res, target, weights, frame=frame), weights) if res.executable and res.geometry is not None
                else float("-inf") for res in pool.imap(programs, opts)]

    best_code, best = code, scores([code])[0]
    start, evaluations = best, 1
    improved = True
    while improved and evaluations < max_evaluations:
        improved = False
        for i in range(len(parameter_groups(best_code, groups))):
            spans = parameter_groups(best_code, groups)[i]  # positions move when an earlier group changed
            trials = [_scaled(best_code, spans, f) for f in factors[: max_evaluations - evaluations]]
            if not trials:
                break
            evaluations += len(trials)
            s, trial = max(zip(scores(trials), trials))
            if s > best + 1e-4:
                best_code, best, improved = trial, s, True
    return Refinement(best_code, best, start, evaluations)
