"""Cost of the candidates ``--primitives`` fits to an image (``decoding.primitives.fit_primitives``
and ``decoding.prism.fit_prisms``) in this checkout against another commit, as a ratio measured in
one run, with whether both write the same programs.

    python scripts/bench_fit.py --against REV [--data DATA --split S --limit N] [--workers 2] [--out results/bench_fit.json]

The images are the ten GenCAD-Code reference rows, plus the first ``--limit`` rows of ``--data``
when given. ``REV``'s files are taken with ``git archive`` into a temporary folder; each side runs
in its own process (its own sandbox pool, its own compiled renderer) and the images go to the two
sides in turn, one at a time, so both meet the same load. Each side fits one image first to warm
up (unit primitives executed, renderer compiled); that image is not counted.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts._common import REFERENCE, ROOT, machine, reference_rows, write_json  # noqa: E402


def serve(tree: str, workers: int) -> None:
    """The side's process: reads image paths from stdin, answers one JSON line per image with the
    seconds the fit took and the programs it wrote, with ``tree``'s packages."""
    sys.path.insert(0, tree)  # before the first import of the project's packages
    from PIL import Image

    from cad.sandbox import SandboxPool
    from decoding.primitives import fit_primitives
    from decoding.prism import fit_prisms
    from decoding.rerank import DEFAULT_WEIGHTS
    from reward.score import RENDER_TERMS, RenderTarget

    objective = {t: w for t, w in DEFAULT_WEIGHTS.items() if t in RENDER_TERMS and w}
    with SandboxPool(workers) as pool:
        for line in sys.stdin:
            target = RenderTarget.of(Image.open(line.strip()))
            t0 = time.perf_counter()
            programs = fit_primitives(target, pool, objective) + fit_prisms(target, pool, objective)
            print(json.dumps({"seconds": time.perf_counter() - t0, "programs": programs, "code": fit_prisms.__code__.co_filename}), flush=True)


class Side:
    """One tree's serving process."""

    def __init__(self, tree: Path, workers: int) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(tree), "--workers", str(workers)],
                                     cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def fit(self, image: Path) -> dict:
        self.proc.stdin.write(f"{image}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_fit: the process fitting {image} ended without an answer")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def images(folder: Path, data: str | None, split: str | None, limit: int) -> list[tuple[str, Path]]:
    """(id, PNG path) of the reference images and the first ``limit`` rows of ``data``."""
    out = [(r["deepcad_id"], REFERENCE / r["image"]) for r in reference_rows()]
    if data:
        from cad.data import load_gencad, to_image

        ds = load_gencad(data, split=split)
        for i in range(min(limit, len(ds))):
            path = folder / f"row{i:05d}.png"
            to_image(ds[i]["image"]).save(path)
            out.append((str(ds[i]["deepcad_id"]), path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=False, help="the commit to compare with (git revision)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", default=None)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="results/bench_fit.json")
    ap.add_argument("--serve", metavar="TREE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.workers)
    if not args.against:
        ap.error("--against REV is required (the commit to compare with)")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    against = subprocess.run(["git", "rev-parse", args.against], cwd=ROOT, capture_output=True, text=True)
    if against.returncode:
        raise SystemExit(f"bench_fit: --against {args.against}: not a commit of this repository")
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "against"
        old.mkdir()
        subprocess.run(f"git archive {against.stdout.strip()} | tar -x -C {old}", shell=True, cwd=ROOT, check=True)
        rows = images(Path(tmp), args.data, args.split, args.limit)
        sides = {"this checkout": Side(ROOT, args.workers), args.against: Side(old, args.workers)}
        for tree, side in zip((ROOT, old), sides.values()):
            code = side.fit(rows[0][1])["code"]  # warm-up; and the fit must be the side's own
            if not Path(code).resolve().is_relative_to(tree.resolve()):
                raise SystemExit(f"bench_fit: the side meant to run {tree} runs {code}")
        per_image = []
        from tqdm import tqdm

        for i, (pid, path) in enumerate(tqdm(rows, desc="fit", unit="img")):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            answers = {name: sides[name].fit(path) for name in order}
            new, base = answers["this checkout"], answers[args.against]
            per_image.append({"id": pid, "seconds": {n: round(a["seconds"], 3) for n, a in answers.items()},
                              "same_programs": new["programs"] == base["programs"]})
        for side in sides.values():
            side.close()
    seconds = {name: round(sum(r["seconds"][name] for r in per_image) / len(per_image), 3) for name in sides}
    write_json(args.out, {
        "benchmark": "fit", "machine": machine(), "workers": args.workers,
        "head": head + (" with uncommitted changes" if dirty else ""), "against": against.stdout.strip(),
        "images": len(per_image), "data": ["reference (10)"] + ([f"{args.data} ({args.split or 'default split'}), first {args.limit}"] if args.data else []),
        "seconds_per_image": seconds, "speedup": round(seconds[args.against] / seconds["this checkout"], 2),
        "same_programs": sum(r["same_programs"] for r in per_image), "per_image": per_image})


if __name__ == "__main__":
    main()
