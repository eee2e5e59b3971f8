"""Primitive candidates: a box, a cylinder and a tube fit to the input image, for the reranker.

Many GenCAD parts are one extruded rectangle or circle (STATS.md: 57% of programs have one sketch,
109 of 258 loops are circles), and the nearest training images of a long bar or a thin strip are
often other shapes. So reranking can add, beside the model's programs and the retrieved ones, the
box, the cylinder and the tube whose renders best fit the input.

The fit needs no CadQuery per trial: each primitive is executed once at unit size (in the sandbox)
and its mesh is stretched along world axes, which keeps a box a box and, along a cylinder's axis,
a cylinder a cylinder. The renderer fits the part to the frame, so only proportions are fit: a
box's two side ratios and a cylinder's length against its diameter. Every point of a coarse log
grid is rendered small (``cad.render``, no lines) and compared with the input's silhouette; the
silhouette cannot tell a thin bar's width from its height, so the best few are ranked by the
reranker's render terms (lines included) at full size, and two finer grids around the best
finish. A tube's bore is chosen among ``BORES`` by the full render terms (a bore does not change
the silhouette). The fitted programs are written in GenCAD's form at GenCAD's size
(largest side 1.5), so refinement (``decoding.refine``) and the reward treat them like any other.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from cad.render import Style, render_geometry, silhouette
from cad.sandbox import ExecOptions, ExecResult, Geometry, SandboxPool
from reward.score import RenderTarget, mask_iou, render_compare, weighted

FIT_PX = 128  # silhouettes are compared at this size
SHORTLIST = 12  # coarse grid points, best by silhouette, that the full render terms rank
GRID = np.geomspace(1 / 48, 48, 23)  # side ratios of the coarse search
BORES = (0.3, 0.5, 0.7, 0.85)  # a tube's inner radius against its outer one
SIZE = 1.5  # GenCAD's normalised largest side
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


_UNITS: dict[str, Geometry | None] = {}  # unit-size primitives, executed once per process


def _unit(code: str, pool: SandboxPool) -> Geometry | None:
    if code not in _UNITS:
        res = pool.run(code, ExecOptions(want_geometry=True))
        _UNITS[code] = res.geometry if res.executable else None
    return _UNITS[code]


def _stretched(g: Geometry, scale: np.ndarray) -> Geometry:
    return dataclasses.replace(g, vertices=np.asarray(g.vertices) * scale, edges=np.asarray(g.edges) * scale)


def _silhouette_fit(g: Geometry, scale: np.ndarray, target: np.ndarray) -> float:
    return mask_iou(silhouette(render_geometry(_stretched(g, scale), Style(size=FIT_PX, lines=False))), target)


def _render_fit(g: Geometry, scale: np.ndarray, target: RenderTarget, objective: dict[str, float]) -> float:
    return weighted(render_compare(ExecResult("ok", geometry=_stretched(g, scale)), target), objective)


def _search(cheap, score, dims: int) -> np.ndarray:
    """The log side ratios (``dims`` of them) that maximise ``score``: the coarse grid ranked by
    ``cheap``, its ``SHORTLIST`` best points ranked by ``score``, then two finer grids around the best."""
    step = np.log(GRID[1] / GRID[0])
    points = np.stack(np.meshgrid(*[np.log(GRID)] * dims, indexing="ij"), -1).reshape(-1, dims)
    ranked = sorted(points, key=lambda p: -cheap(np.exp(p)))[:SHORTLIST]
    best, best_at = max((score(np.exp(p)), tuple(p)) for p in ranked)
    for _ in range(2):
        step /= 3
        offsets = np.stack(np.meshgrid(*[np.array([-step, 0.0, step])] * dims, indexing="ij"), -1).reshape(-1, dims)
        best, best_at = max((score(np.exp(np.array(best_at) + o)), tuple(np.array(best_at) + o)) for o in offsets)
    return np.exp(np.array(best_at))


def _sized(extent: np.ndarray) -> np.ndarray:
    return extent * (SIZE / extent.max())


def fit_primitives(image: Image.Image | RenderTarget, pool: SandboxPool, objective: dict[str, float]) -> list[str]:
    """The box, the cylinder (on its best axis) and the tube (its bore by ``objective``, the render
    terms the reranker weighs) that best fit ``image``, as GenCAD programs; primitives whose unit
    program does not execute are left out."""
    target = RenderTarget.of(image)
    small = silhouette(np.asarray(target.image.convert("RGB").resize((FIT_PX, FIT_PX), Image.NEAREST)))
    out = []
    unit_box = _unit(box((1.0, 1.0, 1.0)), pool)
    if unit_box is not None:
        scale = lambda r: np.array([1.0, r[0], r[1]])  # noqa: E731
        ry, rz = _search(lambda r: _silhouette_fit(unit_box, scale(r), small),
                         lambda r: _render_fit(unit_box, scale(r), target, objective), 2)
        out.append(box(tuple(_sized(np.array([1.0, ry, rz])))))
    fits = []
    for axis in range(3):
        unit = _unit(cylinder(axis, 1.0, 1.0), pool)
        if unit is None:
            continue
        scale = lambda r, axis=axis: np.where(np.arange(3) == axis, r[0], 1.0)  # noqa: E731
        ratio, = _search(lambda r: _silhouette_fit(unit, scale(r), small),
                         lambda r: _render_fit(unit, scale(r), target, objective), 1)
        fits.append((_render_fit(unit, scale([ratio]), target, objective), axis, ratio))
    if fits:
        _, axis, ratio = max(fits)
        diameter, length = _sized(np.array([1.0, ratio]))
        out.append(cylinder(axis, diameter, length))
        tubes = [cylinder(axis, diameter, length, b) for b in BORES]
        results = pool.imap(tubes, ExecOptions(want_geometry=True))
        scored = [(weighted(render_compare(res, target), objective), code) for code, res in zip(tubes, results)
                  if res.executable and res.geometry is not None]
        if scored:
            out.append(max(scored)[1])
    return out

