"""Score predictions against ground truth: ``python -m reward.evaluate --pred P.jsonl --gt G.jsonl``.

Pred lines ``{"id", "code"}``; ground truth the same or GenCAD rows (``deepcad_id``,
``cadquery``), as JSONL or any dataset ``cad.data.load_gencad`` reads (a synthetic folder). Every
ground-truth id is scored; an id with no prediction counts as a failure (status ``missing``, error
class semantic) and is named in a warning. Prediction lines that are malformed (not JSON, no
``code``) or repeat an id are skipped and reported as such (``malformed_predictions``);
predictions of ids not in the ground truth are ignored (``unmatched_predictions``). An empty
prediction or ground-truth file is an error. Prints a JSON summary (``n``, ``vsr``, ``exec_rate``,
``iou_best`` and with ``--iou both`` ``iou_best_voxel``, ``n_valid``, ``structure_match``, error
classes, ``missing``, seconds); ``--out`` also keeps per-id rows. See ``reward.metrics`` for the
definitions.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from cad.cli import TIMEOUT, WORKERS, ArgumentParser, guarded
from cad.execute import load_programs
from cad.geometry import best_iou
from cad.io import InputError, check_output_file
from cad.programs import structure
from cad.sandbox import DEFAULT_TIMEOUT, ExecOptions, ExecResult, SandboxPool
from reward.metrics import error_class, summarise


def evaluate_pairs(
    pairs: list[tuple[str, str | None, str]],
    pool: SandboxPool,
    iou: str = "exact",
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Score ``(id, pred_code or None, gt_code)`` triples; returns (summary, per-id rows)."""
    opts = ExecOptions(timeout=timeout, want_geometry=True)
    t0 = time.perf_counter()
    codes = []
    for _, pred, gt in pairs:
        codes.extend([pred if pred is not None else "", gt])
    results = pool.imap(codes, opts)
    rows = []
    for pid, pred, gt in tqdm(pairs, desc="evaluate", unit="id", disable=not progress):
        pr: ExecResult = next(results)
        gr: ExecResult = next(results)
        if pred is None:
            pr = ExecResult("missing", "no prediction for this id")
        row = {"id": pid, "status": pr.status, "error": pr.error, "executable": pr.executable,
               "error_class": error_class(pr), "gt_status": gr.status, "iou": None,
               "same_structure": pred is not None and structure(pred) == structure(gt)}
        if pr.executable and gr.executable and pr.geometry is not None and gr.geometry is not None:
            if iou in ("exact", "both", "cadcoder"):  # cadcoder: CAD-Coder's four poses only (cad.geometry)
                row["iou"] = best_iou(pr.geometry, gr.geometry, "cadcoder" if iou == "cadcoder" else "exact").iou
            if iou in ("voxel", "both"):
                row["iou_voxel"] = best_iou(pr.geometry, gr.geometry, "voxel").iou
                if iou == "voxel":
                    row["iou"] = row["iou_voxel"]
        rows.append(row)
    summary = summarise(rows).to_json()
    if iou != "both":
        summary.pop("iou_best_voxel", None)
    summary["gt_not_executable"] = sum(r["gt_status"] != "ok" for r in rows)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary, rows


def ground_truth(source: str) -> list[tuple[str, str | None, str]]:
    """``(id, code, error)`` from a JSONL file, or from any dataset ``cad.data.load_gencad`` reads."""
    if Path(source).is_file() and source.endswith(".jsonl"):
        return load_programs(source)
    from cad.data import load_gencad

    ds = load_gencad(source).select_columns(["deepcad_id", "cadquery"])
    return [(str(i), code, "") for i, code in zip(ds["deepcad_id"], ds["cadquery"])]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@guarded("nothing is written before the end; rerun the same command")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m reward.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--pred", required=True, help="JSONL of {'id', 'code'} predictions")
    ap.add_argument("--gt", required=True, help="ground truth: JSONL ({'id','code'} or GenCAD rows) or a dataset "
                                                "folder / parquet that cad.data.load_gencad reads")
    ap.add_argument("--iou", choices=("exact", "voxel", "both", "cadcoder"), default="exact")
    ap.add_argument("--out", help="write the summary and per-id rows to this JSON file")
    ap.add_argument("--timeout", type=TIMEOUT, default=DEFAULT_TIMEOUT)
    ap.add_argument("--workers", type=WORKERS, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    if args.out:
        check_output_file(args.out, args.pred, args.gt)
    preds = load_programs(args.pred)
    gts = ground_truth(args.gt)
    if not preds:
        raise InputError(f"{args.pred}: no prediction lines; pass the JSONL written by python -m decoding")
    if not gts:
        raise InputError(f"{args.gt}: no ground-truth rows")
    bad_gt = [(pid, err) for pid, code, err in gts if code is None]
    if bad_gt:
        raise InputError(f"{args.gt}: {len(bad_gt)} ground-truth rows have no program "
                         f"(first: {bad_gt[0][1]}); fix or remove them")
    malformed = [err for _, _, err in preds if err]
    if malformed:
        _warn(f"{len(malformed)} malformed prediction lines skipped (first: {malformed[0]})")
    pred_by_id = {pid: code for pid, code, err in preds if not err}
    gt_ids = {pid for pid, _, _ in gts}
    unmatched = sorted(set(pred_by_id) - gt_ids)
    if unmatched:
        _warn(f"{len(unmatched)} prediction ids have no ground truth and are ignored (first: {unmatched[0]!r})")
    missing = [pid for pid, _, _ in gts if pid not in pred_by_id]
    if missing:
        _warn(f"{len(missing)} of {len(gts)} ground-truth ids have no prediction and count as missing "
              f"(first: {missing[0]!r})")
    pairs = [(pid, pred_by_id.get(pid), code) for pid, code, _ in gts]
    with SandboxPool(args.workers) as pool:
        summary, rows = evaluate_pairs(pairs, pool, args.iou, args.timeout)
    summary["missing"] = len(missing)
    summary["malformed_predictions"] = len(malformed)
    summary["unmatched_predictions"] = len(unmatched)
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
