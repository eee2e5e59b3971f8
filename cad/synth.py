"""Synthetic GenCAD-style dataset: ``python -m cad.synth --n N --out DIR [--seed S] [--workers W]``.

Pipeline per shard: draw random programs (``cad.synth_programs``), execute them in the sandbox,
keep those that build exactly one valid solid (closed, BRepCheck-valid, positive volume), drop
duplicates (same canonical program text as any earlier sample), render each kept program in
GenCAD's style (``cad.render``) and write the shard as parquet in the GenCAD-Code schema
(``DIR/<split>-NNNNN.parquet``; ``cad.data.load_gencad(DIR)`` reads it).

Shard k draws from ``numpy.random.default_rng([seed, k])`` and shards are filled in order, so the
same seed gives the same data whatever the worker count, and an interrupted run resumes at the
first missing shard. ``DIR/info.json`` records the run and its acceptance statistics.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cad.data import FEATURES, count_tokens
from cad.programs import canonicalize
from cad.render import Style, render_geometry
from cad.sandbox import ExecOptions, SandboxPool
from cad.synth_programs import PROMPT, random_program


def program_key(code: str) -> str:
    return hashlib.sha1(canonicalize(code).encode()).hexdigest()


def _existing_keys(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {program_key(c) for c in pq.read_table(path, columns=["cadquery"]).column("cadquery").to_pylist()}


def accept(result) -> bool:
    """Exactly one valid solid with positive volume."""
    return result.executable and result.brep_valid and result.n_solids == 1


def generate_shard(k: int, count: int, seed: int, pool: SandboxPool, seen: set[str], style: Style,
                   bar: tqdm | None = None, max_tries: int = 20) -> tuple[dict, dict]:
    """Fill one shard with ``count`` accepted samples; returns (columns, statistics)."""
    rng = np.random.default_rng([seed, k])
    cols = {name: [] for name in FEATURES}
    stats = {"drawn": 0, "failed": 0, "duplicates": 0, "accepted": 0, "unused": 0}
    cand_index = 0
    for _ in range(max_tries):
        need = count - stats["accepted"]
        if need <= 0:
            break
        batch = [random_program(rng) for _ in range(int(need * 1.15) + 4)]
        results = pool.imap(batch, ExecOptions(timeout=10.0, want_geometry=True))
        for code, res in zip(batch, results):
            cand_index += 1
            if stats["accepted"] >= count:
                stats["unused"] += 1  # drawn beyond the shard's need: drained, not judged
                continue
            stats["drawn"] += 1
            if not accept(res):
                stats["failed"] += 1
                continue
            key = program_key(code)
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            buf = io.BytesIO()
            Image.fromarray(render_geometry(res.geometry, style)).save(buf, format="PNG", optimize=False)
            cols["image"].append({"bytes": buf.getvalue(), "path": None})
            cols["deepcad_id"].append(f"synth{seed}-{k:05d}-{cand_index:06d}")
            cols["cadquery"].append(code)
            cols["token_count"].append(count_tokens(code))
            cols["prompt"].append(PROMPT)
            cols["hundred_subset"].append(False)
            stats["accepted"] += 1
            if bar is not None:
                bar.update(1)
    if stats["accepted"] < count:
        raise RuntimeError(f"shard {k}: only {stats['accepted']} of {count} programs accepted after {max_tries} rounds")
    return cols, stats


def write_shard(path: Path, cols: dict) -> None:
    import datasets

    tmp = path.with_name(path.name + ".tmp")
    datasets.Dataset.from_dict(cols, features=FEATURES).to_parquet(str(tmp))
    os.replace(tmp, path)


def synthesize(n: int, out: str | Path, seed: int = 0, workers: int = 2, shard_size: int = 1000,
               split: str = "train", size: int = 448, progress: bool = True) -> dict:
    """Generate (or finish generating) ``n`` samples into ``out``; returns the run info."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(n / shard_size)
    style = Style(size=size)
    info_path = out / f"{split}-info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if info and (info.get("seed"), info.get("shard_size"), info.get("size")) != (seed, shard_size, size):
        raise ValueError(f"{out} holds a {split} split made with other settings ({info_path}); use another folder")
    info.update({"n": n, "seed": seed, "shard_size": shard_size, "size": size, "split": split})
    shard_stats = info.setdefault("shards", {})
    seen: set[str] = set()
    done = 0
    t0 = time.perf_counter()
    with tqdm(total=n, desc=f"synth {split}", unit="sample", disable=not progress) as bar, SandboxPool(workers) as pool:
        for k in range(n_shards):
            count = min(shard_size, n - k * shard_size)
            path = out / f"{split}-{k:05d}.parquet"
            if path.exists():
                seen |= _existing_keys(path)
                done += count
                bar.update(count)
                continue
            cols, stats = generate_shard(k, count, seed, pool, seen, style, bar)
            write_shard(path, cols)
            shard_stats[str(k)] = stats
            info_path.write_text(json.dumps(info, indent=2))
    totals = {key: sum(s[key] for s in shard_stats.values()) for key in ("drawn", "failed", "duplicates", "accepted", "unused")}
    info["totals"] = totals
    info["acceptance_rate"] = round(totals["accepted"] / max(totals["drawn"], 1), 4)
    info["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    info_path.write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cad.synth", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True, help="number of samples")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--split", default="train", help="split name used in the shard file names")
    ap.add_argument("--size", type=int, default=448, help="image size in pixels")
    args = ap.parse_args(argv)
    if args.n <= 0:
        print("error: --n must be positive", file=sys.stderr)
        return 2
    info = synthesize(args.n, args.out, args.seed, args.workers, args.shard_size, args.split, args.size)
    print(json.dumps({k: info[k] for k in ("n", "seed", "split", "totals", "acceptance_rate", "seconds_this_run")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
