"""The study's metrics over executed programs: VSR, Executable %, Best IoU and error classes.

Definitions (one place, used by evaluation, reranking and the reward):

* VSR (valid syntax rate, the study's definition): the code runs without error and leaves a
  CadQuery object holding a solid, i.e. sandbox status ``ok``.
* Executable %: that object is a valid solid (closed shells) with positive volume.
* Best IoU: ``cad.geometry.best_iou``, averaged over ids where prediction and ground truth both
  execute (``n_valid``).
* Error classes, as the study counts them:
  - ``syntax``: the program does not parse (status ``syntax_error``).
  - ``semantic``: it parses but fails, or gives a wrong operation: ``runtime_error``, ``timeout``,
    ``memory``, ``crash``, ``rejected`` (an operation outside the safety policy) or a result that
    is not a valid solid (open shell, zero volume).
  - ``structural``: it runs but leaves no solid result (status ``no_solid``: no ``solid`` variable
    or fallback, or an incomplete workplane chain that never produced a solid).
* Structure match: the share of all ids whose prediction has the ground truth's structure
  (``cad.programs.structure``: the same program up to its numbers), executed or not.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cad.sandbox import ExecResult

ERROR_CLASSES = ("syntax", "semantic", "structural")


def error_class(result: ExecResult) -> str | None:
    """The study's error class of one execution, or None when it is executable."""
    if result.status == "syntax_error":
        return "syntax"
    if result.status == "no_solid":
        return "structural"
    if result.status != "ok" or not result.executable:
        return "semantic"
    return None


@dataclass
class Summary:
    n: int
    vsr: float
    exec_rate: float
    iou_best: float | None
    n_valid: int
    errors: dict
    statuses: dict
    iou_best_voxel: float | None = None
    structure_match: float | None = None

    def to_json(self) -> dict:
        out = {
            "n": self.n, "vsr": round(self.vsr, 4), "exec_rate": round(self.exec_rate, 4),
            "iou_best": None if self.iou_best is None else round(self.iou_best, 4),
            "n_valid": self.n_valid, "errors": self.errors, "statuses": self.statuses,
        }
        if self.iou_best_voxel is not None:
            out["iou_best_voxel"] = round(self.iou_best_voxel, 4)
        if self.structure_match is not None:
            out["structure_match"] = round(self.structure_match, 4)
        return out


def summarise(rows: list[dict]) -> Summary:
    """Aggregate per-id rows of ``reward.evaluate`` (``status``, ``executable``, ``error_class``,
    ``iou`` and optionally ``iou_voxel``, None where the pair did not both execute, and
    ``same_structure``)."""
    n = len(rows)
    statuses: dict[str, int] = {}
    errors = {c: 0 for c in ERROR_CLASSES}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        if r["error_class"]:
            errors[r["error_class"]] += 1
    valid = [r["iou"] for r in rows if r["iou"] is not None]
    voxel = [r["iou_voxel"] for r in rows if r.get("iou_voxel") is not None]
    same = [bool(r["same_structure"]) for r in rows if "same_structure" in r]
    return Summary(
        n=n,
        vsr=statuses.get("ok", 0) / n if n else 0.0,
        exec_rate=sum(bool(r["executable"]) for r in rows) / n if n else 0.0,
        iou_best=float(np.mean(valid)) if valid else None,
        n_valid=len(valid),
        errors={k: {"count": v, "rate": round(v / n, 4) if n else 0.0} for k, v in errors.items()},
        statuses=statuses,
        iou_best_voxel=float(np.mean(voxel)) if voxel else None,
        structure_match=float(np.mean(same)) if same and len(same) == n else None,
    )
