"""Primitive candidates: a box, an L or U section, a cylinder and a tube fit to the input image,
for the reranker.

Many GenCAD parts are one extruded rectangle or circle (STATS.md: 57% of programs have one sketch,
109 of 258 loops are circles), and the nearest training images of a long bar, a thin plate or a
channel with thin walls are often other shapes or other proportions. So reranking can add, beside
the model's programs and the retrieved ones, the box, the section, the cylinder and the tube whose
renders best fit the input.

The fit needs no CadQuery per trial: each primitive is executed once at unit size (in the sandbox)
and its mesh is stretched along world axes, which keeps a box a box and, along a cylinder's axis,
a cylinder a cylinder, and moving the inner faces of an L or U section (all axis-aligned planes) changes
its wall thickness. The renderer fits the part to the frame, so only proportions are fit: a box's
two side ratios, a section's two side ratios and wall, and a cylinder's length against its diameter. Every point of a coarse log
grid is rendered small (``cad.render``, no lines) and compared with the input's silhouette; the
silhouette cannot tell a thin bar's width from its height, so the best few (over the three axes
for a cylinder) are ranked by the reranker's render terms (lines included) at full size, and
Nelder-Mead on the log ratios finishes from the best. The section's axis, kind and turn are
ranked the same way, from the fitted box's ratios and three walls. A tube is the fitted cylinder with the bore
of ``BORES`` (each a unit tube, executed once) whose render scores best (a bore does not change
the silhouette). The fitted programs are written in GenCAD's form at GenCAD's size
(largest side 1.5), so refinement (``decoding.refine``) and the reward treat them like any other.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from scipy.optimize import minimize

from cad.render import Style, render_geometry, silhouette
from cad.sandbox import ExecOptions, ExecResult, Geometry, SandboxPool
from reward.score import RenderTarget, mask_iou, render_compare, weighted

FIT_PX = 128  # silhouettes are compared at this size
SHORTLIST = 12  # coarse grid points, best by silhouette, that the full render terms rank
GRID = np.geomspace(1 / 64, 64, 25)  # side ratios of the coarse search
# Nelder-Mead from the best of the shortlist, on log side ratios: the first simplex's size, when to
# stop (ratios within 0.5%, scores within 1e-4) and the most renders it may take
SIMPLEX, XATOL, FATOL, MAX_EVALUATIONS = 0.25, 0.005, 1e-4, 80
BORES = tuple(np.round(np.arange(0.2, 0.951, 0.05), 2))  # a tube's inner radius against its outer one
SIZE = 1.5  # GenCAD's normalised largest side
UNIT_WALL = 0.25  # the wall of the unit L and U sections that are executed; fitting moves it
SECTION_WALLS = (0.05, 0.1, 0.2)  # wall thicknesses (against the x extent) the section search starts from
SECTION_SHORTLIST = 6  # sections (axis, kind, turn, start wall), best by silhouette, that the full render terms rank
SECTION_EVALUATIONS = 50  # renders of the section's Nelder-Mead
# (x direction, normal) of a GenCAD sketch plane whose normal is each world axis
PLANES = {0: ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)), 1: ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)), 2: ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0))}


def _vector(v) -> str:
    return "cq.Vector({})".format(",".join(f"{x:.6g}" for x in v))


def _program(axis: int, loops: list[str], depth: float, origin: tuple[float, float, float]) -> str:
    x_dir, normal = PLANES[axis]
    names = [f"loop{i}" for i in range(len(loops))]
    return ("import cadquery as cq\n"
            f"wp_sketch0=cq.Workplane(cq.Plane({_vector(origin)},{_vector(x_dir)},{_vector(normal)}))\n"
            + "".join(f"{n}=wp_sketch0.{loop}\n" for n, loop in zip(names, loops))
            + "solid0=wp_sketch0" + "".join(f".add({n})" for n in names) + f".extrude({depth:.6g})\nsolid=solid0\n")


def box(extent: tuple[float, float, float]) -> str:
    """A box of these world-axis extents (a rectangle on the XY plane, extruded along z)."""
    a, b, c = extent
    rect = f"moveTo({a:.6g},0.0).lineTo({a:.6g},{b:.6g}).lineTo(0.0,{b:.6g}).lineTo(0.0,0.0).close()"
    return _program(2, [rect], c, (-a / 2, -b / 2, -c / 2))


def cylinder(axis: int, diameter: float, length: float, bore: float = 0.0) -> str:
    """A cylinder (a tube with ``bore`` > 0: inner radius / outer radius) along world ``axis``."""
    r = diameter / 2
    origin = [0.0, 0.0, 0.0]
    origin[axis] = -length / 2 if PLANES[axis][1][axis] > 0 else length / 2
    loops = [f"moveTo(0.0,0.0).circle({r:.6g})"] + ([f"moveTo(0.0,0.0).circle({r * bore:.6g})"] if bore else [])
    return _program(axis, loops, length, tuple(origin))


def section_points(kind: str, turn: int, walls: tuple[float, float] = (UNIT_WALL, UNIT_WALL)) -> list[tuple[float, float]]:
    """The outline of an ``L`` or ``U`` section in the unit square, turned ``turn`` quarter turns
    about its centre (the L's corner at the origin, the U open towards +y, before turning), its
    walls ``walls`` thick along x and along y (as fractions of the square's side)."""
    t = UNIT_WALL
    points = {"L": [(0, 0), (1, 0), (1, t), (t, t), (t, 1), (0, 1)],
              "U": [(0, 0), (1, 0), (1, 1), (1 - t, 1), (1 - t, t), (t, t), (t, 1), (0, 1)]}[kind]
    for _ in range(turn % 4):
        points = [(1 - y, x) for x, y in points]
    return [(float(_rewalled(x, walls[0])), float(_rewalled(y, walls[1]))) for x, y in points]


def _rewalled(u, wall: float):
    """Coordinates in [0, 1] of a unit section (walls ``UNIT_WALL``) moved so its walls are ``wall``."""
    return np.interp(u, [0.0, UNIT_WALL, 1 - UNIT_WALL, 1.0], [0.0, wall, 1 - wall, 1.0])


def _plane_axes(axis: int) -> tuple[int, int]:
    """The world axes of the sketch x and y directions of ``PLANES[axis]``."""
    x_dir, normal = (np.array(v) for v in PLANES[axis])
    return int(np.argmax(np.abs(x_dir))), int(np.argmax(np.abs(np.cross(normal, x_dir))))


def section(axis: int, points: list[tuple[float, float]], extent: tuple[float, float, float]) -> str:
    """A prism along world ``axis`` whose cross-section is ``points`` (in the unit square, on the
    sketch plane of ``PLANES[axis]``) stretched to the world-axis ``extent``, centred at the origin."""
    x_dir, normal = (np.array(v) for v in PLANES[axis])
    y_dir = np.cross(normal, x_dir)
    ix, iy = _plane_axes(axis)
    sx, sy, depth = extent[ix], extent[iy], extent[axis]
    (x0, y0), *rest = [(x * sx, y * sy) for x, y in points]
    loop = f"moveTo({x0:.6g},{y0:.6g})" + "".join(f".lineTo({x:.6g},{y:.6g})" for x, y in rest) + ".close()"
    origin = -(sx * x_dir + sy * y_dir + depth * normal) / 2
    return _program(axis, [loop], depth, tuple(origin + 0.0))


def _section_walls(axis: int, extent: np.ndarray, wall: float) -> tuple[float, float]:
    """A wall ``wall`` thick (in the units of ``extent``) as fractions of the section's two sides."""
    return tuple(min(wall / extent[i], 0.45) for i in _plane_axes(axis))


_UNITS: dict[str, Geometry | None] = {}  # unit-size primitives, executed once per process


def _units(codes: list[str], pool: SandboxPool) -> list[Geometry | None]:
    """The geometries of unit-size primitive programs (None: it did not execute), run once per process."""
    missing = [c for c in dict.fromkeys(codes) if c not in _UNITS]
    for code, res in zip(missing, pool.imap(missing, ExecOptions(want_geometry=True))):
        _UNITS[code] = res.geometry if res.executable else None
    return [_UNITS[c] for c in codes]


def _stretched(g: Geometry, scale: np.ndarray | float, shift: np.ndarray | float = 0.0) -> Geometry:
    """``g`` scaled along world axes, then moved by ``shift``."""
    return dataclasses.replace(g, vertices=np.asarray(g.vertices) * scale + shift, edges=np.asarray(g.edges) * scale + shift)


def _walled(g: Geometry, axis: int, extent: np.ndarray, wall: float) -> Geometry:
    """A unit section along ``axis`` (centred, walls ``UNIT_WALL``) with walls ``wall`` thick,
    stretched to ``extent``: its faces are axis-aligned planes, so moving the coordinates of the
    inner ones keeps it the same solid with thinner or thicker walls."""
    def moved(points: np.ndarray) -> np.ndarray:
        p = np.array(points, dtype=float)
        for i, f in zip(_plane_axes(axis), _section_walls(axis, extent, wall)):
            p[..., i] = _rewalled(p[..., i] + 0.5, f) - 0.5
        return p * extent
    return dataclasses.replace(g, vertices=moved(g.vertices), edges=moved(g.edges))


def _silhouette_fit(g: Geometry, target: np.ndarray) -> float:
    return mask_iou(silhouette(render_geometry(g, Style(size=FIT_PX, lines=False))), target)


def _render_fit(g: Geometry, target: RenderTarget, objective: dict[str, float],
                frame: tuple[float, float, float] | None = None) -> float:
    """``objective`` of the mesh's render fit to the window, or placed by ``frame`` (``cad.render``)."""
    return weighted(render_compare(ExecResult("ok", geometry=g), target, objective, frame=frame), objective)


def _search(units: dict, cheap, score, dims: int, starts: np.ndarray | None = None, shortlist: int = SHORTLIST,
            max_evaluations: int = MAX_EVALUATIONS) -> tuple[float, object, np.ndarray]:
    """(score, unit, side ratios) that maximise ``score(unit, ratios)`` over ``units`` (one search
    for a family, such as a cylinder on each axis): the log ratios ``starts`` (default: the coarse
    grid) of every unit ranked by ``cheap``, the ``shortlist`` best ranked by ``score``, then Nelder-Mead from the best (a
    thin plate's best thickness and width lie on a narrow diagonal ridge that steps along one ratio
    at a time do not follow)."""
    seen: dict = {}

    def full(u, p: np.ndarray) -> float:  # a point the search comes back to is not rendered again
        key = (u, tuple(np.round(p, 9)))
        if key not in seen:
            seen[key] = score(u, np.exp(p))
        return seen[key]

    if starts is None:
        starts = np.stack(np.meshgrid(*[np.log(GRID)] * dims, indexing="ij"), -1).reshape(-1, dims)
    ranked = sorted(((u, p) for u in units for p in starts), key=lambda up: -cheap(up[0], np.exp(up[1])))
    best, unit, at = max(((full(u, p), u, p) for u, p in ranked[:shortlist]), key=lambda t: t[0])
    simplex = np.vstack([at, at + SIMPLEX * np.eye(dims)])
    fit = minimize(lambda p: -full(unit, p), at, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": XATOL, "fatol": FATOL, "maxfev": max_evaluations})
    if -fit.fun > best:
        best, at = -fit.fun, fit.x
    return best, unit, np.exp(at)


def _sized(extent: np.ndarray) -> np.ndarray:
    return extent * (SIZE / extent.max())


def _fit_section(pool: SandboxPool, box_ratios: tuple[float, float], small: np.ndarray, target: RenderTarget,
                 objective: dict[str, float]) -> list[str]:
    """The L or U section (its axis and turn among the unit sections) that best fits, its two side
    ratios and its wall thickness (one for both walls) searched from the fitted box's ratios."""
    keys = [(axis, kind, turn) for axis in range(3) for kind in "LU" for turn in range(4)]
    codes = [section(axis, section_points(kind, turn), (1.0, 1.0, 1.0)) for axis, kind, turn in keys]
    units = {k: g for k, g in zip(keys, _units(codes, pool)) if g is not None}
    if not units:
        return []
    extent = lambda r: np.array([1.0, r[0], r[1]])  # noqa: E731
    shaped = lambda k, r: _walled(units[k], k[0], extent(r), r[2])  # noqa: E731
    starts = np.log([[*box_ratios, wall] for wall in SECTION_WALLS])
    _, (axis, kind, turn), r = _search(units, lambda k, r: _silhouette_fit(shaped(k, r), small),
                                       lambda k, r: _render_fit(shaped(k, r), target, objective), 3, starts,
                                       SECTION_SHORTLIST, SECTION_EVALUATIONS)
    return [section(axis, section_points(kind, turn, _section_walls(axis, extent(r), r[2])), tuple(_sized(extent(r))))]


def fit_primitives(image: Image.Image | RenderTarget, pool: SandboxPool, objective: dict[str, float]) -> list[str]:
    """The box, the L or U section, the cylinder (on its best axis) and the tube that best fit
    ``image`` by ``objective`` (the render terms the reranker weighs), as GenCAD programs in that
    order; primitives whose unit program does not execute are left out."""
    target = RenderTarget.of(image)
    small = silhouette(np.asarray(target.image.convert("RGB").resize((FIT_PX, FIT_PX), Image.NEAREST)))
    out = []
    unit_box, = _units([box((1.0, 1.0, 1.0))], pool)
    if unit_box is not None:
        box_scale = lambda r: np.array([1.0, r[0], r[1]])  # noqa: E731
        _, _, (ry, rz) = _search({0: unit_box}, lambda _, r: _silhouette_fit(_stretched(unit_box, box_scale(r)), small),
                                 lambda _, r: _render_fit(_stretched(unit_box, box_scale(r)), target, objective), 2)
        out.append(box(tuple(_sized(np.array([1.0, ry, rz])))))
        out += _fit_section(pool, (ry, rz), small, target, objective)
    units = {axis: g for axis, g in enumerate(_units([cylinder(axis, 1.0, 1.0) for axis in range(3)], pool)) if g is not None}
    if units:
        scale = lambda axis, r: np.where(np.arange(3) == axis, r[0], 1.0)  # noqa: E731
        _, axis, (ratio,) = _search(units, lambda a, r: _silhouette_fit(_stretched(units[a], scale(a, r)), small),
                                    lambda a, r: _render_fit(_stretched(units[a], scale(a, r)), target, objective), 1)
        diameter, length = _sized(np.array([1.0, ratio]))
        out.append(cylinder(axis, diameter, length))
        tubes = [(b, g) for b, g in zip(BORES, _units([cylinder(axis, 1.0, 1.0, b) for b in BORES], pool)) if g is not None]
        if tubes:
            _, bore = max((_render_fit(_stretched(g, scale(axis, [ratio])), target, objective), b) for b, g in tubes)
            out.append(cylinder(axis, diameter, length, bore))
    return out

