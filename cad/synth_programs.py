"""Random CadQuery programs in GenCAD-Code's exact code style (text only; nothing is executed here).

A program is a base body (one sketch: an outer loop and optional holes, extruded) plus optional
features, each its own sketch: bosses unioned onto, or pockets and holes cut into, a face of the
base. Distributions follow ``shared/gencad_reference/STATS.md`` (sketches per program, circle
against path loops, line against arc segments, plane normals, union/cut ratio, both-sided
extrusions, coordinate ranges), and the numbers look like DeepCAD's: plane origins and extrusion
depths on a 1/256 grid, sketch coordinates on a grid of the sketch's own scale, plane vectors
from Euler angles so they carry float noise such as ``6.123233995736766e-17``.

Plausibility rules: holes lie inside the outer loop with a margin and apart from each other;
features sit on a face of the base body, inside its outline, so cuts touch the body and bosses
attach to it; loops never self-intersect (profiles are built from simple templates).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

HEADER = "import cadquery as cq\n"
PROMPT = "Generate the CADQuery code needed to create the CAD for the provided image. Just the code, no other words."

SKETCH_COUNTS = ([1, 2, 3, 4, 5, 6, 8], [57, 18, 12, 7, 2, 3, 1])
BASE_NORMALS = ([(0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 1, 0), (0, 0, -1), (-1, 0, 0)], [85, 78, 20, 6, 2, 2])
P_UNION = 67 / 91
P_BOTH = 13 / 193
P_ARC_CORNERS = 0.18


def _euler_frames() -> dict[tuple[int, int, int], list[tuple[tuple[float, ...], tuple[float, ...]]]]:
    """(xDir, normal) pairs of Rz(a) Rx(b) Rz(c) for quarter-turn angles, keyed by rounded normal."""
    out: dict = {}
    quarter = [0.0, math.pi / 2, math.pi, -math.pi / 2]
    for a, b, c in itertools.product(quarter, repeat=3):
        rz = lambda t: np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])  # noqa: E731
        rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
        r = rz(a) @ rx @ rz(c)
        x, n = tuple(float(v) for v in r[:, 0]), tuple(float(v) for v in r[:, 2])
        key = tuple(int(round(v)) for v in n)
        out.setdefault(key, [])
        if (x, n) not in out[key]:
            out[key].append((x, n))
    return out


FRAMES = _euler_frames()


def frame_for(normal: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """A plane frame (x, y, x_text, n_text) for an axis normal; x prefers world x, then world y."""
    options = FRAMES[tuple(normal)]
    def score(opt):
        x = np.round(opt[0])
        return (0 if abs(x[0]) == 1 and x[0] > 0 else 1 if abs(x[1]) == 1 and x[1] > 0 else 2)
    best = min(score(o) for o in options)
    cands = [o for o in options if score(o) == best]
    x_text, n_text = cands[int(rng.integers(len(cands)))] if len(cands) > 1 and rng.random() < 0.3 else cands[0]
    x = np.round(np.array(x_text))
    n = np.round(np.array(n_text))
    return x, np.cross(n, x), x_text, n_text


def q256(value: float) -> float:
    """DeepCAD's 8-bit grid of the normalised frame."""
    return round(value * 256) / 256


@dataclass
class Sketch:
    origin: np.ndarray
    x_text: tuple
    n_text: tuple
    loops: list[str] = field(default_factory=list)  # loop expressions after 'wp_sketchK.'
    extrude: str = ""
    op: str = "base"  # base, union or cut


def _num(x: float) -> str:
    return repr(float(x))


def _pt(p) -> str:
    return f"({_num(p[0])}, {_num(p[1])})"


def circle_loop(cx: float, cy: float, r: float) -> str:
    return f"moveTo({_num(cx)}, {_num(cy)}).circle({_num(r)})"


def path_loop(points: list, arcs: dict[int, tuple] | None = None) -> str:
    """moveTo(p0), then lineTo or threePointArc(mid, p_i) for each next point, then close().

    ``arcs[i]`` is the midpoint of an arc ending at points[i]; the closing segment is a line.
    """
    arcs = arcs or {}
    parts = [f"moveTo({_num(points[0][0])}, {_num(points[0][1])})"]
    for i in range(1, len(points)):
        if i in arcs:
            parts.append(f"threePointArc({_pt(arcs[i])}, {_pt(points[i])})")
        else:
            parts.append(f"lineTo({_num(points[i][0])}, {_num(points[i][1])})")
    return ".".join(parts) + ".close()"


class Profile:
    """An outer loop in local coordinates with an inside test and an optional rectangle shape."""

    def __init__(self, loop: str, inside, width: float, height: float, is_rect: bool, is_circle: bool):
        self.loop, self.inside, self.width, self.height = loop, inside, width, height
        self.is_rect, self.is_circle = is_rect, is_circle


def _polygon_inside(points: np.ndarray):
    def inside(p: np.ndarray) -> np.ndarray:
        x, y = p[:, 0:1], p[:, 1:2]
        xi, yi = points[:, 0][None], points[:, 1][None]
        xj, yj = np.roll(points[:, 0], 1)[None], np.roll(points[:, 1], 1)[None]
        cross = ((yi > y) != (yj > y)) & (x < (xj - xi) * (y - yi) / (yj - yi + 1e-300) + xi)
        return cross.sum(1) % 2 == 1
    return inside


def make_profile(rng: np.random.Generator, size: float, grid: float) -> Profile:
    """A random outer loop (circle, rectangle, L/U/T, rounded rectangle, slot or polygon)."""
    g = lambda v: round(v / grid) * grid  # noqa: E731 - snap to the sketch grid
    kind = rng.choice(["circle", "rect", "rect", "L", "U", "T", "rounded", "slot", "polygon"],
                      p=[0.22, 0.24, 0.12, 0.08, 0.06, 0.04, 0.12, 0.06, 0.06])
    if kind == "circle":
        r = g(size / 2)
        return Profile(circle_loop(r, 0.0, r), lambda p: np.hypot(p[:, 0] - r, p[:, 1]) < r, 2 * r, 2 * r, False, True)
    w = g(size)
    h = g(size * rng.uniform(0.15, 1.0))
    if kind == "rect":
        pts = [(w, 0.0), (w, h), (0.0, h), (0.0, 0.0)]
        return Profile(path_loop(pts), _polygon_inside(np.array(pts)), w, h, True, False)
    if kind == "L":
        a, b = g(w * rng.uniform(0.25, 0.6)), g(h * rng.uniform(0.25, 0.6))
        pts = [(0.0, 0.0), (w, 0.0), (w, b), (a, b), (a, h), (0.0, h)]
    elif kind == "U":
        a = g(w * rng.uniform(0.15, 0.35))
        b = g(h * rng.uniform(0.3, 0.8))
        pts = [(a, 0.0), (a, b), (w - a, b), (w - a, 0.0), (w, 0.0), (w, h), (0.0, h), (0.0, 0.0)]
    elif kind == "T":
        a = g(w * rng.uniform(0.25, 0.4))
        b = g(h * rng.uniform(0.3, 0.7))
        pts = [(a, 0.0), (w - a, 0.0), (w - a, b), (w, b), (w, h), (0.0, h), (0.0, b), (a, b)]
    elif kind == "rounded":
        r = g(min(w, h) * rng.uniform(0.1, 0.3))
        c = r * (1 - math.sqrt(0.5))
        pts = [(r, 0.0), (w - r, 0.0), (w, r), (w, h - r), (w - r, h), (r, h), (0.0, h - r), (0.0, r)]
        arcs = {2: (w - c, c), 4: (w - c, h - c), 6: (c, h - c)}
        inside = _polygon_inside(np.array(pts))
        return Profile(path_loop(pts, arcs), inside, w, h, False, False)
    elif kind == "slot":
        r = h / 2
        pts = [(r, 0.0), (w - r, 0.0), (w - r, h), (r, h)]
        arcs = {2: (w, r)}
        loop = (f"moveTo({_num(r)}, 0.0).lineTo({_num(w - r)}, 0.0).threePointArc({_pt((w, r))}, {_pt((w - r, h))})"
                f".lineTo({_num(r)}, {_num(h)}).threePointArc({_pt((0.0, r))}, {_pt((r, 0.0))}).close()")
        return Profile(loop, _polygon_inside(np.array(pts)), w, h, False, False)
    else:  # regular polygon
        n = int(rng.choice([5, 6, 6, 8]))
        r = w / 2
        ang = np.pi / 2 + np.arange(n) * 2 * np.pi / n
        pts = [(g(r + r * math.cos(t)), g(r + r * math.sin(t))) for t in ang]
        pts = [pts[-1]] + pts[:-1]
        h = max(p[1] for p in pts) - min(p[1] for p in pts)
        return Profile(path_loop(pts), _polygon_inside(np.array(pts)), w, 2 * r, False, False)
    return Profile(path_loop(pts), _polygon_inside(np.array(pts)), w, h, False, False)


def _circle_fits(profile: Profile, c, r: float, margin: float, others: list) -> bool:
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.stack([c[0] + (r + margin) * np.cos(t), c[1] + (r + margin) * np.sin(t)], 1)
    if not profile.inside(ring).all():
        return False
    return all(math.hypot(c[0] - o[0], c[1] - o[1]) > r + o[2] + margin for o in others)


def make_holes(rng: np.random.Generator, profile: Profile, grid: float, max_holes: int) -> list[str]:
    """Circular holes (or one rectangular window) strictly inside the outer loop."""
    g = lambda v: round(v / grid) * grid  # noqa: E731
    placed = []
    scale = min(profile.width, profile.height)
    if profile.is_circle and rng.random() < 0.6:  # concentric bore: a ring
        r_out = profile.width / 2
        r = g(r_out * rng.uniform(0.3, 0.85))
        return [circle_loop(r_out, 0.0, r)]
    n = int(rng.integers(1, max_holes + 1))
    if profile.is_rect and rng.random() < 0.3:
        a, b = g(profile.width * rng.uniform(0.2, 0.5)), g(profile.height * rng.uniform(0.2, 0.5))
        u, v = g(rng.uniform(0.1, 0.9 - a / profile.width) * profile.width), g(rng.uniform(0.1, 0.9 - b / profile.height) * profile.height)
        pts = np.array([(u + a, v), (u + a, v + b), (u, v + b), (u, v)])
        if profile.inside(pts).all():
            return [path_loop([tuple(p) for p in pts])]
    r = max(g(scale * rng.uniform(0.04, 0.18)), grid)
    margin = scale * 0.04
    symmetric = rng.random() < 0.5 and not profile.is_circle
    lo_v, hi_v = (-profile.height / 2, profile.height / 2) if profile.is_circle else (0.0, profile.height)
    for _ in range(30 * n):
        if len(placed) >= n:
            break
        c = (g(rng.uniform(0, profile.width)), g(rng.uniform(lo_v, hi_v)))
        cands = [c]
        mirror = (g(profile.width - c[0]), c[1])
        if symmetric and abs(mirror[0] - c[0]) > 2 * r + margin:
            cands.append(mirror)
        if all(_circle_fits(profile, cc, r, margin, placed) for cc in cands):
            placed.extend((cc[0], cc[1], r) for cc in cands)
    return [circle_loop(x, y, rr) for x, y, rr in placed]


def _plane_text(origin, x_text, n_text) -> str:
    vec = lambda v: f"cq.Vector({_num(v[0])}, {_num(v[1])}, {_num(v[2])})"  # noqa: E731
    return f"cq.Workplane(cq.Plane({vec(origin)}, {vec(x_text)}, {vec(n_text)}))"


def render_program(sketches: list[Sketch]) -> str:
    """GenCAD-Code text for a list of sketches."""
    lines, loop_id = [HEADER.rstrip("\n")], 0
    for k, s in enumerate(sketches):
        lines.append(f"# Generating a workplane for sketch {k}")
        lines.append(f"wp_sketch{k} = {_plane_text(s.origin, s.x_text, s.n_text)}")
        names = []
        for loop in s.loops:
            lines.append(f"loop{loop_id}=wp_sketch{k}.{loop}")
            names.append(f"loop{loop_id}")
            loop_id += 1
        adds = "".join(f".add({n})" for n in names)
        lines.append(f"solid{k}=wp_sketch{k}{adds}.{s.extrude}")
        lines.append("solid=solid0" if k == 0 else f"solid=solid.{s.op}(solid{k})")
    return "\n".join(lines) + "\n"


def _choice(rng: np.random.Generator, values_weights):
    values, weights = values_weights
    p = np.asarray(weights, dtype=float)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def random_program(rng: np.random.Generator) -> str:
    """One random GenCAD-style program (not yet checked by execution)."""
    n_sketches = _choice(rng, SKETCH_COUNTS)
    normal = _choice(rng, BASE_NORMALS)
    x, y, x_text, n_text = frame_for(normal, rng)
    n = np.array(normal, dtype=float)
    size = q256(rng.uniform(0.25, 1.5)) if rng.random() > 0.35 else 1.5
    grid = size / int(rng.choice([64, 95, 128, 152, 190, 256]))
    profile = make_profile(rng, size, grid)
    loops = [profile.loop]
    if rng.random() < (0.55 if n_sketches == 1 else 0.35):
        loops += make_holes(rng, profile, grid, max_holes=4 if n_sketches == 1 else 2)
    depth = max(q256(size * rng.choice([rng.uniform(0.02, 0.15), rng.uniform(0.15, 0.6), rng.uniform(0.6, 1.0)], p=[0.4, 0.4, 0.2])), 1 / 256)
    both = rng.random() < P_BOTH
    extent = np.abs(x) * profile.width + np.abs(y) * profile.height + np.abs(n) * depth
    origin = np.array([q256(v) for v in rng.uniform(-0.75, 0.75 - np.minimum(extent, 1.5))])
    if profile.is_circle:
        origin = origin + y * q256(profile.height / 2)
    base = Sketch(origin, x_text, n_text, loops, f"extrude({_num(depth)}, both=True)" if both else f"extrude({_num(depth)})")
    sketches = [base]
    for _ in range(n_sketches - 1):
        feat = random_feature(rng, base, profile, x, y, n, depth, grid)
        if feat is not None:
            sketches.append(feat)
    return render_program(sketches)


def random_feature(rng, base: Sketch, profile: Profile, x, y, n, depth: float, grid: float) -> Sketch | None:
    """A boss (union) or pocket/hole (cut) on the top face, or on a side face of a rectangular base."""
    g = lambda v: max(round(v / grid) * grid, grid)  # noqa: E731
    op = "union" if rng.random() < P_UNION else "cut"
    side = profile.is_rect and rng.random() < 0.3
    if not side:  # top face: same frame, origin lifted by the depth, sketch starts at local 0
        lo_v, hi_v = (-profile.height / 2, profile.height / 2) if profile.is_circle else (0.0, profile.height)
        for _ in range(50):
            u0, v0 = q256(rng.uniform(0, profile.width)), q256(rng.uniform(lo_v, hi_v))
            if rng.random() < 0.4:
                r = g(min(profile.width, profile.height) * rng.uniform(0.03, 0.3))
                t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                probe = np.stack([u0 + r + r * np.cos(t), v0 + r * np.sin(t)], 1)
                loops = [circle_loop(r, 0.0, r)]
            else:
                a, b = g(profile.width * rng.uniform(0.1, 0.6)), g(profile.height * rng.uniform(0.1, 0.6))
                probe = np.array([(u0, v0), (u0 + a, v0), (u0 + a, v0 + b), (u0, v0 + b), (u0 + a / 2, v0 + b / 2)])
                loops = [path_loop([(a, 0.0), (a, b), (0.0, b), (0.0, 0.0)])]
            if not profile.inside(probe).all():
                continue
            origin = base.origin + x * u0 + y * v0 + n * depth
            if op == "cut":
                d = -(q256(depth * rng.choice([1.0, rng.uniform(0.2, 0.8)])) or depth)
            else:
                d = q256(depth * rng.uniform(0.3, 2.0)) or 1 / 256
            return Sketch(origin, base.x_text, base.n_text, loops, f"extrude({_num(d)})", op)
        return None
    # side face of a rectangular prism: the face at u = width (outward normal +x of the sketch)
    fx, fy, fx_text, fn_text = frame_for(tuple(int(v) for v in x), rng)
    # face spans y-direction [0, height] and n-direction [0, depth] of the base frame
    corner = base.origin + x * profile.width
    # express the face rectangle in the feature frame
    corners = [corner + y * s + n * t for s in (0, profile.height) for t in (0, depth)]
    uv = np.array([[np.dot(c - corner, fx), np.dot(c - corner, fy)] for c in corners])
    lo, hi = uv.min(0), uv.max(0)
    w, h = hi - lo
    if min(w, h) <= 2 * grid:
        return None
    a, b = g(w * rng.uniform(0.15, 0.6)), g(h * rng.uniform(0.15, 0.6))
    u, v = lo[0] + rng.uniform(0.05, 0.95 - a / w) * w, lo[1] + rng.uniform(0.05, 0.95 - b / h) * h
    origin = np.array([q256(c) for c in corner + fx * u + fy * v])
    if rng.random() < 0.5:
        r = min(a, b) / 2
        loops = [circle_loop(r, r, r)]
    else:
        loops = [path_loop([(a, 0.0), (a, b), (0.0, b), (0.0, 0.0)])]
    if op == "cut":
        d = -q256(profile.width * rng.uniform(0.1, 0.5)) or -1 / 256
    else:
        d = q256(profile.width * rng.uniform(0.1, 0.6)) or 1 / 256
    return Sketch(origin, fx_text, fn_text, loops, f"extrude({_num(d)})", op)
