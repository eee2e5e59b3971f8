"""Run CadQuery programs in the sandbox: ``python -m cad.execute IN.jsonl --out OUT.jsonl``.

Input lines ``{"id", "code"}`` (GenCAD rows with ``deepcad_id``/``cadquery`` work too). Output
lines: ``id``, ``status``, ``error``, ``volume``, ``bbox``, ``n_solids``, ``n_faces``, ``valid``,
``brep_valid``, ``seconds``, ``_fp``; exactly one per input line, in input order. Progress goes
to ``OUT.partial`` as it happens, so an interrupted run resumes where it stopped. A row is reused
only when its ``_fp`` (a hash of the program and of the timeout and memory limit) is what this
run would compute; a changed program or option is executed again. ``OUT`` may not be the input.
"""
from __future__ import annotations

import json
import os
import sys

from tqdm import tqdm

from cad.cli import TIMEOUT, WORKERS, ArgumentParser, guarded, int_in
from cad.io import FP_KEY, check_output_file, done_rows, fingerprint, read_jsonl, row_code, row_id, write_jsonl_atomic
from cad.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, ExecOptions, ExecResult, SandboxPool


def load_programs(path: str) -> list[tuple[str, str | None, str]]:
    """``(id, code or None, error)`` per input line. A repeated id is renamed ``id#k`` with the
    smallest k that is no id of the file and not yet used, and reported as an error."""
    lines = list(read_jsonl(path))
    ids = [row_id(row, lineno) for lineno, row, _ in lines]
    taken, items = set(ids), []
    seen: set[str] = set()
    for (lineno, row, err), pid in zip(lines, ids):
        if pid in seen:
            k = 1
            while f"{pid}#{k}" in taken:
                k += 1
            new = f"{pid}#{k}"
            taken.add(new)
            err = err or f"{path}:{lineno}: duplicate id {pid!r}, renamed {new!r}"
            pid = new
        seen.add(pid)
        code = row_code(row)
        if code is None and not err:
            err = f"{path}:{lineno}: no 'code' (or 'cadquery') string field"
        items.append((pid, code, err))
    return items


@guarded("rerun the same command to resume; finished programs are kept in OUT.partial")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m cad.execute", description=__doc__.splitlines()[0])
    ap.add_argument("input", help="JSONL with {'id', 'code'} per line")
    ap.add_argument("--out", required=True, help="output JSONL, one result per input line")
    ap.add_argument("--timeout", type=TIMEOUT, default=DEFAULT_TIMEOUT, help="seconds per program (0 < s <= 3600)")
    ap.add_argument("--workers", type=WORKERS, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--memory-mb", type=int_in(256, 262144), default=DEFAULT_MEMORY_MB,
                    help="address-space limit per program")
    args = ap.parse_args(argv)
    out = check_output_file(args.out, args.input)
    items = load_programs(args.input)
    partial = out.with_suffix(out.suffix + ".partial")
    opts = ExecOptions(timeout=args.timeout, memory_mb=args.memory_mb)
    run_fp = fingerprint("cad.execute", opts.timeout, opts.memory_mb)
    fps = {pid: fingerprint(run_fp, code, err) for pid, code, err in items}
    done = done_rows([out, partial], fps)
    todo = [(pid, code, err) for pid, code, err in items if pid not in done]
    runnable = [(pid, code) for pid, code, err in todo if code is not None and not err]
    with partial.open("a", encoding="utf-8") as log, tqdm(total=len(items), initial=len(items) - len(todo), desc="execute", unit="prog") as bar:
        for pid, code, err in todo:
            if code is None or err:
                row = {"id": pid, **ExecResult("rejected", err).to_json(), FP_KEY: fps[pid]}
                done[pid] = row
                log.write(json.dumps(row) + "\n")
                bar.update(1)
        if runnable:
            with SandboxPool(args.workers) as pool:
                for (pid, _), res in zip(runnable, pool.imap((c for _, c in runnable), opts)):
                    row = {"id": pid, **res.to_json(), FP_KEY: fps[pid]}
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
