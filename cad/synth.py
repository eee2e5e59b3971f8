"""Synthetic GenCAD-style dataset: ``python -m cad.synth --n N --out DIR [--seed S] [--workers W]``.

Pipeline per shard: draw random programs (``cad.synth_programs``), execute them in the sandbox,
keep those that build exactly one valid solid (closed, BRepCheck-valid, positive volume), drop
duplicates (same canonical program text as any earlier sample), render each kept program in
GenCAD's style (``cad.render``) and write the shard as parquet in the GenCAD-Code schema
(``DIR/<split>-NNNNN.parquet``; ``cad.data.load_gencad(DIR)`` reads it).

Shard k draws from ``numpy.random.default_rng([seed, k])`` and shards are filled in order, so the
same seed gives the same data whatever the worker count, and an interrupted run resumes at the
first missing shard. ``DIR/<split>-info.json`` records the settings (seed, shard size, image size,
split), the number of samples held (``n``) and the acceptance statistics. A larger ``--n`` on an
existing folder extends it (a shard that is short for the new ``n`` is generated again, to what a
fresh run with that ``n`` would hold); a smaller ``n`` than the folder holds, other settings, or
another split in the same folder are refused.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cad.cli import SEED, WORKERS, ArgumentParser, guarded, int_in
from cad.data import FEATURES, _splits_in, count_tokens
from cad.io import InputError
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
    try:
        datasets.Dataset.from_dict(cols, features=FEATURES).to_parquet(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shard_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def check_folder(out: Path, split: str, settings: dict, n: int) -> dict:
    """The existing run info of ``split`` in ``out`` ({} for a new folder), or an ``InputError``
    when the folder cannot take this run: another split, other settings, more samples than ``n``."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder")
    if not out.exists():
        return {}
    info_path = out / f"{split}-info.json"
    others = (set(_splits_in(out)) | {p.name[:-len("-info.json")] for p in out.glob("*-info.json")}) - {split}
    if others:
        raise InputError(f"{out} holds the {', '.join(sorted(others))} split; write the {split} split to "
                         "its own folder (a folder with several splits is ambiguous to load)")
    shards = sorted(out.glob(f"{split}-[0-9]*.parquet"))
    if not info_path.exists():
        if shards:
            raise InputError(f"{out} holds {split} shards but no {info_path.name}: not made by cad.synth; "
                             "use another folder")
        return {}
    info = json.loads(info_path.read_text())
    differ = {k: (info.get(k), v) for k, v in settings.items() if info.get(k) != v}
    if differ:
        had = " ".join(f"{k}={old}" for k, (old, _) in differ.items())
        now = " ".join(f"{k}={new}" for k, (_, new) in differ.items())
        raise InputError(f"{out} holds a {split} split made with {had} (this run: {now}); "
                         "rerun with those settings or use another folder")
    held = sum(_shard_rows(p) for p in shards)
    if held > n:
        raise InputError(f"{out} already holds {held} {split} samples; pass --n {held} or more to "
                         "extend it, or use another folder")
    return info


def synthesize(n: int, out: str | Path, seed: int = 0, workers: int = 2, shard_size: int = 1000,
               split: str = "train", size: int = 448, progress: bool = True) -> dict:
    """Generate (or finish, or extend to) ``n`` samples in ``out``; returns the run info, whose
    ``n`` is the number of samples the folder holds."""
    out = Path(out)
    settings = {"seed": seed, "shard_size": shard_size, "size": size, "split": split}
    info = check_folder(out, split, settings, n)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(n / shard_size)
    style = Style(size=size)
    info_path = out / f"{split}-info.json"
    info.update(settings)
    info.setdefault("n", 0)
    shard_stats = info.setdefault("shards", {})
    info_path.write_text(json.dumps(info, indent=2))  # settings first: an interrupted folder is still checked
    seen: set[str] = set()
    held = 0
    t0 = time.perf_counter()
    with tqdm(total=n, desc=f"synth {split}", unit="sample", disable=not progress) as bar, SandboxPool(workers) as pool:
        for k in range(n_shards):
            count = min(shard_size, n - k * shard_size)
            path = out / f"{split}-{k:05d}.parquet"
            if path.exists() and _shard_rows(path) == count:
                seen |= _existing_keys(path)
                bar.update(count)
            else:  # missing, or short for this n: generate it whole (the first samples come out the same)
                cols, stats = generate_shard(k, count, seed, pool, seen, style, bar)
                write_shard(path, cols)
                shard_stats[str(k)] = stats
            held += count
            info["n"] = held
            info_path.write_text(json.dumps(info, indent=2))
    totals = {key: sum(s[key] for s in shard_stats.values()) for key in ("drawn", "failed", "duplicates", "accepted", "unused")}
    info["totals"] = totals
    info["acceptance_rate"] = round(totals["accepted"] / max(totals["drawn"], 1), 4)
    info["seconds_this_run"] = round(time.perf_counter() - t0, 1)
    info_path.write_text(json.dumps(info, indent=2))
    return info


def _split_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a split name (letters, digits, '_'), e.g. train, validation, test")
    return text


@guarded("rerun the same command to resume at the first missing shard")
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m cad.synth", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int_in(1, 10**8), required=True, help="number of samples")
    ap.add_argument("--out", required=True, help="output folder (one split per folder)")
    ap.add_argument("--seed", type=SEED, default=0)
    ap.add_argument("--workers", type=WORKERS, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--shard-size", type=int_in(1, 10**6), default=1000)
    ap.add_argument("--split", type=_split_name, default="train", help="split name used in the shard file names")
    ap.add_argument("--size", type=int_in(16, 4096), default=448, help="image size in pixels")
    args = ap.parse_args(argv)
    info = synthesize(args.n, args.out, args.seed, args.workers, args.shard_size, args.split, args.size)
    print(json.dumps({k: info[k] for k in ("n", "seed", "split", "totals", "acceptance_rate", "seconds_this_run")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
