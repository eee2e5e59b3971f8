"""Batch jobs over several processes (``accelerate launch`` / ``torchrun``): shard the rows, merge
the outputs.

``run_sharded(rows, out, batch_size, work)`` is called by every process. It drops the rows that
``out`` or a part file left by an interrupted run (with any number of processes) already holds
(with ``fingerprints``, only rows made from the same input and options, see ``cad.io``), cuts the
rest into batches of ``batch_size`` exactly as one process would, and gives process r the batches
r, r + world, ...; ``work(my_rows, part_path)`` appends that process's JSONL lines to
``out.part<r>``. The main process then merges ``out`` and the parts into ``out`` in the rows'
order, one line per id, and removes the parts. A batch holds the same rows whatever the number of
processes, so work seeded per batch writes the same lines with 1 process or 8.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

from cad.io import FP_KEY, done_rows, write_jsonl_atomic

T = TypeVar("T")


def state():
    """accelerate's ``PartialState``: joins the process group when launched with several processes
    (on CPU too: ``ACCELERATE_USE_CPU=1`` or no GPU, with gloo)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    st = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    if st.num_processes > 1 and not getattr(state, "_cleanup", False):
        # gloo's worker threads must not outlive the interpreter: without this, a rank can abort
        # at exit ("terminate called without an active exception") after finishing its work
        import atexit

        atexit.register(_destroy_process_group)
        state._cleanup = True
    return st


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return state().is_main_process


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}")


def part_paths(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}.part*")) if out.parent.exists() else []


def done_anywhere(out: Path, wanted: Sequence[str], fingerprints: Mapping[str, str] | None = None) -> set[str]:
    """Ids of ``wanted`` that ``out`` or one of its part files holds (with ``fingerprints``: from the
    same input and options)."""
    paths = [out, *part_paths(out)]
    if fingerprints is not None:
        return set(done_rows(paths, fingerprints))
    want = set(wanted)
    return {k for k in _rows(paths) if k in want}


def _rows(paths: Sequence[Path]) -> dict[str, list[dict]]:
    """Every well-formed row of the files by id, in file and line order (a line cut short by an
    interruption is skipped: its id is redone)."""
    rows: dict[str, list[dict]] = {}
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                rows.setdefault(str(row["id"]), []).append(row)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return rows


def my_share(items: Sequence[T], batch_size: int, rank: int, world: int) -> list[T]:
    """Batches rank, rank + world, ... of ``items`` cut into batches of ``batch_size``, concatenated
    (re-cutting the result into ``batch_size`` batches gives back exactly those batches)."""
    size = max(batch_size, 1)
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    return [x for b in batches[rank::world] for x in b]


def merge(out: Path, order: Sequence[str], fingerprints: Mapping[str, str] | None = None) -> int:
    """Rewrite ``out`` from its lines and its parts' lines: for each id of ``order``, in that order,
    the last row written (with ``fingerprints``: the last with the wanted fingerprint; stale rows
    go), then the rows of any other ids as they were. Removes the parts; returns the line count."""
    rows = _rows([out, *part_paths(out)])
    wanted = set(order)
    merged = []
    for key in order:
        versions = rows.get(key, [])
        if fingerprints is not None:
            versions = [r for r in versions if r.get(FP_KEY) == fingerprints.get(key)]
        if versions:
            merged.append(versions[-1])
    merged += [versions[-1] for key, versions in rows.items() if key not in wanted]
    write_jsonl_atomic(out, merged)
    for p in part_paths(out):
        p.unlink()
    return len(merged)


def run_sharded(rows: Sequence[T], out: str | os.PathLike, batch_size: int, work: Callable[[list[T], Path], object],
                key: Callable[[T], str] = lambda r: str(r["id"]), fingerprints: Mapping[str, str] | None = None) -> list:
    """Run ``work`` on this process's share of the rows not yet done and merge the outputs (see the
    module docstring). Every process must call it. Returns ``work``'s result from each process
    (None where a process had no rows)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    st = state()
    world, rank = st.num_processes, st.process_index
    order = [key(r) for r in rows]
    done = done_anywhere(out, order, fingerprints)
    leftovers = bool(part_paths(out))
    st.wait_for_everyone()  # every process has read the same state before any of them writes
    todo = [r for r, k in zip(rows, order) if k not in done]
    mine = my_share(todo, batch_size, rank, world)
    result = work(mine, part_path(out, rank)) if mine else None
    st.wait_for_everyone()
    if st.is_main_process and (todo or leftovers):
        merge(out, order, fingerprints)
    st.wait_for_everyone()
    if world == 1:
        return [result]
    from accelerate.utils import gather_object

    return gather_object([result])


def combine_stats(results: list[dict | None]) -> dict:
    """Per-process ``predict`` statistics as one: counts and selection seconds summed, ``seconds``
    and ``peak_*`` the largest process's (they ran side by side), ``seconds_per_image`` recomputed."""
    stats = [r for r in results if r]
    if not stats:
        return {"decoded": 0, "seconds": 0.0, "processes": len(results)}
    out = {k: (max if k == "seconds" or k.startswith("peak") else sum)(s.get(k, 0) for s in stats)
           for k, v in stats[0].items() if isinstance(v, (int, float))}
    if "seconds_per_image" in out:
        out["seconds_per_image"] = round(out["seconds"] / max(out.get("decoded", 0), 1), 4)
    out["processes"] = len(results)
    return out
