"""Data pipeline throughput: synthetic samples per second end to end (draw, execute, render, write)
and renders per second (render only, and execute + render), on this machine.

    python scripts/bench_data.py [--n 300] [--workers 2] [--out results/bench_data.json]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.render import render_geometry  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from cad.synth import synthesize  # noqa: E402
from scripts._common import machine, reference_rows, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="results/bench_data.json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        t0 = time.perf_counter()
        info = synthesize(args.n, tmp / "synth", seed=123, workers=args.workers, shard_size=max(args.n // 3, 1), progress=False)
        synth_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    codes = [r["cadquery"] for r in reference_rows()]
    with SandboxPool(args.workers) as pool:
        t0 = time.perf_counter()
        results = pool.run_many([c + f"\n# {i}" for i in range(6) for c in codes], ExecOptions(want_geometry=True))
        images = [render_geometry(r.geometry) for r in results]
        exec_render_s = time.perf_counter() - t0
    render_geometry(results[0].geometry)  # compiled already; time the renderer alone
    t0 = time.perf_counter()
    for r in results:
        render_geometry(r.geometry)
    render_s = time.perf_counter() - t0
    write_json(args.out, {
        "benchmark": "data", "machine": machine(), "workers": args.workers,
        "synth": {"samples": args.n, "seconds": round(synth_s, 2), "samples_per_s": round(args.n / synth_s, 2),
                  "acceptance_rate": info["acceptance_rate"], "hours_for_30k": round(30000 / (args.n / synth_s) / 3600, 2)},
        "render_only": {"images": len(results), "renders_per_s": round(len(results) / render_s, 1)},
        "execute_and_render": {"images": len(images), "renders_per_s": round(len(images) / exec_render_s, 1)},
        "targets": {"samples_per_s": 10, "renders_per_s": 10},
    })


if __name__ == "__main__":
    main()
