"""One reward for preference pairs, RL and reranking: execution, grammar validity and IoU.

``score(candidates, reference=..., image=...)`` executes a batch of programs in the sandbox and
returns one ``Reward`` per candidate:

* with a ground-truth program (training): ``iou`` is the exact Best IoU against it;
* without one (inference): ``iou`` is the silhouette IoU of the candidate's render against the
  input image (render-and-compare, ``decoding.rerank.render_compare``).

``shape="weighted"`` (default): ``total = w_exec * executed + w_grammar * grammatical + w_iou * iou``.
``shape="cadrl"``: the shape used by published CAD RL work, -10 when the program does not execute,
else 10 x IoU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from cad.geometry import best_iou
from cad.sandbox import ExecOptions, SandboxPool
from decoding.grammar import validate

DEFAULT_WEIGHTS = {"executed": 1.0, "grammatical": 0.5, "iou": 5.0}


@dataclass
class Reward:
    total: float
    executed: bool
    grammatical: bool
    iou: float
    details: dict = field(default_factory=dict)


def score(candidates: list[str], pool: SandboxPool, reference: str | None = None, image=None,
          weights: dict | None = None, shape: str = "weighted", timeout: float = 5.0) -> list[Reward]:
    """Rewards for ``candidates`` against a reference program or, without one, the input image."""
    if shape not in ("weighted", "cadrl"):
        raise ValueError(f"unknown reward shape {shape!r}: use 'weighted' or 'cadrl'")
    if reference is None and image is None:
        raise ValueError("score needs a reference program or the input image")
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    opts = ExecOptions(timeout=timeout, want_geometry=True)
    gt = pool.run(reference, opts) if reference is not None else None
    if gt is not None and not gt.executable:
        raise ValueError(f"the reference program does not execute ({gt.status}: {gt.error[:120]})")
    rewards = []
    for code, res in zip(candidates, pool.imap(candidates, opts)):
        grammatical = validate(code).ok
        iou, details = 0.0, {"status": res.status}
        if res.executable and res.geometry is not None:
            if gt is not None:
                r = best_iou(res.geometry, gt.geometry)
                iou, details["iou_method"] = r.iou, r.method
            else:
                from decoding.rerank import render_compare

                details.update(render_compare(res, image))
                iou = details["silhouette"]
        if shape == "cadrl":
            total = 10.0 * iou if res.executable else -10.0
        else:
            total = w["executed"] * res.executable + w["grammatical"] * grammatical + w["iou"] * iou
        rewards.append(Reward(float(total), res.executable, grammatical, float(iou), details))
    return rewards
