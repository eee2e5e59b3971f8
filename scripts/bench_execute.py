"""Sandbox throughput against a naive subprocess per program, as a ratio measured in one run; and
with meshes, a child per program against one resident child (``ExecOptions(reuse=True)``).

    python scripts/bench_execute.py [--n 200] [--naive 12] [--workers 2] [--out results/bench_execute.json]

Programs are GenCAD-style: the reference rows and perturbed variants of them (all distinct, so
the sandbox's cache never answers).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cad.programs import perturb  # noqa: E402
from cad.sandbox import ExecOptions, SandboxPool  # noqa: E402
from scripts._common import machine, reference_rows, write_json  # noqa: E402


def programs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    base = [r["cadquery"] for r in reference_rows()]
    return [perturb(base[i % len(base)], rng, 0.02) for i in range(n)]


def naive_run(code: str) -> bool:
    proc = subprocess.run([sys.executable, "-c", "import sys, cadquery as cq\nexec(sys.stdin.read())"],
                          input=code, text=True, capture_output=True, timeout=60)
    return proc.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--naive", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="results/bench_execute.json")
    args = ap.parse_args()
    codes = programs(args.n)
    t0 = time.perf_counter()
    pool = SandboxPool(args.workers, cache_size=0)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = pool.run_many(codes, ExecOptions())
    sandbox_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results_geo = pool.run_many([c + "\n# geometry" for c in codes[:50]], ExecOptions(want_geometry=True))
    geo_s = time.perf_counter() - t0
    # The same programs one after another in one resident child per worker, timed only: decoding
    # reuses a child for the programs it writes itself, never for dataset text like these.
    t0 = time.perf_counter()
    reused = pool.run_many([c + "\n# reused" for c in codes[:50]], ExecOptions(want_geometry=True, reuse=True))
    reused_s = time.perf_counter() - t0
    pool.close()
    naive_codes = codes[: args.naive]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as ex:
        naive_ok = list(ex.map(naive_run, naive_codes))
    naive_s = time.perf_counter() - t0
    sandbox_rate = len(codes) / sandbox_s
    naive_rate = len(naive_codes) / naive_s
    write_json(args.out, {
        "benchmark": "execute", "machine": machine(), "workers": args.workers,
        "sandbox": {"programs": len(codes), "seconds": round(sandbox_s, 3), "programs_per_s": round(sandbox_rate, 2),
                    "ok": sum(r.status == "ok" for r in results), "startup_s": round(startup, 2)},
        "sandbox_with_geometry": {"programs": len(results_geo), "programs_per_s": round(len(results_geo) / geo_s, 2)},
        "sandbox_with_geometry_reused": {"programs": len(reused), "programs_per_s": round(len(reused) / reused_s, 2),
                                         "ok": sum(r.status == "ok" for r in reused),
                                         "speedup": round(geo_s / reused_s, 2)},
        "naive_subprocess": {"programs": len(naive_codes), "seconds": round(naive_s, 3),
                             "programs_per_s": round(naive_rate, 3), "ok": sum(naive_ok)},
        "speedup": round(sandbox_rate / naive_rate, 1),
        "targets": {"programs_per_s": 20, "speedup": 30},
    })


if __name__ == "__main__":
    main()
