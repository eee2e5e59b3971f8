"""Reranking candidates without ground truth, by the reward of ``reward.score``.

``combined_score`` gives an executed candidate the terms of ``reward.score.candidate_terms`` (the
model's mean token log-probability, structural ``sanity``, and render-and-compare against the
input image: ``silhouette``, ``edges``, ``pixel``; any other reward term given a weight, such as
``grammatical``) and their weighted sum, the same sum that scores preference pairs and RL
rollouts (where the ground-truth IoU is one more term). Non-executable candidates score ``-inf``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from cad.sandbox import ExecResult
from reward.score import CRITIC, RENDER_TERMS, RENDERED_TERMS, RenderTarget, candidate_terms, render_compare, sanity, weighted  # noqa: F401 - re-exported

# The weights scripts/rerank_correlation.py fitted on 128 images of a validation split for the
# shipped model (models/img2cad-small) with 1 edit and 16 retrieved programs ("fitted_weights" in
# docs/results/rerank_correlation-shipped-k16.json, with each term's correlation with the true IoU;
# edges + pixel before the edge-distance term existed, rerank_correlation-gpu-edit.json). Refit
# for a new model; the decoding config overrides them. ``framing_error`` (pixels; prisms and
# unions read off the picture only) was chosen among 0.001-0.005 on the shipped default's
# candidates for validation rows 0-511 (docs/results/candidate_oracle-val256*-framing.json).
DEFAULT_WEIGHTS = {"logprob": 0.0, "sanity": 0.0, "silhouette": 1.0, "edges": 0.0, "edges_coarse": 0.0,
                   "edge_distance": 1.0, "pixel": 2.0, "framing_error": -0.002}


def parse_weights(text: str, option: str = "--weights") -> dict[str, float]:
    """A ``--weights``-like option: a JSON object of term weights (merged over the config's by the
    caller); ``cad.io.InputError`` naming the option when it is not one."""
    import json

    from cad.io import InputError

    example = '{"silhouette": 2}'
    try:
        weights = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option} {text!r}: not JSON ({exc.msg}); e.g. '{example}'") from None
    if not isinstance(weights, dict) or not all(isinstance(v, (int, float)) for v in weights.values()):
        raise InputError(f"{option} {text!r}: expected a JSON object of numbers, e.g. '{example}'")
    return weights


def check_objective(objective: dict) -> None:
    """A refinement objective weighs one or more render terms (``RENDER_TERMS``); ValueError otherwise."""
    if not objective or set(objective) - set(RENDER_TERMS):
        raise ValueError(f"refine_objective {objective}: weigh one or more of {', '.join(RENDER_TERMS)}")


def parse_objective(text: str) -> dict[str, float]:
    """A ``--refine-objective`` option (``check_objective``); ``cad.io.InputError`` naming the option
    otherwise."""
    from cad.io import InputError

    objective = parse_weights(text, "--refine-objective")
    try:
        check_objective(objective)
    except ValueError as exc:
        raise InputError(f"--refine-objective {text!r}: {exc}") from None
    return objective


def needs_render(weights: dict) -> bool:
    return any(weights.get(t) for t in RENDERED_TERMS)


@dataclass
class Candidate:
    code: str
    logprob: float = 0.0
    tokens: int = 1
    source: str = "beam"
    result: ExecResult | None = None
    scores: dict = field(default_factory=dict)
    total: float = float("-inf")
    frame: tuple[float, float, float] | None = None  # where the image shows it (a fit read off the image: decoding.prism)


def combined_score(c: Candidate, image: Image.Image | RenderTarget | None, weights: dict | None = None) -> float:
    """The reward's weighted sum of the candidate's terms (``reward.score``); -inf unless executable.
    ``weights`` is the whole weighting (a term it does not name weighs 0); None: ``DEFAULT_WEIGHTS``."""
    w = DEFAULT_WEIGHTS if weights is None else weights
    if c.result is None or not c.result.executable:
        c.scores, c.total = {}, float("-inf")
        return c.total
    c.scores = candidate_terms(c.code, c.result, w, image=image, logprob=c.logprob, tokens=c.tokens, frame=c.frame)
    c.total = weighted(c.scores, w)
    return c.total
