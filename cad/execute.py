"""Run CadQuery programs in the sandbox: ``python -m cad.execute IN.jsonl --out OUT.jsonl``.

Input lines ``{"id", "code"}`` (GenCAD rows with ``deepcad_id``/``cadquery`` work too). Output
lines: ``id``, ``status``, ``error``, ``volume``, ``bbox``, ``n_solids``, ``n_faces``, ``valid``,
``brep_valid``, ``seconds``; exactly one per input line, in input order. Progress goes to
``OUT.partial`` as it happens, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from cad.io import InputError, read_jsonl, row_code, row_id, write_jsonl_atomic
from cad.sandbox import DEFAULT_TIMEOUT, ExecOptions, ExecResult, SandboxPool


def load_programs(path: str) -> list[tuple[str, str | None, str]]:
    """``(id, code or None, error)`` per input line; duplicate ids are made unique and reported."""
    items, seen = [], {}
    for lineno, row, err in read_jsonl(path):
        pid = row_id(row, lineno)
        if pid in seen:
            seen[pid] += 1
            err = err or f"{path}:{lineno}: duplicate id {pid!r}, renamed"
            pid = f"{pid}#{seen[pid]}"
        else:
            seen[pid] = 0
        code = row_code(row)
        if code is None and not err:
            err = f"{path}:{lineno}: no 'code' (or 'cadquery') string field"
        items.append((pid, code, err))
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cad.execute", description=__doc__.splitlines()[0])
    ap.add_argument("input", help="JSONL with {'id', 'code'} per line")
    ap.add_argument("--out", required=True, help="output JSONL, one result per input line")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per program")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--memory-mb", type=int, default=3072, help="address-space limit per program")
    args = ap.parse_args(argv)
    try:
        items = load_programs(args.input)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    partial = out.with_suffix(out.suffix + ".partial")
    done: dict[str, dict] = {}
    if partial.exists():
        for _, row, _err in read_jsonl(partial):
            if row and "id" in row:
                done[row["id"]] = row
    todo = [(pid, code, err) for pid, code, err in items if pid not in done]
    opts = ExecOptions(timeout=args.timeout, memory_mb=args.memory_mb)
    runnable = [(pid, code) for pid, code, err in todo if code is not None and not err]
    with partial.open("a", encoding="utf-8") as log, tqdm(total=len(items), initial=len(items) - len(todo), desc="execute", unit="prog") as bar:
        for pid, code, err in todo:
            if code is None or err:
                row = {"id": pid, **ExecResult("rejected", err).to_json()}
                done[pid] = row
                log.write(json.dumps(row) + "\n")
                bar.update(1)
        if runnable:
            with SandboxPool(args.workers) as pool:
                for (pid, _), res in zip(runnable, pool.imap((c for _, c in runnable), opts)):
                    row = {"id": pid, **res.to_json()}
                    done[pid] = row
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.update(1)
    write_jsonl_atomic(out, [done[pid] for pid, _, _ in items])
    partial.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for pid, _, _ in items:
        counts[done[pid]["status"]] = counts.get(done[pid]["status"], 0) + 1
    print(json.dumps({"n": len(items), "statuses": counts, "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
