"""One reward for reranking, preference pairs and RL: the terms of a candidate program and their sum.

Every candidate is executed in the sandbox; ``candidate_terms`` describes it by

* ``executed`` (1 when it leaves a valid solid with positive volume, else 0) and ``grammatical``
  (1 when it parses under the ``cadquery`` grammar);
* ``logprob``, the model's mean token log-probability of it, and ``sanity``, the share of
  structural checks it passes (sketches used, extrusions non-zero, ``solid`` assigned);
* render-and-compare against the input image (no ground truth needed): ``silhouette`` IoU and
  ``edges`` IoU of its render in the input's style, ``edges_coarse`` (the edge IoU at 1/8 of the
  resolution), ``edge_distance`` (1 minus the mean symmetric distance between the two edge
  drawings, in sixteenths of the image width: a smooth measure where the IoU of thin lines is
  all or nothing), and ``pixel``, the cosine similarity of the retrieval index's 64 px embedding
  of both; ``critic``, where the input's ``RenderTarget`` carries one, the score a small CNN trained
  to rank candidates by true IoU gives both drawings (``reward.critic``);
* ``iou``, the exact Best IoU against the ground-truth program, when there is one.

A term is computed only when its weight is non-zero (or it is asked for), and
``total = sum_t weight_t * term_t``. The weights name the use: ``GT_WEIGHTS`` (preference pairs and
RL on rows with a program), ``IMAGE_WEIGHTS`` (RL on images without one: render-and-compare stands
in for the IoU) and the reranker's (``decoding.rerank.DEFAULT_WEIGHTS``, fitted on validation data
by ``scripts/rerank_correlation.py``, which puts the model's log-probability in the same sum).
``score`` runs a batch; ``shape="cadrl"`` is the shape of published CAD RL work instead: -10
when the program does not execute, else 10 x IoU (ground-truth IoU, or the silhouette IoU).
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cad.geometry import best_iou
from cad.sandbox import ExecOptions, ExecResult, Geometry, SandboxPool

TERMS = ("executed", "grammatical", "logprob", "sanity", "silhouette", "edges", "edges_coarse", "edge_distance",
         "pixel", "critic", "framing_error", "iou")
RENDER_TERMS = ("silhouette", "edges", "edges_coarse", "edge_distance", "pixel")  # the terms that need the candidate rendered
CRITIC = "critic"  # rendered too, but only where the target carries a learned critic (reward.critic)
RENDERED_TERMS = (*RENDER_TERMS, CRITIC)  # every term whose weight means the candidate is rendered
GT_WEIGHTS = {"executed": 1.0, "grammatical": 0.5, "iou": 5.0}
IMAGE_WEIGHTS = {"executed": 1.0, "grammatical": 0.5, "silhouette": 5.0}
DEFAULT_WEIGHTS = GT_WEIGHTS  # the weights ``score`` uses with a reference (IMAGE_WEIGHTS without)


@dataclass
class Reward:
    total: float
    executed: bool
    grammatical: bool
    iou: float  # ground-truth IoU, or the silhouette IoU against the image without ground truth
    details: dict = field(default_factory=dict)
    terms: dict = field(default_factory=dict)


def sanity(code: str) -> float:
    """Fraction of structural checks passed: sketches used, extrusions non-zero, solid assigned."""
    sketches = set(re.findall(r"^(wp_sketch\d+)\s*=", code, re.M))
    used = {s for s in sketches if re.search(rf"\b{s}\.(add|moveTo|circle|rect|box)", code)}
    extrudes = re.findall(r"\.extrude\(\s*(-?[\d.e-]+)", code)
    checks = [
        bool(re.search(r"^solid\s*=", code, re.M)),
        not sketches or used == sketches,
        all(_nonzero_number(x) for x in extrudes) if extrudes else True,
    ]
    return sum(checks) / len(checks)


def _nonzero_number(text: str) -> bool:
    """A model can write a malformed number (``6-1.59``): that is a failed check, not an error."""
    try:
        return abs(float(text)) > 1e-9
    except ValueError:
        return False


def drawn_lines(img: np.ndarray) -> np.ndarray:
    """The drawn edges of a render: its near-black pixels (every channel below 60)."""
    a = np.asarray(img)
    return (a[..., 0] < 60) & (a[..., 1] < 60) & (a[..., 2] < 60)  # a channel at a time: about 9x faster than .all(-1)


def _edges(lines: np.ndarray) -> np.ndarray:
    """The drawn edges (``drawn_lines``) dilated by one pixel."""
    out = lines.copy()
    out[1:] |= lines[:-1]
    out[:-1] |= lines[1:]
    out[:, 1:] |= lines[:, :-1]
    out[:, :-1] |= lines[:, 1:]
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 0 when both are empty."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def _coarse(mask: np.ndarray, factor: int = 8) -> np.ndarray:
    """Cells of ``factor`` x ``factor`` pixels that hold any of ``mask``."""
    h, w = (mask.shape[0] // factor) * factor, (mask.shape[1] // factor) * factor
    return mask[:h, :w].reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


def edge_distance(a: np.ndarray, b: np.ndarray, to_a: np.ndarray | None = None,
                  a_points: np.ndarray | None = None) -> float:
    """1 - (mean distance from each line pixel of one drawing to the other's nearest, both ways,
    averaged) / (width / 16), floored at 0; 0 when either drawing has no lines. ``to_a``: the
    distance of every pixel to ``a``'s nearest line pixel, and ``a_points``, ``np.argwhere(a)``,
    when already known."""
    if not a.any() or not b.any():
        return 0.0
    d = (_mean_distance(a, b, a_points) + (to_a[b].mean() if to_a is not None else _mean_distance(b, a))) / 2.0
    return float(max(0.0, 1.0 - d / (a.shape[1] / 16.0)))


def _mean_distance(src: np.ndarray, dst: np.ndarray, src_points: np.ndarray | None = None) -> float:
    """The mean over ``src``'s pixels (row by row; ``src_points``, their ``np.argwhere``, when
    already known) of the Euclidean distance to ``dst``'s nearest pixel: the same numbers as
    ``distance_transform_edt(~dst)[src].mean()``, from a k-d tree of ``dst``'s pixels, 4x faster
    for line drawings."""
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(np.argwhere(dst)).query(np.argwhere(src) if src_points is None else src_points)
    return float(distances.mean())


@dataclass(frozen=True)
class RenderTarget:
    """The input image's side of ``render_compare``, computed once for every candidate (and every
    refinement trial) compared with it."""

    image: Image.Image
    pixels: np.ndarray
    silhouette: np.ndarray
    edges: np.ndarray
    lines: np.ndarray
    coarse: np.ndarray
    to_lines: np.ndarray  # each pixel's distance to the nearest line pixel
    line_points: np.ndarray  # np.argwhere(lines)
    embedding: np.ndarray
    critic: object | None = None  # a reward.critic.RenderCritic: candidates then get the ``critic`` term
    grey: np.ndarray | None = None  # the input as the critic reads it

    @classmethod
    def of(cls, image: Image.Image | RenderTarget, critic=None) -> RenderTarget:
        """The target of ``image`` (a target is returned as it is, given ``critic`` or not)."""
        from scipy.ndimage import distance_transform_edt

        from cad.render import silhouette
        from decoding.retrieval import embed

        if isinstance(image, cls):
            return image
        pixels = np.asarray(image.convert("RGB"))
        lines = drawn_lines(pixels)
        grey = None
        if critic is not None:
            from reward.critic import grey as to_grey

            grey = to_grey(pixels)
        return cls(image, pixels, silhouette(pixels), _edges(lines), lines, _coarse(lines),
                   distance_transform_edt(~lines), np.argwhere(lines), embed([image])[0], critic, grey)


def render_compare(result: ExecResult, image: Image.Image | RenderTarget, terms: Collection[str] = RENDERED_TERMS,
                   frame: tuple[float, float, float] | None = None) -> dict:
    """The render terms (module docstring) of the candidate's render (``cad.render``, at the
    input's resolution, fit to the window or placed by ``frame``) against the input image (or its
    ``RenderTarget``); only those of ``terms``."""
    from cad.render import Style, render_geometry

    target = RenderTarget.of(image)
    return compare_render(render_geometry(result.geometry, Style(size=target.pixels.shape[0]), frame), target, terms)


def compare_render(ours: np.ndarray, target: RenderTarget, terms: Collection[str] = RENDERED_TERMS) -> dict:
    """The render terms of a candidate already rendered (``ours``, the input's size) against
    ``target``: those of ``terms`` (the critic's only where the target carries one)."""
    from cad.render import silhouette
    from decoding.retrieval import embed

    lines = drawn_lines(ours)
    compute = {"silhouette": lambda: mask_iou(target.silhouette, silhouette(ours)),
               "edges": lambda: mask_iou(target.edges, _edges(lines)),
               "edges_coarse": lambda: mask_iou(target.coarse, _coarse(lines)),
               "edge_distance": lambda: edge_distance(target.lines, lines, target.to_lines, target.line_points),
               "pixel": lambda: float(target.embedding @ embed([Image.fromarray(ours)])[0])}
    out = {t: f() for t, f in compute.items() if t in terms}
    if target.critic is not None and CRITIC in terms:
        from reward.critic import critic_scores, grey

        out[CRITIC] = critic_scores(target.critic, target.grey, [grey(ours)])[0]
    return out


def candidate_terms(code: str, result: ExecResult, weights: dict, image: Image.Image | RenderTarget | None = None,
                    reference: Geometry | None = None, logprob: float | None = None, tokens: int = 1,
                    want: tuple[str, ...] = (), details: dict | None = None,
                    frame: tuple[float, float, float] | None = None) -> dict:
    """The terms of one executed candidate that ``weights`` (non-zero) or ``want`` ask for and the
    inputs allow: render terms need ``image`` and a geometry, ``iou`` needs ``reference``, ``logprob``
    a model score. ``executed`` and ``sanity`` are always there; ``details`` gets the IoU method.
    ``frame``: where the image shows the candidate (a fit read off it, ``decoding.prism``); its
    render terms are then those of the better of that frame and the window fit (by ``weights``),
    and ``framed`` says which (1: the frame). A fit of part of the picture (a block without the
    thin rod that widens the picture's frame) fills the window alone, larger than the picture
    shows it, and only its own frame compares it where it is. Compared where its frame draws it,
    ``framing_error`` is the pixels by which the picture's own framing (the window fit of the
    solid's bounding box, ``cad.render.frame_offset``) would draw it away from there: a solid
    whose hidden extent differs from the pictured part's moves the window fit. It is 0 compared
    at the window fit, and weighs in the choice between the two."""
    need = {t for t, w in weights.items() if w} | set(want)
    terms = {"executed": float(result.executable), "sanity": sanity(code)}
    if "grammatical" in need:
        from decoding.grammar import validate

        terms["grammatical"] = float(validate(code).ok)
    if logprob is not None and np.isfinite(logprob):  # NaN: the model did not score this candidate
        terms["logprob"] = logprob / max(tokens, 1)
    if result.executable and result.geometry is not None:
        if image is not None and need & set(RENDERED_TERMS):
            rendered = render_compare(result, image)
            if frame is not None:
                from cad.render import frame_offset

                placed = {**render_compare(result, image, frame=frame),
                          "framing_error": frame_offset(result.geometry, frame)}
                better = weighted(placed, weights) > weighted(rendered, weights)
                rendered = {**(placed if better else {**rendered, "framing_error": 0.0}), "framed": float(better)}
            terms.update(rendered)
        if reference is not None and "iou" in need:
            r = best_iou(result.geometry, reference)
            terms["iou"] = r.iou
            if details is not None:
                details["iou_method"] = r.method
    return terms


def weighted(terms: dict, weights: dict) -> float:
    """sum_t weight_t * term_t over the numeric terms (an absent term counts 0)."""
    return float(sum(w * terms[t] for t, w in weights.items() if w and isinstance(terms.get(t), (int, float))))


def score(candidates: list[str], pool: SandboxPool, reference: str | None = None, image=None,
          weights: dict | None = None, shape: str = "weighted", timeout: float = 5.0,
          logprobs: list[tuple[float, int]] | None = None) -> list[Reward]:
    """Rewards for ``candidates`` against a reference program (``GT_WEIGHTS``) or, without one, the
    input image (``IMAGE_WEIGHTS``); ``weights`` override entries, ``logprobs`` gives each
    candidate's (sum of token log-probabilities, tokens) for a ``logprob`` term."""
    if shape not in ("weighted", "cadrl"):
        raise ValueError(f"unknown reward shape {shape!r}: use 'weighted' or 'cadrl'")
    if reference is None and image is None:
        raise ValueError("score needs a reference program or the input image")
    w = {**(GT_WEIGHTS if reference is not None else IMAGE_WEIGHTS), **(weights or {})}
    if shape == "cadrl":  # only the IoU (or the silhouette standing in for it) is needed
        w = {"iou": 1.0} if reference is not None else {"silhouette": 1.0}
    opts = ExecOptions(timeout=timeout, want_geometry=True)
    gt = pool.run(reference, opts) if reference is not None else None
    if gt is not None and not gt.executable:
        raise ValueError(f"the reference program does not execute ({gt.status}: {gt.error[:120]})")
    rewards = []
    target = RenderTarget.of(image) if image is not None else None
    for i, (code, res) in enumerate(zip(candidates, pool.imap(candidates, opts))):
        lp, n_tok = logprobs[i] if logprobs is not None else (None, 1)
        details = {"status": res.status}
        terms = candidate_terms(code, res, w, image=target, reference=gt.geometry if gt is not None else None,
                                logprob=lp, tokens=n_tok, want=("grammatical",), details=details)
        iou = terms.get("iou", 0.0) if gt is not None else terms.get("silhouette", 0.0)
        if shape == "cadrl":
            total = 10.0 * iou if res.executable else -10.0
        else:
            total = weighted(terms, w)
        details.update({k: v for k, v in terms.items() if k in RENDER_TERMS})
        rewards.append(Reward(total, res.executable, bool(terms["grammatical"]), float(iou), details, terms))
    return rewards
