"""Program statistics in the terms of ``shared/gencad_reference/STATS.md``, and a comparison table.

    python -m cad.program_stats DATA [--split train] [--out docs/synthetic_stats.md]
"""
from __future__ import annotations

import argparse
import re
from collections import Counter

import numpy as np

# The public 100-row test subset, as published in shared/gencad_reference/STATS.md.
GENCAD_TEST_STATS = {
    "programs": 100,
    "length_mean": 947, "length_median": 712, "length_max": 4140,
    "sketches": {1: 57, 2: 18, 3: 12, 4: 7, 5: 2, 6: 3, 8: 1},
    "loops_mean": 2.58, "loops_max": 10, "circle_loop_share": 109 / 258,
    "segments_per_path": (548 + 71) / 149, "arc_share": 71 / (548 + 71),
    "extrudes_per_program": 193 / 100, "both_share": 13 / 193,
    "union_share": 67 / 91,
    "normals": {"(0,0,1)": 85, "(0,-1,0)": 78, "(1,0,0)": 20, "(0,1,0)": 6, "other": 4},
}

_PLANE_RE = re.compile(r"cq\.Plane\(cq\.Vector\([^)]*\), cq\.Vector\([^)]*\), cq\.Vector\(([^)]*)\)\)")


def program_stats(codes: list[str]) -> dict:
    """The STATS.md quantities measured on ``codes``."""
    lengths = np.array([len(c) for c in codes])
    sketches = Counter(c.count("cq.Workplane(") for c in codes)
    loops = np.array([len(re.findall(r"^loop\d+=", c, re.M)) for c in codes])
    circles = sum(len(re.findall(r"^loop\d+=.*\.circle\(", c, re.M)) for c in codes)
    paths = sum(len(re.findall(r"^loop\d+=.*\.close\(\)", c, re.M)) for c in codes)
    lines = sum(c.count(".lineTo(") for c in codes)
    arcs = sum(c.count(".threePointArc(") for c in codes)
    extrudes = sum(c.count(".extrude(") for c in codes)
    both = sum(c.count("both=True") for c in codes)
    unions = sum(c.count("solid=solid.union(") for c in codes)
    cuts = sum(c.count("solid=solid.cut(") for c in codes)
    normals: Counter = Counter()
    for c in codes:
        for m in _PLANE_RE.finditer(c):
            v = tuple(int(round(float(x))) for x in m.group(1).split(","))
            key = "(" + ",".join(str(x) for x in v) + ")"
            normals[key if key in GENCAD_TEST_STATS["normals"] else "other"] += 1
    n = max(len(codes), 1)
    return {
        "programs": len(codes),
        "length_mean": float(lengths.mean()) if len(codes) else 0.0,
        "length_median": float(np.median(lengths)) if len(codes) else 0.0,
        "length_max": int(lengths.max()) if len(codes) else 0,
        "sketches": dict(sorted(sketches.items())),
        "loops_mean": float(loops.mean()) if len(codes) else 0.0,
        "loops_max": int(loops.max()) if len(codes) else 0,
        "circle_loop_share": circles / max(circles + paths, 1),
        "segments_per_path": (lines + arcs) / max(paths, 1),
        "arc_share": arcs / max(lines + arcs, 1),
        "extrudes_per_program": extrudes / n,
        "both_share": both / max(extrudes, 1),
        "union_share": unions / max(unions + cuts, 1),
        "normals": dict(normals),
    }


def comparison_table(ours: dict, ref: dict = GENCAD_TEST_STATS, label: str = "synthetic") -> str:
    """A markdown table of ``ours`` against the GenCAD-Code test subset."""
    def share(d: dict, k) -> str:
        total = sum(d.values())
        return f"{100 * d.get(k, 0) / total:.0f}%" if total else "-"

    rows = [
        ("programs", ref["programs"], ours["programs"]),
        ("length, mean / median / max (chars)", f"{ref['length_mean']} / {ref['length_median']} / {ref['length_max']}",
         f"{ours['length_mean']:.0f} / {ours['length_median']:.0f} / {ours['length_max']}"),
    ]
    for k in (1, 2, 3, 4, 5, 6, 8):
        rows.append((f"programs with {k} sketch(es)", share(ref["sketches"], k), share(ours["sketches"], k)))
    rows += [
        ("loops per program, mean / max", f"{ref['loops_mean']:.2f} / {ref['loops_max']}", f"{ours['loops_mean']:.2f} / {ours['loops_max']}"),
        ("loops that are circles", f"{100 * ref['circle_loop_share']:.0f}%", f"{100 * ours['circle_loop_share']:.0f}%"),
        ("segments per closed path", f"{ref['segments_per_path']:.2f}", f"{ours['segments_per_path']:.2f}"),
        ("segments that are arcs", f"{100 * ref['arc_share']:.0f}%", f"{100 * ours['arc_share']:.0f}%"),
        ("extrusions per program", f"{ref['extrudes_per_program']:.2f}", f"{ours['extrudes_per_program']:.2f}"),
        ("extrusions with both=True", f"{100 * ref['both_share']:.0f}%", f"{100 * ours['both_share']:.0f}%"),
        ("combinations that are unions (rest cuts)", f"{100 * ref['union_share']:.0f}%", f"{100 * ours['union_share']:.0f}%"),
    ]
    for k in ("(0,0,1)", "(0,-1,0)", "(1,0,0)", "(0,1,0)", "other"):
        rows.append((f"sketch normal {k}", share(ref["normals"], k), share(ours["normals"], k)))
    out = [f"| quantity | GenCAD-Code test (STATS.md) | {label} |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from cad.data import load_gencad

    ap = argparse.ArgumentParser(prog="python -m cad.program_stats", description=__doc__.splitlines()[0])
    ap.add_argument("data", help="dataset folder or JSONL (see cad.data.load_gencad)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", help="write the markdown table here")
    args = ap.parse_args(argv)
    ds = load_gencad(args.data, split=args.split)
    table = comparison_table(program_stats(list(ds["cadquery"])), label=f"{args.data} ({args.split})")
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
