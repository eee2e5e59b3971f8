"""Profile prisms read off the input image: one sketch, any outline and holes, extruded once.

Most GenCAD parts are one sketch extruded once (STATS.md: 57% of programs have one sketch), and
the visible end face (the cap) of such a prism shows its whole profile: in the isometric view
from (1, -1, 1) the cap facing the camera (normal +x, -y or +z) lies in front of everything the
prism holds, so nothing hides it. The image draws every B-rep edge as a thin black line, so the
faces are the regions of grey pixels the lines enclose. A face region is the cap of a prism along
an axis when the region swept along that axis's screen direction covers the silhouette: the
best (region, axis, length) by that sweep, over the largest regions and the three axes, is the
prism. Its outline and holes (contours of the region, simplified; a hole that unprojects to a
circle is written as one) are mapped from the screen back to the cap's plane, and the depth is
then fit by the reranker's render terms, stretching one executed mesh along the axis (a prism
stretched along its axis is the same prism, deeper), as ``decoding.primitives`` does.

The programs are written in GenCAD's form at GenCAD's size (largest side 1.5), one with the holes
and one without (a pocket or a boss inside the cap is drawn like a hole), for the reranker.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, binary_fill_holes, label

from cad.render import RIGHT, UP, silhouette
from cad.sandbox import ExecOptions, SandboxPool
from decoding.primitives import PLANES, SIZE, _program, _render_fit
from reward.score import RenderTarget, mask_iou

LINE = 60  # a pixel darker than this in every channel is a drawn edge
SIZE_PX = 448  # the image is read at this size (GenCAD's)
SWEEP_FACTOR = 4  # the sweep search runs on masks this many times smaller
CAPS = 6  # the largest face regions tried as a cap
MIN_REGION = 0.01  # a region smaller than this share of the silhouette is not tried
MIN_HOLE = 12  # holes of fewer pixels are dropped
SIMPLIFY = 1.2  # Douglas-Peucker tolerance of the outlines, in pixels
CIRCLE_TOLERANCE = 0.05  # a contour is a circle when its points lie within this share of the radius
MIN_FIT = 0.8  # a sweep that covers less of the silhouette (IoU) makes no candidate
PRISMS = 2  # the best (region, axis) pairs written as candidates
DEPTH_SPAN = 0.15  # the depth fit tries the sweep's depth times exp(+-this) (or +-2 pixels, if more)
DEPTH_STEPS = 13  # depths tried, evenly spaced in log


@dataclasses.dataclass(frozen=True)
class Cap:
    """A face region read as the visible cap of a prism along world ``axis``."""

    region: np.ndarray  # boolean mask at SIZE_PX
    axis: int
    depth_px: float  # the sweep length on the screen, in pixels at SIZE_PX
    fit: float  # IoU of the swept region with the silhouette (both with holes filled)


def screen_vector(world: np.ndarray) -> np.ndarray:
    """A world vector's (x right, y down) offset on the screen, at one pixel per unit."""
    return np.array([world @ RIGHT, -(world @ UP)])


def plane_basis(axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x direction, y direction, normal) of the GenCAD sketch plane whose normal is ``axis``
    (the normal faces the camera; CadQuery's y direction is normal x x direction)."""
    x_dir, normal = (np.array(v, dtype=float) for v in PLANES[axis])
    return x_dir, np.cross(normal, x_dir), normal


def face_regions(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels of the grey regions the drawn lines enclose (4-connected, so a 1-pixel line of any
    slope separates them) and their count."""
    grey = silhouette(pixels) & ~(pixels[..., :3] < LINE).all(-1)
    return label(grey)


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _small(mask: np.ndarray) -> np.ndarray:
    f = SWEEP_FACTOR
    h, w = mask.shape
    return mask[:h - h % f, :w - w % f].reshape(h // f, f, w // f, f).mean(axis=(1, 3)) >= 0.5


def sweep(region: np.ndarray, target: np.ndarray, direction: np.ndarray) -> tuple[float, int]:
    """(best IoU, steps): ``region`` swept one pixel at a time along ``direction`` (a screen
    vector), the union compared with ``target`` after each step."""
    step = direction / np.abs(direction).max()
    swept = region.copy()
    best = (mask_iou(swept, target), 0)
    for t in range(1, int(np.hypot(*target.shape))):
        swept |= _shifted(region, int(round(t * step[0])), int(round(t * step[1])))
        iou = mask_iou(swept, target)
        if iou > best[0]:
            best = (iou, t)
        elif iou < best[0] - 0.05:  # past the silhouette's end
            break
    return best[0], best[1]


def find_caps(pixels: np.ndarray) -> list[Cap]:
    """The face regions that best explain the silhouette as a prism's cap, best first."""
    labels, count = face_regions(pixels)
    if count == 0:
        return []
    target = binary_fill_holes(silhouette(pixels))
    sizes = np.bincount(labels.ravel())[1:]
    order = [i + 1 for i in np.argsort(-sizes)[:CAPS] if sizes[i] >= MIN_REGION * target.sum()]
    small_target = _small(target)
    caps = []
    for index in order:
        region = labels == index
        small_region = _small(binary_fill_holes(region))
        if not small_region.any():
            continue
        for axis in range(3):
            direction = screen_vector(-plane_basis(axis)[2])
            fit, steps = sweep(small_region, small_target, direction)
            length = steps * SWEEP_FACTOR * np.hypot(*direction) / np.abs(direction).max()
            caps.append(Cap(region, axis, float(length), fit))
    return sorted(caps, key=lambda c: -c.fit)


def _circle(points: np.ndarray) -> tuple[float, float, float] | None:
    """(cx, cy, r) when ``points`` lie on a circle (least squares), else None."""
    if len(points) < 8:
        return None
    a = np.column_stack([2 * points, np.ones(len(points))])
    b = (points ** 2).sum(1)
    (cx, cy, c), *_ = np.linalg.lstsq(a, b, rcond=None)
    r = np.sqrt(max(c + cx ** 2 + cy ** 2, 0.0))
    if r <= 0 or np.abs(np.hypot(*(points - [cx, cy]).T) - r).max() > CIRCLE_TOLERANCE * r + 0.75:
        return None
    return float(cx), float(cy), float(r)


def profile(cap: Cap) -> tuple[Loop, list[Loop]]:
    """The cap's outline and holes in its sketch plane's (u, v) coordinates, in pixels: contours
    of the region grown by one pixel (half a drawn line each side), unprojected from the screen
    and simplified."""
    x_dir, y_dir, _ = plane_basis(cap.axis)
    to_plane = np.linalg.inv(np.column_stack([screen_vector(x_dir), screen_vector(y_dir)]))
    grown = binary_dilation(cap.region, np.ones((3, 3), bool)).astype(np.uint8)
    contours, hierarchy = cv2.findContours(grown, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = max((i for i in range(len(contours)) if hierarchy[0][i][3] < 0), key=lambda i: cv2.contourArea(contours[i]))
    holes = [c for i, c in enumerate(contours) if hierarchy[0][i][3] == outer and cv2.contourArea(c) >= MIN_HOLE]
    plane = lambda c: (c.reshape(-1, 2).astype(float) + 0.5) @ to_plane.T  # noqa: E731
    return simplified(plane(contours[outer])), [simplified(plane(c)) for c in holes]


Loop = tuple[float, float, float] | np.ndarray  # a circle (cx, cy, r) or a polygon's (n, 2) points


def simplified(points: np.ndarray) -> Loop:
    """A closed contour as a circle when it is one, else as its simplified polygon."""
    circle = _circle(points)
    if circle is not None:
        return circle
    return cv2.approxPolyDP(points.astype(np.float32).reshape(-1, 1, 2), SIMPLIFY, True).reshape(-1, 2).astype(float)


def _bounds(loop: Loop) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(loop, tuple):
        cx, cy, r = loop
        return np.array([cx - r, cy - r]), np.array([cx + r, cy + r])
    return loop.min(0), loop.max(0)


def _loop(loop: Loop, scale: float, centre: np.ndarray) -> str:
    if isinstance(loop, tuple):
        cx, cy, r = loop
        x, y = (np.array([cx, cy]) - centre) * scale
        return f"moveTo({x:.6g},{y:.6g}).circle({r * scale:.6g})"
    (x0, y0), *rest = (loop - centre) * scale
    return f"moveTo({x0:.6g},{y0:.6g})" + "".join(f".lineTo({x:.6g},{y:.6g})" for x, y in rest) + ".close()"


def prism_program(axis: int, outline: Loop, holes: list[Loop], depth: float) -> str:
    """The GenCAD program of a prism along world ``axis`` (sketch-plane coordinates and depth in
    the same units), centred at the origin and scaled so its largest side is ``SIZE``."""
    lo, hi = _bounds(outline)
    scale = SIZE / max(*(hi - lo), depth)
    centre = (lo + hi) / 2
    normal = plane_basis(axis)[2]
    loops = [_loop(outline, scale, centre)] + [_loop(h, scale, centre) for h in holes]
    return _program(axis, loops, depth * scale, tuple(-normal * depth * scale / 2 + 0.0))


def _fit_depth(code: str, axis: int, depth: float, pool: SandboxPool, target: RenderTarget,
               objective: dict[str, float]) -> float | None:
    """The depth (in ``code``'s units) whose render fits best among ``DEPTH_STEPS`` around
    ``depth`` (at least two pixels either way, a thin plate's side is a few pixels tall), found by
    stretching ``code``'s executed mesh along ``axis``; None when ``code`` does not execute."""
    res = next(pool.imap([code], ExecOptions(want_geometry=True)))
    if not res.executable or res.geometry is None:
        return None
    g = res.geometry
    along = np.arange(3) == axis
    pixels = depth * np.hypot(*screen_vector(plane_basis(axis)[2]))
    span = max(DEPTH_SPAN, np.log1p(2.0 / max(pixels, 1.0)))

    def score(factor: float) -> float:
        scale = np.where(along, factor, 1.0)
        return _render_fit(dataclasses.replace(g, vertices=np.asarray(g.vertices) * scale,
                                               edges=np.asarray(g.edges) * scale), target, objective)

    factors = np.exp(np.linspace(-span, span, DEPTH_STEPS))
    return depth * float(max(factors, key=score))


def fit_prisms(image: Image.Image | RenderTarget, pool: SandboxPool, objective: dict[str, float]) -> list[str]:
    """Prism programs read off ``image``: for each of the ``PRISMS`` best caps whose sweep fits
    the silhouette, the prism with its depth fit by ``objective``, with its holes and without."""
    target = RenderTarget.of(image)
    pixels = np.asarray(target.image.convert("RGB").resize((SIZE_PX, SIZE_PX), Image.NEAREST))
    out: list[str] = []
    filled = binary_fill_holes(silhouette(pixels))
    for cap in [c for c in find_caps(pixels) if c.fit >= MIN_FIT][:PRISMS]:
        outline, holes = profile(cap)
        direction = screen_vector(-plane_basis(cap.axis)[2])
        _, steps = sweep(binary_fill_holes(cap.region), filled, direction)  # the length at full size
        depth = max(steps / np.abs(direction).max(), 1.0)  # screen steps to world units (one pixel per unit)
        first = prism_program(cap.axis, outline, holes, depth)
        fitted = _fit_depth(first, cap.axis, depth, pool, target, objective)
        if fitted is None:
            continue
        out.append(prism_program(cap.axis, outline, holes, fitted))
        if holes:
            out.append(prism_program(cap.axis, outline, [], fitted))
    return list(dict.fromkeys(out))
