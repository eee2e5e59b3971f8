"""Profile prisms read off the input image: one sketch, any outline and holes, extruded once; a
prism with bosses standing on its cap, or with pockets cut into it; and the union of two or three prisms.

Most GenCAD parts are one sketch extruded once (STATS.md: 57% of programs have one sketch), and
the visible end face (the cap) of such a prism shows its whole profile: in the isometric view
from (1, -1, 1) the cap facing the camera (normal +x, -y or +z) lies in front of everything the
prism holds, so nothing hides it. The image draws every B-rep edge as a thin black line and
every planar face in one flat grey, so the planar faces are the flat grey regions the lines
enclose (and the flat part of a region where a planar face meets a curved one along a line drawn
too faintly to part them). A region is the cap of a prism along an axis when the region swept
along that axis's screen direction covers the silhouette: the best (region, axis, length) by that
sweep, over the largest regions and the three axes, is the prism. The sweep runs on masks four
times smaller, where a region keeps every small pixel it touches, so that a face a few pixels wide
(a plate's edge, a pallet's deck) still sweeps to the silhouette. The prism's outline and holes
(contours of the region, simplified; a contour that unprojects to a circle is written as one) are
mapped from the screen back to the cap's plane, and the depth is then fit by the reranker's
render terms, stretching one executed mesh along the axis (a prism stretched along its axis is the
same prism, deeper), as ``decoding.primitives`` does. The bodies are built in pixel units, where a
point p lies at screen (p . RIGHT, -p . UP) of the image, so every fit draws them there
(``PIXEL_FRAME``), not fit to the window: where the picture holds more than the bodies (a thin
rod out of a block widens its frame), a body fit to the window alone would be drawn larger than
the picture shows it, and its depth fit to that. The programs are written in GenCAD's form
at GenCAD's size (largest side 1.5), one with the holes and one without (a pocket or a boss
inside the cap is drawn like a hole), for the reranker, each with its frame (``program_frame``).

A boss standing on a cap adds too little to the silhouette to show in the sweeps, but it hides
a patch of the cap: the cap region has a hole (or a dent) there, with the boss's top inside it.
The first good cap with such tops gets a candidate with a boss in each such hole: the top's
outline, moved along the view direction onto the cap, extruded to the height that fits the
render best, the cap's depth then fit again with the bosses in place (the corners of the cap's
outline that the bosses hide restored as behind another body, below). A pocket leaves a hole in
the cap region too, with its floor inside, below the cap: the floor swept up to the cap covers
the hole. The first good cap with such floors gets a candidate with a pocket cut in each such
hole, to the depth that fits the render best, and the holes seen in a floor cut through the rest
(as circles where the floor's contour draws them in arcs: holes that touch, or that the pocket's
near wall hides in part).
A tall boss (a rod, a post) leaves a hole at its foot with its top outside the cap, above it: a
planar region there that, swept down the cap's normal, reaches the hole is taken as its top.

Two bodies: the pair of caps whose sweeps together cover the silhouette best, when that beats
the best single cap clearly (by less where both outlines run along their sketch axes). Where one
body hides part of the other's cap, the cap is completed with the hiding body's sweep inside the
cap's convex hull, and the hidden part of its contour does not count against a circle. The
second body's place along the view direction does not change the picture's outline, only the
framing and what hides what, so it is searched by the render terms on the two meshes rendered
together (over the stretch of the line where the bodies meet and half as far again each way, a
bar whose foot is hidden reaching across to the other body), then its depth. Places that render
about as well are told apart by the framing: the picture is the part's bounding box fit to a
window, so bodies read whole and in place are drawn where that fit draws them.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import cv2
import numpy as np
from PIL import Image
from scipy.ndimage import label

from cad.render import GENCAD_STYLE, RIGHT, UP, VIEW_DIR, Frame, box_corners, silhouette, window_fit
from cad.sandbox import ExecOptions, Geometry, SandboxPool
from decoding.primitives import PLANES, SIZE, _render_fit, _stretched, _vector
from reward.score import RenderTarget, drawn_lines, mask_iou

SIZE_PX = 448  # the image is read at this size (GenCAD's)
READ_STYLE = dataclasses.replace(GENCAD_STYLE, size=SIZE_PX)  # GenCAD's style at that size
SWEEP_FACTOR = 4  # the sweep search runs on masks this many times smaller
CAPS = 6  # the largest planar face regions tried as a cap
FLAT_TOLERANCE = 3  # a pixel within this of the planar face grey (every channel) is flat
MIN_FLAT = 0.9  # a region with a smaller share of flat pixels is a curved face, not a cap
MIN_REGION = 0.01  # a region smaller than this share of the silhouette is not tried
MIN_HOLE = 12  # holes of fewer pixels are dropped
SIMPLIFY = 1.2  # Douglas-Peucker tolerance of the outlines, in pixels
STEP = (30.0, 2.5)  # a step in an outline: two corners turning opposite ways by at most this many degrees, within this many pixels of the line that skips them
CIRCLE_TOLERANCE = 0.05  # a contour is a circle when its points lie within this share of the radius
MIN_CORNER_DEGREES = 30.0  # an outline corner hidden behind another body is restored only where its seen edges meet at least this wide
MIN_CORNER_EDGE = 6.0  # ... and where both are at least this many pixels long
BOSS_CORNER_EDGE = 15.0  # ... or this many behind a boss standing on the cap (next to a rounded corner, an arc's chords are shorter)
REGULAR_SIDES = (6, 8, 5)  # a partly hidden outline whose seen edges lie on the sides of a regular polygon of these many sides (GenCAD's nuts) ...
REGULAR_DEGREES = 6.0  # ... their directions within this of its sides' ...
REGULAR_TOLERANCE = 2.5  # ... and their ends within this many pixels of its sides (on the plane), on at least three of them, is that polygon
REGULAR_EDGE = 15.0  # seen edges shorter than this (pixels on the plane: a corner's pixel staircase) are left out of that fit
MIN_SEEN = 0.4  # the share of a contour that must be seen (not hidden by another body) to test it for a circle
CIRCLE_EXTENT = 2.5  # ... and a circle is at most this many times as wide as its whole contour (a straight edge seen alone fits a huge circle)
MIN_FIT = 0.8  # a sweep that covers less of the silhouette (IoU) makes no candidate ...
MIN_BOSSED_FIT = 0.65  # ... but for one this good with bosses standing on it (a tall boss adds much to the silhouette)
PRISMS = 3  # the best (region, axis) pairs written as candidates
QUICK_PRISMS = 3  # the same, in the quick fit (the best cap by the sweep is often a plate's thin end face; 3 with the fits drawn in the picture's frame)
DEPTH_SPAN = 0.15  # the depth fit tries the sweep's depth times exp(+-this) (or +-2 pixels, if more)
DEPTH_STEPS = 13  # the depths' grid, evenly spaced in log (9 of them tried, coarse to fine)
MIN_THROUGH = 30  # a hole through a prism that would show this many pixels of the background ...
THROUGH_SEEN = 0.1  # ... where the image shows less than this share of them is no hole through it (_closed_holes)
MIN_INNER = 100  # holes of the cap of fewer pixels hold no boss or pocket
MIN_TOP = 30  # a tall boss's top (_standing_tops) has at least this many pixels
STANDING_INSIDE = 0.95  # ... and swept down to its foot stays in the silhouette for this share of its pixels
STANDING_ON_CAP = 0.2  # ... and passes over the cap's face for at most this share
MAX_INNER = 4  # bosses stood on one cap, or pockets cut into it, at most
TOPS_PER_HOLE = 3  # bosses standing side by side in one hole of the cap (their feet seen as one patch), at most
HIDDEN_FLOOR = 0.5  # a deep pocket's floor, over half of it hidden by its walls, is the region inside its opening that matches the opening moved down (IoU) this well
BOSSED_CAPS = 2  # caps stood with bosses, at most (the best caps with tops seen in their holes) ...
SAME_SOLID = 0.9  # ... and where their two sweeps match this well (IoU), one prism with both caps' bosses
SPLIT_LINES = 2  # two planar regions with edges on this many lines, each beyond the other's across the silhouette, are one face a boss splits ...
SPLIT_TOLERANCE = 2.0  # ... the four ends of the two edges within this many pixels of their line
MIN_WALL = 2  # a boss's top or a pocket's floor swept fewer pixels than this to cover its hole is flush with the cap
OVERCUT = 1.0  # a cut starts this many pixels above the face it opens
MIN_FLOOR = 0.5  # a pocket stops at least this many pixels above the bottom of its prism
LEVEL_TOLERANCE = 0.01  # a point within this many pixels of a pocket's floor plane lies on it
INNER_STEPS = 7  # boss heights or pocket depths tried, evenly spaced in log around the sweep's
BOSS_CLIMB = 0.6  # a boss height best at an end of that grid climbs on in its steps while the fit improves, up to the sweep's times exp(+-this): a top's hole in the cap also holds what lies beside the boss (a hole through the cap), which lengthens the sweep
ARC_SPANS = (8, 16, 32)  # circles through a floor's holes are tried through contour points this many apart ...
ARC_POINTS = 12  # ... and one is kept where at least this many contour points lie on it (_circle's tolerance) ...
ARC_COVERAGE = 0.3  # ... spread over at least this share of its circumference (of 36 sectors) ...
ARC_ON_FACE = 0.1  # ... with at most this share of its inside on the floor (a hole has no floor in it) ...
ARC_IN_OPENING = 0.5  # ... and at least this share inside the pocket's opening
MAX_ARCS = 8  # circles found in one floor, at most
UNION_GAIN = 0.05  # a second body must raise the sweep's IoU with the silhouette by this much (less is within the sweep's noise) ...
UNION_GAIN_REGULAR = 0.03  # ... or by this much where both caps' outlines are regular (a bar standing out of a block; at most UNION_GAIN)
UNION_REGULAR = 0.9  # ... that is, this share of each outline's length lies along its sketch axes (_regularity)
THIRD_REGULAR = 0.8  # a third body is added only where its outline and the second's are this regular (a slanted outline is a face read in the wrong plane)
UNION_FIRSTS = 3  # the best single caps tried as the first of two
UNION_STEPS = 21  # places along the view direction tried for the second body, twice (coarse, then fine)
AXIS_TIE = 0.005  # second caps whose sweeps fit within this of the best one's are alike (_likeliest) ...
AXIS_REGULAR = 0.3  # ... and one more regular by this share is taken instead
FRAMING_SLACK = 0.005  # an added body's places that fit (objective) within this of the best are told apart ...
FRAMING_WEIGHT = 0.01  # ... by their fit less this per pixel by which the picture's window fit would draw the bodies elsewhere (_framing_error) ...
FRAMING_TRUST = 2.0  # ... where one of them frames the picture within this many pixels (the bodies explain its framing)
REACH_TOLERANCE = 0.01  # pixels: bodies farther apart than this along an axis are apart (_reaching) ...
REACH_STEPS = 11  # places tried each way beyond where the bodies meet, twice (coarse, then fine)
REACH_END = 6.0  # the outline's points this near its end (or a quarter of its length, if less) make that end: an edge the other body hid is ragged
SNAP_STEPS = 11  # places along the view direction tried for a body standing on a face of the others (_snapped), twice (coarse, then fine)
AXIS_DEGREES = 3.0  # an outline's edge within this of a sketch axis lies along it (_regularity)
ARC_CORNERS = 4  # an outline's corners, at least this many in a row (three chords: any three points lie on a circle) ...
ARC_TOLERANCE = 1.0  # ... within this many pixels (on the plane) of one circle ...
ARC_SAGITTA = 1.6  # ... whose chords between them stand at most this many pixels from it on the screen (Douglas-Peucker leaves them within SIMPLIFY; a regular polygon's corners lie on a circle too) ...
ARC_TURN = (3.0, 50.0)  # ... each of the inner corners turning the same way by this many degrees ...
ARC_SPAN = 300.0  # ... and spanning at most this many degrees of it, are written as one arc


@dataclasses.dataclass(frozen=True)
class Cap:
    """A face region read as the visible cap of a prism along world ``axis``."""

    region: np.ndarray  # boolean mask at SIZE_PX
    axis: int
    fit: float  # IoU of the swept region (with what other bodies cover) with the silhouette, holes filled
    index: int = 0  # the region's number (planar_regions, from 1)
    swept: np.ndarray | None = None  # the swept region (with the other bodies), at the sweep's size


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
    grey = silhouette(pixels) & ~drawn_lines(pixels)
    return label(grey)


def flat_pixels(pixels: np.ndarray) -> np.ndarray:
    """The pixels in the planar faces' flat grey (within ``FLAT_TOLERANCE`` in every channel)."""
    return (np.abs(pixels[..., :3].astype(int) - GENCAD_STYLE.face_rgb) <= FLAT_TOLERANCE).all(-1)


def planar_regions(pixels: np.ndarray) -> list[np.ndarray]:
    """The regions that may be planar faces, largest first: the flat grey regions (at least
    ``MIN_FLAT`` of their pixels flat); and the flat parts of a region that is partly flat and
    partly shaded, where a planar face meets a curved one along an edge drawn too faintly to
    separate them (a boss's foot on a plate)."""
    labels, count = face_regions(pixels)
    flat = flat_pixels(pixels)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    flat_sizes = np.bincount(labels.ravel(), weights=flat.ravel(), minlength=count + 1)
    regions = [labels == i for i in range(1, count + 1) if flat_sizes[i] >= MIN_FLAT * sizes[i]]
    mixed = np.isin(labels, [i for i in range(1, count + 1) if 0 < flat_sizes[i] < MIN_FLAT * sizes[i]])
    parts, n_parts = label(mixed & flat)
    regions += [parts == i for i in range(1, n_parts + 1)]
    return sorted(regions, key=lambda r: -int(r.sum()))


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of ``mask``'s set pixels, ends excluded; None when it has none."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) if len(rows) else None


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: what the background joined to the frame's border through
    pixels' four neighbours does not reach. ``scipy.ndimage.binary_fill_holes``'s mask, from one
    flood fill, about 30x faster."""
    h, w = mask.shape
    flood = np.zeros((h + 2, w + 2), np.uint8)  # a background frame round it: the flood reaches every border pixel's
    flood[1:-1, 1:-1] = mask
    cv2.floodFill(flood, None, (0, 0), 2, flags=4)
    return flood[1:-1, 1:-1] != 2


CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # a pixel and its four neighbours
SQUARE5 = np.ones((5, 5), np.uint8)


def dilated(mask: np.ndarray, kernel: np.ndarray = CROSS, iterations: int = 1) -> np.ndarray:
    """``mask`` grown by ``kernel`` (symmetric) ``iterations`` times, nothing from beyond its
    frame: ``scipy.ndimage.binary_dilation``'s mask, about 30x faster."""
    return cv2.dilate(mask.astype(np.uint8), kernel, iterations=iterations).astype(bool)


def _holes_filled(region: np.ndarray) -> np.ndarray:
    """``region`` with its holes filled: ``fill_holes`` run on the region's box, the same mask (a
    background pixel on the box's edge touches the background outside it) at the box's cost."""
    box = _box(region)
    if box is None:
        return region.copy()
    y0, y1, x0, x1 = box
    out = np.zeros_like(region)
    out[y0:y1, x0:x1] = fill_holes(region[y0:y1, x0:x1])
    return out


def _small(mask: np.ndarray, share: float = 0.5) -> np.ndarray:
    """``mask`` at the sweep's size: a small pixel is set where at least ``share`` of its pixels are
    (with ``share`` 0, where any is: a region keeps its thin strips, a plate's edge a few pixels wide)."""
    f = SWEEP_FACTOR
    h, w = mask.shape
    blocks = mask[:h - h % f, :w - w % f].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return blocks > 0 if share == 0 else blocks >= share


def sweep(region: np.ndarray, target: np.ndarray, direction: np.ndarray,
          base: np.ndarray | None = None) -> tuple[float, int, np.ndarray]:
    """(best IoU, steps, swept mask): ``region`` swept one pixel at a time along ``direction`` (a
    screen vector), its union with ``base`` (what other bodies cover) compared with ``target``
    after each step. The IoU is kept up to date from the pixels each step adds, inside the
    region's box, so a step costs the region's box rather than the whole image. The sweep stops
    once the moved region has passed the target's box (no step after that can raise the IoU), and
    the mask is rebuilt once for the best step."""
    step = direction / np.abs(direction).max()
    swept = region | (base if base is not None else False)
    inter, union = np.count_nonzero(swept & target), np.count_nonzero(swept | target)
    best_iou, best_t = (inter / union if union else 0.0), 0  # mask_iou's number
    box, target_box = _box(region), _box(target)
    if box is None or target_box is None:
        return best_iou, best_t, swept
    (y0, y1, x0, x1), (ty0, ty1, tx0, tx1), (h, w) = box, target_box, region.shape

    def shift(t: int) -> tuple[int, int]:
        return int(round(t * step[0])), int(round(t * step[1]))

    def past(dx: int, dy: int) -> bool:  # the moved box lies beyond the target's box along the direction of motion
        return ((step[0] > 0 and x0 + dx >= tx1) or (step[0] < 0 and x1 + dx <= tx0)
                or (step[1] > 0 and y0 + dy >= ty1) or (step[1] < 0 and y1 + dy <= ty0))

    def moved(dx: int, dy: int):
        """(the screen slice the region covers moved by (dx, dy), the region's part inside it), or None."""
        top, bottom, left, right = max(y0 + dy, 0), min(y1 + dy, h), max(x0 + dx, 0), min(x1 + dx, w)
        if top >= bottom or left >= right:
            return None
        return (slice(top, bottom), slice(left, right)), region[top - dy:bottom - dy, left - dx:right - dx]

    mask = swept.copy()
    for t in range(1, int(np.hypot(*target.shape))):
        dx, dy = shift(t)
        if past(dx, dy):
            break
        hit = moved(dx, dy)
        if hit is not None:
            at, part = hit
            new = part & ~mask[at]
            gain = np.count_nonzero(new & target[at])  # counts, not sums: 3x faster on a small box
            inter, union = inter + gain, union + np.count_nonzero(new) - gain
            mask[at] |= part
        iou = inter / union if union else 0.0
        if iou > best_iou:
            best_iou, best_t = iou, t
        elif iou < best_iou - 0.05:  # past the silhouette's end
            break
    for t in range(1, best_t + 1):  # the mask at the best step
        hit = moved(*shift(t))
        if hit is not None:
            swept[hit[0]] |= hit[1]
    return best_iou, best_t, swept


def find_caps(pixels: np.ndarray, regions: list[np.ndarray], base: np.ndarray | None = None,
              exclude: tuple[int, ...] = ()) -> list[Cap]:
    """The planar face ``regions`` (``planar_regions`` of ``pixels``) that best explain the
    silhouette (its holes filled) as a prism's cap, best first; with ``base`` (a mask at the
    sweep's size), what they add to it; the regions numbered ``exclude`` (from 1) are left out.
    The background seen inside the silhouette is no part of the solid: a region's sweep is
    compared with the silhouette without it, but for what its own holes show (a notch whose far
    side is closed by a thin wall is not the prism's to cover, and a plate's end face swept
    across it is no better for covering it)."""
    drawn = silhouette(pixels)
    target = fill_holes(drawn)
    background = target & ~drawn  # seen through the part
    caps = []
    for index, region in _cap_regions(regions, target, exclude):
        filled_region = _holes_filled(region)
        small_region = _small(filled_region, share=0)
        small_target = _small(target & ~(background & ~filled_region))  # the background seen through the cap's own holes stays: its sweep covers them
        for axis in range(3):
            direction = screen_vector(-plane_basis(axis)[2])
            fit, _, swept = sweep(small_region, small_target, direction, base)
            caps.append(Cap(region, axis, fit, index, swept))
    return sorted(caps, key=lambda c: -c.fit)


def _cap_regions(regions: list[np.ndarray], target: np.ndarray, exclude: tuple[int, ...] = ()) -> list[tuple[int, np.ndarray]]:
    """The ``regions`` tried as caps, each with its number (from 1): the ``CAPS`` largest of at
    least ``MIN_REGION`` of the silhouette ``target``, less those numbered ``exclude``."""
    return [(i, r) for i, r in enumerate(regions, 1) if r.sum() >= MIN_REGION * target.sum() and i not in exclude][:CAPS]


def _circle(points: np.ndarray, width: float | None = None) -> tuple[float, float, float] | None:
    """(cx, cy, r) when ``points`` lie on a circle (least squares) at most ``CIRCLE_EXTENT`` times
    ``width`` across (when given: the width of the contour they are seen of), else None."""
    if len(points) < 8:
        return None
    (cx, cy), r, off = _fit_circle(points)
    if r <= 0 or off > CIRCLE_TOLERANCE * r + 0.75:
        return None
    if width is not None and 2 * r > CIRCLE_EXTENT * width:
        return None
    return float(cx), float(cy), r


def _fit_circle(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The least-squares circle through ``points`` (Kasa's fit): centre, radius, and the largest
    distance of a point from it."""
    a = np.column_stack([2 * points, np.ones(len(points))])
    (cx, cy, c), *_ = np.linalg.lstsq(a, (points ** 2).sum(1), rcond=None)
    centre = np.array([cx, cy])
    r = float(np.sqrt(max(c + cx * cx + cy * cy, 0.0)))
    return centre, r, float(np.abs(np.hypot(*(points - centre).T) - r).max())


def _off_line(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far ``points`` lie from the lines through ``a`` and ``b`` (points, or rows of them)."""
    ab, ap = b - a, points - a
    return np.abs(ab[..., 0] * ap[..., 1] - ab[..., 1] * ap[..., 0]) / np.maximum(np.hypot(ab[..., 0], ab[..., 1]), 1e-9)


def _to_screen(axis: int) -> np.ndarray:
    """The map of the (u, v) coordinates of ``axis``'s sketch plane to screen offsets."""
    x_dir, y_dir, _ = plane_basis(axis)
    return np.column_stack([screen_vector(x_dir), screen_vector(y_dir)])


def _to_plane(axis: int) -> np.ndarray:
    """The map of screen offsets to the (u, v) coordinates of ``axis``'s sketch plane."""
    return np.linalg.inv(_to_screen(axis))


def profile(cap: Cap, hidden: np.ndarray | None = None, seen: np.ndarray | None = None,
            corner_edge: float | None = None) -> tuple[Loop, list[Loop]]:
    """The cap's outline and holes in its sketch plane's (u, v) coordinates, in pixels: contours
    of the region grown into its four neighbours (onto the drawn line around it, whose pixels lie
    on the edge; grown into all eight, it would cross a slanted line's staircase at its corners:
    outlines a pixel too wide), unprojected from the screen and simplified; contour pixels in
    ``hidden`` (where another body hides the cap) do not count when testing for a circle; ``seen``
    (the cap's own pixels, before it was completed where hidden) marks the edges that are seen
    when the outline is tested for a regular polygon (an edge along them is seen, however near it
    runs to the body that hides the rest); ``corner_edge``: ``_extended``'s shortest seen edge
    (default ``MIN_CORNER_EDGE``)."""
    to_plane = _to_plane(cap.axis)
    beside = hidden if hidden is None or seen is None else hidden & ~dilated(seen, iterations=2)
    outer, holes = _contours(cap.region)
    return (simplified(outer, to_plane, hidden, beside, corner_edge),
            [simplified(c, to_plane, hidden, beside, corner_edge) for c in holes])


def _contours(region: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The outer contour of ``region`` grown into its four neighbours (OpenCV's pixels) and the
    contours of its holes of at least ``MIN_HOLE`` pixels."""
    grown = dilated(region).astype(np.uint8)
    contours, hierarchy = cv2.findContours(grown, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = max((i for i in range(len(contours)) if hierarchy[0][i][3] < 0), key=lambda i: cv2.contourArea(contours[i]))
    return contours[outer], [c for i, c in enumerate(contours) if hierarchy[0][i][3] == outer and cv2.contourArea(c) >= MIN_HOLE]


Loop = tuple[float, float, float] | np.ndarray  # a circle (cx, cy, r) or a polygon's (n, 2) points


def _on_plane(pixels: np.ndarray, to_plane: np.ndarray) -> np.ndarray:
    """Screen pixels (x, y; OpenCV's contours or polygons of them) as (n, 2) points of the sketch
    plane that ``to_plane`` maps to, taken at the pixels' centres."""
    return (pixels.reshape(-1, 2).astype(float) + 0.5) @ to_plane.T


def _on_screen(points: np.ndarray, to_plane: np.ndarray) -> np.ndarray:
    """Sketch-plane points back on the screen (the inverse of ``_on_plane``)."""
    return points @ np.linalg.inv(to_plane).T - 0.5


def simplified(contour: np.ndarray, to_plane: np.ndarray, hidden: np.ndarray | None = None,
               beside: np.ndarray | None = None, corner_edge: float | None = None) -> Loop:
    """A closed contour of pixels (OpenCV's) in the sketch plane (``to_plane`` maps screen
    offsets to it): a circle when its pixels outside ``hidden`` (at least ``MIN_SEEN`` of them)
    lie on one no wider than the contour allows (``CIRCLE_EXTENT``), else its polygon simplified
    on the screen, where the staircase of the pixels is at most a pixel high, without its small
    steps (``_without_steps``): the regular polygon
    its seen edges lie on, where part of it is hidden (``_regular``; edges in ``beside``, default
    ``hidden``, are not seen), else with its hidden corners restored (``_extended``, where the seen
    edges are ``corner_edge`` long)."""
    points = contour.reshape(-1, 2)
    seen = np.ones(len(points), bool) if hidden is None else ~hidden[points[:, 1], points[:, 0]]
    on_plane = _on_plane(points, to_plane)
    circle = _circle(on_plane[seen], np.ptp(on_plane, 0).max()) if seen.mean() >= MIN_SEEN else None
    if circle is not None:
        return circle
    polygon = _without_steps(cv2.approxPolyDP(contour, SIMPLIFY, True).reshape(-1, 2).astype(float))
    if hidden is None:
        return _on_plane(polygon, to_plane)
    regular = _regular(polygon, hidden if beside is None else beside, to_plane)
    return regular if regular is not None else _on_plane(_extended(polygon, hidden, corner_edge), to_plane)


def _turns(polygon: np.ndarray) -> np.ndarray:
    """The degrees by which a closed polygon turns at each corner, from the edge before it
    (signed: positive counter-clockwise in its coordinates)."""
    d = np.roll(polygon, -1, 0) - polygon
    heading = np.arctan2(d[:, 1], d[:, 0])
    return np.degrees(np.angle(np.exp(1j * (heading - np.roll(heading, 1)))))


def _without_steps(polygon: np.ndarray) -> np.ndarray:
    """``polygon`` (screen points) with its steps taken out, shallowest first: pairs of corners
    turning opposite ways by at most ``STEP[0]`` degrees and within ``STEP[1]`` pixels of the line
    from the corner before them to the corner after. A straight edge whose pixels the face's
    drawn edges or a neighbouring region nibble is read with a small jog in it, drawn as an edge
    across the face; corners along a curve all turn the same way and stay."""
    while len(polygon) > 4:
        turn, n, best = _turns(polygon), len(polygon), None
        for k in range(n):
            k1 = (k + 1) % n
            if turn[k] * turn[k1] >= 0 or max(abs(turn[k]), abs(turn[k1])) > STEP[0]:
                continue
            a, b = polygon[k - 1], polygon[(k + 2) % n]
            if np.hypot(*(b - a)) < 1e-9:
                continue
            off = float(_off_line(polygon[[k, k1]], a, b).max())
            if off <= STEP[1] and (best is None or off < best[0]):
                best = (off, k, k1)
        if best is None:
            break
        polygon = np.delete(polygon, best[1:], 0)
    return polygon


def _covered(p: np.ndarray, hidden: np.ndarray) -> bool:
    """Whether the screen point ``p`` lies in ``hidden``."""
    x, y = np.rint(p).astype(int)
    return 0 <= x < hidden.shape[1] and 0 <= y < hidden.shape[0] and bool(hidden[y, x])


def _hidden_edges(polygon: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """For each edge of ``polygon`` (screen points; edge i from point i to i + 1), whether
    ``hidden`` covers at least half of it."""
    ends = np.roll(polygon, -1, 0)
    return np.array([np.mean([_covered(a + t * (b - a), hidden) for t in np.linspace(0.1, 0.9, 9)]) >= 0.5
                     for a, b in zip(polygon, ends)])


def _regular(polygon: np.ndarray, hidden: np.ndarray, to_plane: np.ndarray) -> np.ndarray | None:
    """The regular polygon (``REGULAR_SIDES``, in the sketch plane) that ``polygon`` (screen
    points, partly ``hidden`` by another body) is: its seen edges (``REGULAR_EDGE`` long) run
    along the polygon's sides (``REGULAR_DEGREES``) on at least three of them, their ends within
    ``REGULAR_TOLERANCE`` of the sides (one centre and one apothem fit to them all by least
    squares), and each of its corners is either seen (within ``MIN_CORNER_EDGE`` of the outline's)
    or hidden. None where no such polygon is found, or where nothing of the outline is hidden."""
    if len(polygon) < 4:
        return None
    edge_hidden = _hidden_edges(polygon, hidden)
    if edge_hidden.all() or not edge_hidden.any():
        return None
    points = _on_plane(polygon, to_plane)
    ends = np.roll(points, -1, 0)
    d = ends - points
    x, y = points.T
    if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # turn it counter-clockwise: outward normals on the right
        return _regular(polygon[::-1], hidden, to_plane)
    use = ~edge_hidden & (np.hypot(*d.T) >= REGULAR_EDGE)
    if not use.any():
        return None
    theta, weight = np.arctan2(d[use, 1], d[use, 0]), np.hypot(*d[use].T)
    for sides in REGULAR_SIDES:
        step = 2 * np.pi / sides
        phi = np.angle(np.sum(weight * np.exp(1j * sides * theta))) / sides
        k = np.rint((theta - phi) / step).astype(int)
        off = theta - phi - k * step
        if np.degrees(np.abs(off)).max() > REGULAR_DEGREES:
            continue
        k %= sides
        if len(set(k)) < 3:
            continue
        normals = np.column_stack([np.sin(phi + k * step), -np.cos(phi + k * step)])  # outward, of each seen edge's side
        rows = np.vstack([normals, normals])
        rhs = np.concatenate([(normals * points[use]).sum(1), (normals * ends[use]).sum(1)])
        (cx, cy, apothem), *_ = np.linalg.lstsq(np.column_stack([rows, np.ones(len(rows))]), rhs, rcond=None)
        if apothem <= 0 or np.abs(rows @ [cx, cy] + apothem - rhs).max() > REGULAR_TOLERANCE:
            continue
        angles = phi - np.pi / 2 + step / 2 + np.arange(sides) * step  # the corner between side j and side j + 1
        corners = np.array([cx, cy]) + apothem / np.cos(step / 2) * np.column_stack([np.cos(angles), np.sin(angles)])
        on_screen = _on_screen(corners, to_plane)
        near = np.hypot(*(on_screen[:, None] - polygon[None]).transpose(2, 0, 1)).min(1) <= MIN_CORNER_EDGE
        if all(n or _covered(c, hidden) for n, c in zip(near, on_screen)):
            return corners
    return None


def _extended(polygon: np.ndarray, hidden: np.ndarray, corner_edge: float | None = None) -> np.ndarray:
    """``polygon`` (screen points) with each run of edges ``hidden`` hides (where another body
    stands in front of the face) replaced by the point where the seen edges on either side of it
    meet when extended, where that point is hidden too, both edges are ``corner_edge`` (default
    ``MIN_CORNER_EDGE``) long and the corner there is not sharper than ``MIN_CORNER_DEGREES`` on
    the screen: a corner behind a post is the corner its two seen edges make, not the chord
    between where they disappear (nearly parallel edges, a bar's sides, would meet in a spike)."""
    n = len(polygon)
    if n < 4:
        return polygon
    edge_hidden = _hidden_edges(polygon, hidden)
    if edge_hidden.all() or not edge_hidden.any():
        return polygon
    points, dropped = polygon.copy(), set()
    for i in (i for i in range(n) if not edge_hidden[i] and edge_hidden[(i + 1) % n]):
        j = k = (i + 1) % n  # seen edge i ends at vertex j, hidden edges j .. k-1, seen edge k starts at vertex k
        while edge_hidden[k]:
            k = (k + 1) % n
        d1, d2 = polygon[j] - polygon[i], polygon[(k + 1) % n] - polygon[k]
        a = np.column_stack([d1, -d2])
        if abs(np.linalg.det(a)) <= 1e-9:
            continue
        s, u = np.linalg.solve(a, polygon[k] - polygon[j])  # polygon[j] + s d1 = polygon[k] + u d2
        corner = polygon[j] + s * d1
        lengths = np.hypot(*d1), np.hypot(*d2)
        angle = np.degrees(np.arccos(np.clip(-d1 @ d2 / (lengths[0] * lengths[1]), -1.0, 1.0)))
        seen = min(lengths) >= (MIN_CORNER_EDGE if corner_edge is None else corner_edge)  # a pixel staircase's step has no direction
        if s > 0 and u < 0 and seen and angle >= MIN_CORNER_DEGREES and _covered(corner, hidden):  # ahead along edge i, behind along edge k, out of sight
            points[j] = corner
            dropped.update((j + m) % n for m in range(1, (k - j) % n + 1))
    return points[[v for v in range(n) if v not in dropped]]


def _bounds(loop: Loop) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(loop, tuple):
        cx, cy, r = loop
        return np.array([cx - r, cy - r]), np.array([cx + r, cy + r])
    return loop.min(0), loop.max(0)


def _arc_through(points: np.ndarray, extent: float, to_screen: np.ndarray) -> np.ndarray | None:
    """The point halfway along the arc through ``points`` (consecutive corners of an outline
    ``extent`` wide, on a plane that ``to_screen`` draws), where they make one (``ARC_TOLERANCE``,
    ``ARC_SAGITTA``, ``ARC_SPAN``, a circle at most ``CIRCLE_EXTENT`` times as wide as the
    outline); None where they do not."""
    centre, r, off = _fit_circle(points)
    if off > ARC_TOLERANCE or not 0 < 2 * r <= CIRCLE_EXTENT * extent:
        return None
    angles = np.unwrap(np.arctan2(*(points - centre).T[::-1]))
    steps = np.diff(angles)
    if not ((steps > 0).all() or (steps < 0).all()) or np.degrees(abs(angles[-1] - angles[0])) > ARC_SPAN:
        return None
    halves = (angles[:-1] + angles[1:]) / 2  # each chord's arc, halfway: how far it stands from the chord on the screen
    a, b, m = (p @ to_screen.T for p in (points[:-1], points[1:], centre + r * np.column_stack([np.cos(halves), np.sin(halves)])))
    if _off_line(m, a, b).max() > ARC_SAGITTA:
        return None
    mid = (angles[0] + angles[-1]) / 2
    return centre + r * np.array([np.cos(mid), np.sin(mid)])


def arcs(polygon: np.ndarray, to_screen: np.ndarray = np.eye(2)) -> tuple[np.ndarray, dict[int, tuple[int, np.ndarray]]]:
    """The polygon's corners, turned to start at a corner no arc passes through (one that does not
    bend like an arc's, or else where the longest edge starts), and its arcs:
    {first corner: (last corner, the arc's middle point)}, the last corner ``len(polygon)`` where
    an arc ends at the first. Runs of corners read off a curved edge (``ARC_CORNERS``,
    ``ARC_TURN``, ``_arc_through``) are arcs, taken greedily, longest first from the start;
    ``to_screen`` draws the polygon's plane on the screen (``_to_screen``)."""
    n = len(polygon)
    if n < ARC_CORNERS:
        return polygon, {}
    turn = _turns(polygon)
    bends = (np.abs(turn) >= ARC_TURN[0]) & (np.abs(turn) <= ARC_TURN[1])
    edges = np.hypot(*(np.roll(polygon, -1, 0) - polygon).T)
    start = int(np.argmin(bends)) if not bends.all() else int(np.argmax(edges))  # or where its longest edge starts
    polygon, turn, bends = np.roll(polygon, -start, 0), np.roll(turn, -start), np.roll(bends, -start)
    ring = np.vstack([polygon, polygon[:1]])
    extent = float(np.ptp(polygon, 0).max())
    found, i = {}, 0
    while i < n - 1:
        best = None
        for j in range(i + ARC_CORNERS - 1, n + 1):
            inner = slice(i + 1, j)
            if not bends[inner].all() or len(set(np.sign(turn[inner]))) > 1:
                break
            mid = _arc_through(ring[i:j + 1], extent, to_screen)
            if mid is None:
                break
            best = (j, mid)
        if best is None:
            i += 1
            continue
        found[i] = best
        i = best[0]
    return (polygon, found) if found else (np.roll(polygon, start, 0), found)


def _loop(loop: Loop, scale: float, centre: np.ndarray, to_screen: np.ndarray = np.eye(2)) -> str:
    """A loop's CadQuery path: a circle, or the polygon's corners joined by lines and by arcs
    where runs of them were read off a curved edge (``arcs``; ``to_screen`` draws its plane)."""
    if isinstance(loop, tuple):
        cx, cy, r = loop
        x, y = (np.array([cx, cy]) - centre) * scale
        return f"moveTo({x:.6g},{y:.6g}).circle({r * scale:.6g})"
    polygon, found = arcs(np.asarray(loop, dtype=float), to_screen)
    ring = (np.vstack([polygon, polygon[:1]]) - centre) * scale
    path, i = f"moveTo({ring[0, 0]:.6g},{ring[0, 1]:.6g})", 0
    while i < len(polygon):
        if i in found:
            j, mid = found[i]
            (mx, my), (x, y) = (mid - centre) * scale, ring[j]
            path += f".threePointArc(({mx:.6g},{my:.6g}),({x:.6g},{y:.6g}))"
            i = j
        else:
            i += 1
            if i < len(polygon):
                path += f".lineTo({ring[i, 0]:.6g},{ring[i, 1]:.6g})"
    return path + ".close()"


@dataclasses.dataclass(frozen=True)
class Body:
    """One extruded sketch, in pixel units: its cap lies in the plane through ``shift`` with the
    normal of ``axis`` (``plane_basis``), the prism extends ``depth`` behind it; ``cut`` bodies
    are cut from the bodies before them, the others joined to them. ``both``: written as GenCAD's
    symmetric extrusion (``both=True``) from the plane half way down, the same solid with its side
    faces split there (a line drawn round its middle)."""

    axis: int
    outline: Loop
    holes: tuple[Loop, ...]
    depth: float
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cut: bool = False
    both: bool = False

    def corners(self) -> np.ndarray:
        x_dir, y_dir, normal = plane_basis(self.axis)
        lo, hi = _bounds(self.outline)
        return np.array([u * x_dir + v * y_dir + w * normal for u in (lo[0], hi[0]) for v in (lo[1], hi[1])
                         for w in (-self.depth, 0.0)]) + self.shift


def program(bodies: list[Body], normalise: bool = True) -> str:
    """The GenCAD program of ``bodies`` (one sketch each; the first joined to nothing), centred at
    the origin and scaled so the largest side of what is joined is ``SIZE`` (as they are, in pixel
    units, without ``normalise``)."""
    scale, centre = _normalisation(bodies) if normalise else (1.0, np.zeros(3))
    lines, n_loop = ["import cadquery as cq"], 0
    for i, b in enumerate(bodies):
        x_dir, _, normal = plane_basis(b.axis)
        origin = (np.asarray(b.shift) - (b.depth / 2 if b.both else b.depth) * normal - centre) * scale + 0.0
        lines.append(f"wp_sketch{i}=cq.Workplane(cq.Plane({_vector(origin)},{_vector(x_dir)},{_vector(normal)}))")
        names = []
        for loop in (b.outline, *b.holes):
            lines.append(f"loop{n_loop}=wp_sketch{i}.{_loop(loop, scale, np.zeros(2), _to_screen(b.axis))}")
            names.append(f"loop{n_loop}")
            n_loop += 1
        extrude = f"{b.depth * scale / 2:.6g},both=True" if b.both else f"{b.depth * scale:.6g}"
        lines.append(f"solid{i}=wp_sketch{i}" + "".join(f".add({n})" for n in names) + f".extrude({extrude})")
        lines.append("solid=solid0" if i == 0 else f"solid=solid.{'cut' if b.cut else 'union'}(solid{i})")
    return "\n".join(lines) + "\n"


PIXEL_FRAME: Frame = (1.0 / SIZE_PX, SIZE_PX / 2, -SIZE_PX / 2)  # draws a pixel-unit point p at (p . RIGHT, -p . UP)


def _placed_fit(g: Geometry, target: RenderTarget, objective: dict[str, float]) -> float:
    """``objective`` of a pixel-unit mesh drawn where the image shows it (``PIXEL_FRAME``), not fit
    to the window: a body that explains part of the picture is compared where it is."""
    return _render_fit(g, target, objective, PIXEL_FRAME)


def _framing_error(g: Geometry, drawn: np.ndarray | None = None) -> float:
    """Pixels by which ``cad.render``'s window fit (the projected bounding box fit to the style's
    window, centred: how the picture was drawn) would draw the pixel-unit mesh ``g`` away from
    where it lies (``PIXEL_FRAME``), at the farthest corner of its bounding box: none for a part
    read whole and in place. A body moved along the view direction keeps its outline but moves
    the box's hidden corners, so this tells places apart that the render does not. ``drawn``: the
    picture's silhouette box (x0, y0, x1, y1) on the screen, joined to the projected box, so that
    bodies not (yet) read, which lie inside it, do not count against the ones that are."""
    corners = box_corners(np.asarray(g.vertices))
    screen = np.stack([corners @ RIGHT, -(corners @ UP)], axis=1)
    if drawn is not None:
        screen = np.concatenate([screen, np.reshape(drawn, (2, 2))])
    scale, centre = window_fit(screen.min(0), screen.max(0), READ_STYLE)
    return float(np.abs((screen - centre) * scale + SIZE_PX / 2 - screen).max())


def _drawn_box(target: RenderTarget) -> np.ndarray:
    """The box (x0, y0, x1, y1) of the picture's silhouette, in ``SIZE_PX`` pixels."""
    mask = np.asarray(target.silhouette)
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.array([SIZE_PX / 2] * 4, dtype=float)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float) * (SIZE_PX / mask.shape[0])


Placing = tuple[float, float]  # a place's (_placed_fit, _framing_error)
NOWHERE: Placing = (-np.inf, np.inf)  # a place where the bodies do not meet


def _framed_fit(g: Geometry, target: RenderTarget, objective: dict[str, float], drawn: np.ndarray) -> Placing:
    """(``_placed_fit``, ``_framing_error`` with the picture's silhouette box ``drawn``) of ``g``."""
    return _placed_fit(g, target, objective), _framing_error(g, drawn)


def _framed_pick(options: list[tuple[object, Placing]]) -> object:
    """The option whose place fits best (the first on ties), or, where one of the places that fit
    within ``FRAMING_SLACK`` of the best frames the picture within ``FRAMING_TRUST`` pixels, the
    one of those whose fit less ``FRAMING_WEIGHT`` per pixel of framing error is best. Bodies not
    read (a rod, a boss) change the framing too: it parts only places that the render hardly does,
    and only where the bodies read explain it."""
    top = max(fit for _, (fit, _) in options)
    close = [o for o in options if o[1][0] >= top - FRAMING_SLACK]
    if min(error for _, (_, error) in close) > FRAMING_TRUST:
        return max(options, key=lambda o: o[1][0])[0]
    return max(close, key=lambda o: o[1][0] - FRAMING_WEIGHT * o[1][1])[0]


def _normalisation(bodies: list[Body]) -> tuple[float, np.ndarray]:
    """(scale, centre) that ``program`` applies: pixel units to GenCAD's frame."""
    corners = np.concatenate([b.corners() for b in bodies if not b.cut])
    lo, hi = corners.min(0), corners.max(0)
    return SIZE / (hi - lo).max(), (lo + hi) / 2


def program_frame(bodies: list[Body]) -> Frame:
    """The ``cad.render`` frame that draws ``program(bodies)`` where the image it was read from
    shows them (a pixel-unit point p lies at screen (p . RIGHT, -p . UP) there), whatever else the
    image holds; the default frame fits the bodies alone to the window."""
    scale, centre = _normalisation(bodies)
    return (1.0 / (scale * SIZE_PX), scale * (SIZE_PX / 2 - centre @ RIGHT), -scale * (SIZE_PX / 2 + centre @ UP))


def _execute(body: Body | list[Body], pool: SandboxPool) -> Geometry | None:
    return _execute_all([body if isinstance(body, list) else [body]], pool)[0]


# A fit needs the mesh, not BRepCheck's verdict; the programs it writes share a resident sandboxed child.
MESHED = ExecOptions(want_geometry=True, check_brep=False, reuse=True)


def _execute_all(parts: list[list[Body]], pool: SandboxPool) -> list[Geometry | None]:
    """Each list of bodies executed in pixel units (the pool's workers at once), None where it fails."""
    results = pool.imap([program(bodies, normalise=False) for bodies in parts], MESHED)
    return [r.geometry if r.executable and r.geometry is not None else None for r in results]


def _joined(a: Geometry, b: Geometry) -> Geometry:
    """Both meshes as one, for rendering (the union's intersection edges are not drawn)."""
    faces = len(a.face_planar)
    return Geometry(np.concatenate([a.vertices, b.vertices]), np.concatenate([a.triangles, np.asarray(b.triangles) + len(a.vertices)]),
                    np.concatenate([a.tri_face, np.asarray(b.tri_face) + faces]), np.concatenate([a.face_planar, b.face_planar]),
                    np.concatenate([a.edges, b.edges]), np.concatenate([a.edge_seam, b.edge_seam]),
                    np.concatenate([a.face_solid, np.asarray(b.face_solid) + 1]), a.mass)


def _meet(a: Geometry, b: Geometry) -> bool:
    """Whether the bounding boxes of two bodies meet (bodies apart would make two solids, not one part)."""
    lo_a, hi_a, lo_b, hi_b = (f(np.asarray(g.vertices), 0) for g in (a, b) for f in (np.min, np.max))
    tolerance = 1e-6 * np.ptp(np.asarray(a.vertices), 0).max()
    return bool(np.all(lo_b <= hi_a + tolerance) and np.all(lo_a <= hi_b + tolerance))


def _meeting(a: Geometry, b: Geometry, view: np.ndarray) -> tuple[float, float] | None:
    """The range of ``t`` for which ``b`` moved by ``t * view`` meets ``a`` (``_meet``), None when
    none does."""
    lo_a, hi_a, lo_b, hi_b = (f(np.asarray(g.vertices), 0) for g in (a, b) for f in (np.min, np.max))
    moving = view != 0
    if np.any(~moving & ((lo_b > hi_a) | (lo_a > hi_b))):
        return None
    ends = np.sort(np.stack([(lo_a - hi_b)[moving] / view[moving], (hi_a - lo_b)[moving] / view[moving]]), axis=0)
    low, high = ends[0].max(), ends[1].min()
    return (float(low), float(high)) if low <= high else None


def _best(values: np.ndarray, score) -> float:
    return float(max(values, key=score))


def _climbed(values: np.ndarray, score, bounds: np.ndarray) -> float:
    """The best of ``values`` (evenly spaced in log) by ``score``, or, where that is an end of the
    grid, the last of the further steps of the same ratio out that way (within ``bounds``) that each
    scores better than the one before."""
    at = functools.cache(score)
    best = _best(values, at)
    if best not in (values[0], values[-1]) or len(values) < 2:
        return best
    ratio = values[0] / values[1] if best == values[0] else values[-1] / values[-2]
    while bounds[0] <= best * ratio <= bounds[1] and at(best * ratio) > at(best):
        best = best * ratio
    return float(best)


def _best_coarse_to_fine(values: np.ndarray, score) -> float:
    """The best of ``values`` by ``score`` among every other one (the ends included) and the two
    beside the best of those: the best of all when it lies next to the coarse best (a smooth
    score), at about two thirds of the scores."""
    at = functools.cache(lambda i: score(values[i]))  # no value scored twice
    coarse = list(range(0, len(values), 2))
    best = max(coarse, key=at)
    beside = [i for i in (best - 1, best + 1) if 0 <= i < len(values)]
    return float(values[max(sorted({*coarse, *beside}), key=at)])  # in grid order: ties go to the first, as _best


def _span(depth: float, axis: int) -> float:
    """How far (in log) a fit tries either side of ``depth`` pixels along ``axis``: ``DEPTH_SPAN``,
    or two pixels if that is more (a thin plate's side is a few pixels tall)."""
    return max(DEPTH_SPAN, np.log1p(2.0 / max(depth * np.hypot(*screen_vector(plane_basis(axis)[2])), 1.0)))


def _fit_depth(body: Body, g: Geometry, target: RenderTarget, objective: dict[str, float],
               other: Geometry | None = None) -> Body:
    """``body`` with the depth whose render (with ``other``, when given) fits best on a grid of
    ``DEPTH_STEPS`` around its own (at least two pixels either way, a thin plate's side is a few
    pixels tall), searched coarse to fine (``_best_coarse_to_fine``), stretching its executed mesh
    ``g`` along its axis about its cap."""
    span = _span(body.depth, body.axis)

    def score(factor: float) -> float:
        moved = _deepened_mesh(g, body, factor)
        if other is None:
            return _placed_fit(moved, target, objective)
        return _placed_fit(_joined(other, moved), target, objective) if _meet(other, moved) else -np.inf

    return dataclasses.replace(body, depth=body.depth * _best_coarse_to_fine(np.exp(np.linspace(-span, span, DEPTH_STEPS)), score))


def _swept(region: np.ndarray, axis: int, filled: np.ndarray, base: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(depth in pixels, swept mask): ``region`` (holes filled) swept along ``axis`` at full size
    to cover ``filled`` (what ``base`` covers already does not count)."""
    _, steps, swept = sweep(_holes_filled(region), filled, screen_vector(-plane_basis(axis)[2]), base)
    return _pixels_along(steps, axis), swept


def _hull(region: np.ndarray) -> np.ndarray:
    """The convex hull of a region, as a mask."""
    hull = np.zeros(region.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.argwhere(region)[:, ::-1].astype(np.int32)), 1)
    return hull.astype(bool)


def _body(cap: Cap, filled: np.ndarray, cover: np.ndarray | None = None,
          base: np.ndarray | None = None, background: np.ndarray | None = None) -> tuple[Body, np.ndarray]:
    """The body of ``cap`` and its swept mask: its profile (the parts of ``cover`` inside the
    region's convex hull added, where another body hides it; the holes that would show the
    ``background`` where the image shows none filled: ``_closed_holes``) and its sweep length at
    full size (what ``base`` covers already does not count)."""
    region = cap.region
    if cover is not None:
        region = region | (cover & _hull(region))
    depth, swept = _swept(region, cap.axis, filled, base)
    if background is not None:
        region = region | _closed_holes(region, cap.axis, depth, background)
    hidden = None if cover is None else dilated(cover & ~cap.region, SQUARE5)
    outline, holes = profile(dataclasses.replace(cap, region=region), hidden, cap.region)
    return Body(cap.axis, outline, tuple(holes), depth), swept


def _fit_prism(cap: Cap, filled: np.ndarray, background: np.ndarray, pool: SandboxPool, target: RenderTarget,
               objective: dict[str, float], body: Body | None = None) -> Body | None:
    """The prism of ``cap`` (``_body``, with the ``background`` seen inside the silhouette; or
    ``body``, already made so), executed and its depth fit by ``objective``; None where it does
    not execute."""
    body = body if body is not None else _body(cap, filled, background=background)[0]
    g = _execute(body, pool)
    return None if g is None else _fit_depth(body, g, target, objective)


def _moved(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved ``dx`` pixels right and ``dy`` down; what leaves its frame is dropped."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dx) < w and abs(dy) < h:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _closed_holes(region: np.ndarray, axis: int, depth: float, background: np.ndarray) -> np.ndarray:
    """The holes of ``region`` (a cap of a prism ``depth`` pixels long along ``axis``) that go
    nowhere: cut through the prism, a hole shows the background where it overlaps its own far
    opening (the hole moved along the view of the axis by the depth); a hole whose overlap covers
    ``MIN_THROUGH`` pixels, of which the image shows the ``background`` (inside the silhouette) in
    less than ``THROUGH_SEEN``, is something else seen there (bosses standing in it, a pocket)."""
    holes, count = label(_holes_filled(region) & ~region)
    dx, dy = np.rint(depth * screen_vector(-plane_basis(axis)[2])).astype(int)
    closed = np.zeros_like(region)
    for i in range(1, count + 1):
        hole = holes == i
        through = hole & _moved(hole, dx, dy)
        if through.sum() >= MIN_THROUGH and (through & background).sum() < THROUGH_SEEN * through.sum():
            closed |= hole
    return closed


def _union(caps: list[Cap], pixels: np.ndarray, regions: list[np.ndarray], flat: np.ndarray, filled: np.ndarray, background: np.ndarray,
           pool: SandboxPool, target: RenderTarget, objective: dict[str, float]) -> list[list[Body]]:
    """Unions of prisms whose caps' sweeps together cover the silhouette best: two (the first
    among the ``UNION_FIRSTS`` best ``caps``, the second the cap that adds most to it, or one
    about as good whose outline is more regular, ``_likeliest``), when that beats the best single
    cap by ``UNION_GAIN``, or by ``UNION_GAIN_REGULAR`` where both caps' outlines are regular (a
    bar standing out of a block adds little to the silhouette); and those two with a third cap
    that beats them by as much (``_third``). Each added body's place along the view direction,
    which the outline does not show, and then its depth are fit by ``objective`` on the meshes
    rendered together (``_placed``); ``background``: the background seen inside the silhouette
    (``_closed_holes``); the openings of pockets whose floors are seen are filled (``_opened``).
    ``regions`` and ``flat``: ``planar_regions`` and ``flat_pixels`` of ``pixels``."""
    needed, needed_regular = (max(caps[0].fit + gain, MIN_FIT) for gain in (UNION_GAIN, UNION_GAIN_REGULAR))
    if needed_regular > 1.0:  # a sweep's IoU is at most 1: no second cap can add enough
        return []

    found = [(first, find_caps(pixels, regions, first.swept, (first.index,))) for first in caps[:UNION_FIRSTS]]
    pairs = [(first, _likeliest(seconds)) for first, seconds in found if seconds and seconds[0].fit >= needed_regular]
    first, second = max([ab for ab in pairs if _adds_enough(ab[1], needed, needed_regular, ab[:1])], key=lambda ab: ab[1].fit,
                        default=(None, None))  # outlines read only where one may pass
    if second is None:
        return []
    first, second = (_opened(c, _inner_faces(c, _cap_holes(c, regions, flat), +1)) for c in (first, second))
    a = _body(first, filled, _swept(second.region, second.axis, filled)[1], background=background)[0]  # completed where the second hides it
    covered = _swept(first.region, first.axis, filled)[1]  # the first cap's own sweep: the second's sweep stops at it
    b = _body(second, filled, covered, covered, background)[0]
    ga, gb = _execute_all([[a], [b]], pool)
    if ga is None or gb is None:
        return []
    a = _fit_depth(a, ga, target, objective)
    ga = _execute(a, pool)
    b = None if ga is None else _placed(b, gb, ga, target, objective)
    if b is None:
        return []
    third = _third(first, second, pixels, regions, filled, background, covered, pool, target, objective, [a, b])
    return [[a, b]] + ([[a, b, third]] if third is not None else [])


def _adds_enough(cap: Cap, needed: float, needed_regular: float, others: tuple[Cap, ...]) -> bool:
    """Whether ``cap``'s sweep with the ``others``' covers the silhouette by ``needed``, or by
    ``needed_regular`` where its outline and theirs are all regular (``UNION_REGULAR``)."""
    return cap.fit >= needed or (cap.fit >= needed_regular
                                 and min(_regularity(profile(c)[0]) for c in (*others, cap)) >= UNION_REGULAR)


def _third(first: Cap, second: Cap, pixels: np.ndarray, regions: list[np.ndarray], filled: np.ndarray,
           background: np.ndarray, covered: np.ndarray, pool: SandboxPool, target: RenderTarget, objective: dict[str, float],
           bodies: list[Body]) -> Body | None:
    """A third prism joined to the union ``bodies`` of ``first`` and ``second`` (``covered``: the
    first's sweep at full size): the cap that adds most to the two caps' sweeps (``_likeliest``),
    when it raises their IoU with the silhouette by ``UNION_GAIN`` (``UNION_GAIN_REGULAR`` where
    the three outlines are regular) and both added outlines are regular by ``THIRD_REGULAR``;
    swept to where the two do not cover and placed as the second."""
    third = _likeliest(find_caps(pixels, regions, second.swept, (first.index, second.index)))
    if third is None or not _adds_enough(third, second.fit + UNION_GAIN, second.fit + UNION_GAIN_REGULAR, (first, second)):
        return None
    if min(_regularity(profile(c)[0]) for c in (second, third)) < THIRD_REGULAR:
        return None
    covered = _swept(second.region, second.axis, filled, covered)[1]  # both caps' sweeps
    c = _body(third, filled, covered, covered, background)[0]
    gab, gc = _execute_all([bodies, [c]], pool)
    return None if gab is None or gc is None else _placed(c, gc, gab, target, objective)


def _placed(body: Body, g: Geometry, other: Geometry, target: RenderTarget, objective: dict[str, float]) -> Body | None:
    """``body`` (executed: ``g``) moved along the view direction to where, rendered with ``other``,
    it fits ``objective`` best, places that fit about as well told apart by how they frame the
    picture (``_framed_pick``), on ``UNION_STEPS`` places (then as many about the best) over where
    the two meet, and on ``REACH_STEPS`` over half as far again each way, where it reaches across
    to ``other`` (``_reaching``: a place taken only where it frames the picture within
    ``FRAMING_TRUST`` pixels); with its depth then fit by ``objective``; or, where that is picked
    over it (``_framed_pick``), standing on a face of ``other`` (``_snapped``: the outline does not
    show how far a body goes on behind what hides it, and GenCAD's bodies start on a face of the
    part); None when no place meets ``other``."""
    view = np.asarray(VIEW_DIR)
    span = _meeting(other, g, view)
    if span is None:
        return None
    drawn = _drawn_box(target)

    @functools.cache
    def at(t: float) -> tuple[Body, Geometry] | None:
        moved_body, moved = dataclasses.replace(body, shift=tuple(np.asarray(body.shift) + t * view)), _stretched(g, 1.0, t * view)
        return (moved_body, moved) if _meet(other, moved) else _reaching(moved_body, moved, other)

    @functools.cache
    def score(t: float) -> Placing:
        placed = at(t)
        if placed is None:
            return NOWHERE
        joined = _joined(other, placed[1])
        error = _framing_error(joined, drawn)
        if placed[0].outline is not body.outline and error > FRAMING_TRUST:
            return NOWHERE  # reached across: only the framing shows how far a hidden foot runs
        return _placed_fit(joined, target, objective), error

    t = _along_view(span, UNION_STEPS, score)
    if score(t) == NOWHERE:
        return None
    if not isinstance(body.outline, tuple):  # beyond where the two meet, half as far again each way: places where it reaches across
        width = (span[1] - span[0]) / 2
        wings = [_along_view(wing, REACH_STEPS, score) for wing in ((span[0] - width, span[0]), (span[1], span[1] + width))]
        t = _framed_pick([(x, score(x)) for x in (t, *wings)])
    moved, g_moved = at(t)
    free = _fit_depth(moved, g_moved, target, objective, other)
    snapped = _snapped(body, g, other, target, objective, span, drawn)
    if snapped is None:
        return free
    return _framed_pick([snapped, (free, _framed_fit(_joined(other, _reshaped(g_moved, moved, free)), target, objective, drawn))])


def _reaching(body: Body, g: Geometry, other: Geometry) -> tuple[Body, Geometry] | None:
    """``body`` (executed: ``g``) with its outline's end moved across the gap that parts it from
    ``other``'s bounding box, where one axis of its sketch plane alone parts them: the outline's
    points near that end (``REACH_END``) move onto ``other``'s box there, and so do the mesh's. A
    bar whose foot is hidden runs on behind what hides it to the part it stands on; None where a
    circle or a single point makes the end."""
    if isinstance(body.outline, tuple):
        return None
    v, w = np.asarray(g.vertices), np.asarray(other.vertices)
    lo, hi, lo_o, hi_o = v.min(0), v.max(0), w.min(0), w.max(0)
    apart = np.maximum(lo - hi_o, lo_o - hi) > REACH_TOLERANCE
    if apart.sum() != 1 or apart[body.axis]:
        return None
    k = int(np.argmax(apart))
    end, to = (lo[k], hi_o[k]) if lo[k] > hi_o[k] else (hi[k], lo_o[k])
    x_dir, y_dir, _ = plane_basis(body.axis)
    j, d = (0, x_dir) if abs(x_dir[k]) > 0.5 else (1, y_dir)
    shift = np.asarray(body.shift)
    near = min(REACH_END, (hi[k] - lo[k]) / 4)
    at_end = np.abs(shift[k] + body.outline[:, j] * d[k] - end) < near
    if at_end.sum() < 2:
        return None
    outline = body.outline.copy()
    outline[at_end, j] = (to - shift[k]) / d[k]

    def moved(points: np.ndarray) -> np.ndarray:
        p = np.array(points, dtype=float)
        p[..., k] = np.where(np.abs(p[..., k] - end) < near, to, p[..., k])
        return p

    return dataclasses.replace(body, outline=outline), dataclasses.replace(g, vertices=moved(g.vertices), edges=moved(g.edges))


def _along_view(span: tuple[float, float], steps: int, score: Callable[[float], Placing]) -> float:
    """The best place ``t`` in ``span`` by ``score`` (``_framed_pick``): of ``steps`` evenly
    spaced, then of as many within a step of the best."""
    def best(values: np.ndarray) -> float:
        return float(_framed_pick([(float(t), score(float(t))) for t in values]))

    t = best(np.linspace(*span, steps))
    if score(t) == NOWHERE:
        return t
    step = (span[1] - span[0]) / (steps - 1)
    return best(np.clip(t + np.linspace(-step, step, steps), *span))


def _reshaped(g: Geometry, body: Body, to: Body) -> Geometry:
    """``body``'s executed mesh ``g`` moved and stretched along its axis about its cap into ``to``
    (the same outline, another shift and depth)."""
    return _deepened_mesh(g, body, to.depth / body.depth, np.asarray(to.shift) - np.asarray(body.shift))


def _deepened_mesh(g: Geometry, body: Body, factor: float, shift: np.ndarray | float = 0.0) -> Geometry:
    """``body``'s executed mesh ``g`` stretched ``factor`` times along its axis about its cap (the
    cap's world coordinate along the axis stays), then moved by ``shift``."""
    normal = plane_basis(body.axis)[2]
    cap = np.abs(normal) @ np.asarray(body.shift)
    return _stretched(g, np.where(normal != 0, factor, 1.0), np.abs(normal) * cap * (1 - factor) + shift)


def _face_levels(g: Geometry, axis: int) -> np.ndarray:
    """The world coordinates along ``axis`` of ``g``'s planar faces square to it."""
    planar = np.asarray(g.face_planar, bool)[np.asarray(g.tri_face)]
    v = np.asarray(g.vertices)[np.asarray(g.triangles)[planar]]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    square = np.abs(n[:, axis]) > 0.999 * np.linalg.norm(n, axis=1) + 1e-12
    return np.unique(np.round(v[square, 0, axis], 3))


def _snapped(body: Body, g: Geometry, other: Geometry, target: RenderTarget, objective: dict[str, float],
             span: tuple[float, float], drawn: np.ndarray) -> tuple[Body, Placing] | None:
    """``body`` standing on a face of ``other``: its far end on one of ``other``'s faces square to
    its axis (``_face_levels``) and its cap moved along the view direction (within ``span``) to
    where, rendered with ``other``, it fits ``objective`` best (``_framed_pick``, with the picture's
    silhouette box ``drawn``); (body, its placing), None when no such place leaves it at least a
    pixel deep."""
    found = [f for f in (_standing_on(level, body, g, other, target, objective, span, drawn) for level in _face_levels(other, body.axis))
             if f is not None]
    return _framed_pick([(f, f[1]) for f in found]) if found else None


def _standing_on(level: float, body: Body, g: Geometry, other: Geometry, target: RenderTarget,
                 objective: dict[str, float], span: tuple[float, float], drawn: np.ndarray) -> tuple[Body, Placing] | None:
    """``_snapped``'s best place for ``body`` with its far end at world coordinate ``level`` along
    its axis: (body, score), None when none leaves it a pixel deep and meeting ``other``."""
    view = np.asarray(VIEW_DIR)
    k = body.axis
    sign = plane_basis(k)[2][k]

    def shaped(t: float) -> Body | None:
        shift = np.asarray(body.shift) + t * view
        depth = (shift[k] - level) * sign
        return dataclasses.replace(body, shift=tuple(shift), depth=float(depth)) if depth >= 1.0 else None

    @functools.cache
    def score(t: float) -> Placing:
        b = shaped(t)
        if b is None:
            return NOWHERE
        moved = _reshaped(g, body, b)
        return _framed_fit(_joined(other, moved), target, objective, drawn) if _meet(other, moved) else NOWHERE

    t = _along_view(span, SNAP_STEPS, score)
    return (shaped(t), score(t)) if score(t) != NOWHERE else None


def _regularity(loop: Loop) -> float:
    """The share of an outline's length along its sketch plane's two axes (within
    ``AXIS_DEGREES``); a circle is regular. GenCAD's sketches are mostly so: a face read in
    another plane than its own makes a slanted copy of them."""
    if isinstance(loop, tuple):
        return 1.0
    edges = np.roll(loop, -1, 0) - loop
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    angle = np.degrees(np.arctan2(np.abs(edges[:, 1]), np.abs(edges[:, 0])))
    along = (angle <= AXIS_DEGREES) | (angle >= 90 - AXIS_DEGREES)
    return float(lengths[along].sum() / max(lengths.sum(), 1e-9))


def _likeliest(caps: list[Cap]) -> Cap | None:
    """The best of ``caps`` (best first), or, among those within ``AXIS_TIE`` of its fit, one
    whose outline is more regular (``_regularity``) by ``AXIS_REGULAR``: one face region swept
    along any of two or three axes covers the silhouette about as well."""
    if not caps:
        return None
    tied = [c for c in caps if c.fit >= caps[0].fit - AXIS_TIE]
    if len(tied) == 1:
        return caps[0]
    regular = [_regularity(profile(c)[0]) for c in tied]
    best = int(np.argmax(regular))
    return tied[best] if regular[best] >= regular[0] + AXIS_REGULAR else caps[0]


class Inner(NamedTuple):
    """A face seen through a hole of the cap: a boss's top or a pocket's floor."""

    hole: np.ndarray  # the hole (or dent) of the cap's flat pixels
    face: np.ndarray  # the planar region inside it
    steps: int  # screen steps the face was swept to cover the hole


def _cap_holes(cap: Cap, regions: list[np.ndarray], flat: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The holes of ``cap`` that may hold a boss's top or a pocket's floor, each with the planar
    ``regions`` inside it: the holes of the cap region's ``flat`` pixels, or their dents (the parts
    of their convex hull outside them), of at least ``MIN_INNER`` pixels. (Only the flat pixels
    count: a cylinder's shaded wall joins the cap's region, no line drawn where its outline meets
    the cap.)"""
    cap_flat = cap.region & flat
    holes, count = label(_hull(cap_flat) & ~cap_flat)
    numbered = np.zeros(flat.shape, np.int32)  # the regions are disjoint: each pixel's region number (0: none)
    for i, r in enumerate(regions, 1):
        numbered[r] = i
    sizes = np.bincount(numbered.ravel(), minlength=len(regions) + 1)
    found = []
    for i in np.flatnonzero(np.bincount(holes.ravel(), minlength=count + 1)[1:] >= MIN_INNER) + 1:
        hole = holes == i
        inside = np.bincount(numbered[hole], minlength=len(regions) + 1)  # each region's pixels in the hole
        found.append((hole, [r for j, r in enumerate(regions, 1) if inside[j] >= 0.9 * sizes[j]]))
    return found


def _inner_faces(cap: Cap, holes: list[tuple[np.ndarray, list[np.ndarray]]], sign: int) -> list[Inner]:
    """The boss tops (``sign`` -1) or the pocket floors (+1) seen through the ``holes`` of ``cap``
    (``_cap_holes``), largest first (at most ``MAX_INNER``). A boss hides a patch of the cap, so
    the cap has a hole there, or a dent where the boss stands at its edge; the boss's top is one of
    the planar regions in that hole which, swept towards the cap (down its normal), covers the
    hole. A pocket's opening is a hole too, and its floor, swept up the normal to the cap, covers
    it (the floor's holes filled, or its convex hull: a hole through the floor that the pocket's
    wall hides in part is a dent in it), and better than swept down (a thin boss's top covers its
    hole either way). Either sweep must be at least ``MIN_WALL`` pixels: a face that covers its
    hole swept a pixel or none is flush with the cap, or a shallow pocket's floor seen as a boss.
    Each hole's largest such face is taken; where no one top covers a hole, bosses standing side
    by side in it (their feet one patch), the tops that cover it together (``_side_by_side``; a
    face that fits the hole better swept up is a pocket's floor, not among them; each is swept to
    fit the hole less the others' tops, which are seen, so no boss's wall stands in front of them); where no floor
    covers it, a deep pocket's floor that its walls hide in part (``_hidden_floor``)."""
    direction = screen_vector(sign * plane_basis(cap.axis)[2])
    rim = _rim(cap) if sign > 0 else None
    found = []
    for hole, regions in holes:
        if rim is not None and not (hole & ~rim).any():  # a pocket needs an opening to cut
            continue
        swept = [(Inner(hole, region, steps), fit, shape) for region in regions
                 for shape in ([_holes_filled(region)] + ([_hull(region)] if sign > 0 else []))
                 for fit, steps, _ in [sweep(shape, hole, direction)]
                 if steps >= MIN_WALL and (sign < 0 or (fit >= MIN_FIT and fit > sweep(shape, hole, -direction)[0]))]
        inside = [t for t, fit, _ in swept if fit >= MIN_FIT]
        if inside:
            found.append(max(inside, key=lambda t: int(t.face.sum())))
        elif sign > 0:
            found += filter(None, [_hidden_floor(hole, regions, direction)])
        else:
            shapes = {id(t.face): shape for t, fit, shape in swept  # a face that fits better swept up is a pocket's floor
                      if fit > sweep(shape, hole, -direction)[0]}

            tops = np.logical_or.reduce([t.face for t, _, _ in swept if id(t.face) in shapes], initial=False)

            def down(face: np.ndarray, covered: np.ndarray) -> tuple[int, np.ndarray] | None:
                others = tops & ~face  # the other tops are seen: no boss's wall stands in front of them
                _, steps, mask = sweep(shapes[id(face)], hole & ~others, direction, covered)
                return (steps, mask) if steps >= MIN_WALL else None

            found += _side_by_side(hole, [t.face for t, _, _ in swept if id(t.face) in shapes], down)
    return sorted(found, key=lambda t: -int(t.face.sum()))[:MAX_INNER]


def _hidden_floor(hole: np.ndarray, regions: list[np.ndarray], up: np.ndarray) -> Inner | None:
    """A deep pocket's floor, most of it hidden by the walls in front of it (too little of it seen
    to cover the opening swept up): the floor is the opening moved down the cap's normal (``up``
    reversed, a screen vector) by the pocket's depth, and the walls hide all of it outside the
    opening, so what is seen of it is the opening and its moved copy overlapping. The depth is the
    move whose overlap (at most half the opening) best matches one of the planar ``regions`` inside
    the opening (IoU at least ``HIDDEN_FLOOR``); None where none does (a floor hidden whole: a
    deep pocket and a hole through look alike)."""
    step = -up / np.abs(up).max()
    box = _box(hole)
    if box is None or not regions:
        return None
    y0, y1, x0, x1 = box  # the overlap lies in the opening's box: the search runs there
    opening = hole[y0:y1, x0:x1]
    h, w = opening.shape
    parts = [(region, region[y0:y1, x0:x1], int(region.sum())) for region in regions]
    best, half = (HIDDEN_FLOOR, None, 0), opening.sum() / 2
    for t in range(MIN_WALL, max(h, w)):
        dx, dy = int(round(t * step[0])), int(round(t * step[1]))
        if abs(dx) >= w or abs(dy) >= h:  # moved past the opening: nothing of it overlaps
            break
        seen = _moved(opening, dx, dy) & opening
        size = int(seen.sum())
        if not size:
            break
        if size > half:  # a floor seen more than half is found by its sweep
            continue
        for region, part, region_size in parts:
            overlap = int((seen & part).sum())
            iou = overlap / (size + region_size - overlap)
            if iou > best[0]:
                best = (iou, region, t)
    return None if best[1] is None else Inner(hole, best[1], best[2])


def _side_by_side(hole: np.ndarray, faces: list[np.ndarray],
                  swept: Callable[[np.ndarray, np.ndarray], tuple[int, np.ndarray] | None]) -> list[Inner]:
    """Up to ``TOPS_PER_HOLE`` of ``faces`` whose sweeps together match ``hole`` to ``MIN_FIT``
    (IoU), taken greedily by the most each raises it: each face swept (``swept(face, covered)``:
    its steps and the mask with ``covered``, or None where it may not stand) to fit what the faces
    taken before it leave, and adding ``MIN_TOP`` pixels of the hole at least; none when they cannot."""
    def iou(mask: np.ndarray) -> float:
        return float((mask & hole).sum() / max((mask | hole).sum(), 1))

    taken, covered, faces = [], np.zeros_like(hole), list(faces)
    while len(taken) < TOPS_PER_HOLE and iou(covered) < MIN_FIT:
        options = [(iou(m[1]), i, m) for i, face in enumerate(faces) for m in [swept(face, covered)]
                   if m is not None and int((m[1] & hole & ~covered).sum()) >= MIN_TOP]
        best = max(options, key=lambda o: o[0], default=None)
        if best is None or best[0] <= iou(covered):
            break
        _, i, (steps, mask) = best
        taken.append(Inner(hole, faces.pop(i), steps))
        covered = mask
    return taken if len(taken) > 1 and iou(covered) >= MIN_FIT else []


def _standing_tops(cap: Cap, holes: list[tuple[np.ndarray, list[np.ndarray]]], regions: list[np.ndarray],
                   filled: np.ndarray, tops: list[Inner]) -> list[Inner]:
    """The tops of tall bosses (a rod, a post) standing in the ``holes`` of ``cap`` that hold no
    top of ``tops``: such a boss's top lies outside the cap, above its foot. The hole's column is
    the hole with what stands out of the silhouette beyond the cap's sweep (the cap with its holes
    filled) and touches it. A planar region of at least ``MIN_TOP`` pixels, off the cap and in
    the column, is a top when, swept down the cap's normal as far as it best covers the column
    (at least ``MIN_WALL`` steps), it covers ``MIN_FIT`` of the hole, stays in the silhouette
    (``STANDING_INSIDE``) and passes over little of the cap's face (``STANDING_ON_CAP``); the
    largest such region, one per hole, or where none covers the hole alone, the tops that cover it
    together (``_side_by_side``)."""
    taken = [t.hole for t in tops]
    open_holes = [hole for hole, _ in holes if not any((hole & t).any() for t in taken)]
    if not open_holes:
        return []
    filled_cap = cap.region | np.logical_or.reduce([hole for hole, _ in holes])  # the cap where the bosses stand
    beyond = filled & ~_swept(filled_cap, cap.axis, filled)[1]
    parts, _ = label(beyond | np.logical_or.reduce(open_holes))
    direction = screen_vector(-plane_basis(cap.axis)[2])
    found = []
    for hole in open_holes:
        column = np.isin(parts, np.unique(parts[hole])) & (parts > 0)  # the hole and what stands out beyond the cap from it
        standing = {}  # each standing top's steps down to its foot and the part of the hole it covers
        for region in regions:
            size = int(region.sum())
            if size < MIN_TOP or (region & cap.region).any() or (region & column).sum() < 0.9 * size:
                continue
            _, steps, swept = sweep(_holes_filled(region), column, direction)
            area = int(swept.sum())
            if steps >= MIN_WALL and (swept & filled).sum() >= STANDING_INSIDE * area and (swept & cap.region).sum() <= STANDING_ON_CAP * area:
                standing[id(region)] = region, steps, swept & hole
        alone = [Inner(hole, region, steps) for region, steps, cover in standing.values() if cover.sum() >= MIN_FIT * hole.sum()]
        if alone:
            found.append(max(alone, key=lambda t: int(t.face.sum())))
        else:
            found += _side_by_side(hole, [region for region, _, _ in standing.values()],
                                   lambda region, covered: (standing[id(region)][1], covered | standing[id(region)][2]))
    return found


def _dented_caps(caps: list[Cap], pixels: np.ndarray, regions: list[np.ndarray], drawn: np.ndarray,
                 filled: np.ndarray) -> list[Cap]:
    """Caps whose sweep covers the silhouette only with what lies in their dents, where bosses
    may stand: faces a boss splits in two (``_split_faces``) and single regions whose own sweep
    is below ``MIN_BOSSED_FIT`` (a boss at a face's edge bites into it), each swept with its
    convex hull (inside the silhouette) and kept where that sweep fits to ``MIN_BOSSED_FIT``,
    best first. ``drawn``: the silhouette; ``filled``: it with its holes filled."""
    faces = [r for _, r in _cap_regions(regions, filled)]
    split = _split_faces(faces, drawn)
    tried = {(c.index, c.axis) for c in caps if c.fit >= MIN_BOSSED_FIT}  # fit without their dents
    found = [dataclasses.replace(c, region=split[c.index - 1], index=0) for c in find_caps(pixels, [_hull(f) & filled for f in split])]
    found += [dataclasses.replace(c, region=faces[c.index - 1]) for c in find_caps(pixels, [_hull(f) & filled for f in faces])
              if (c.index, c.axis) not in tried]
    return sorted((c for c in found if c.fit >= MIN_BOSSED_FIT), key=lambda c: -c.fit)


def _opened(cap: Cap, floors: list[Inner]) -> Cap:
    """``cap`` with the holes where the pockets of ``floors`` open filled: a pocket's opening is no
    hole through the prism (a hole too small for its far end to show beside its near one looks
    the same, but for the floor seen in it)."""
    return dataclasses.replace(cap, region=cap.region | np.logical_or.reduce([f.hole for f in floors])) if floors else cap


def _tops(cap: Cap, holes: list[tuple[np.ndarray, list[np.ndarray]]], regions: list[np.ndarray], filled: np.ndarray) -> list[Inner]:
    """The tops of the bosses standing in the ``holes`` of ``cap``, low (``_inner_faces``) and
    tall (``_standing_tops``), largest first (at most ``MAX_INNER``)."""
    tops = _inner_faces(cap, holes, -1)
    return sorted(tops + _standing_tops(cap, holes, regions, filled, tops), key=lambda t: -int(t.face.sum()))[:MAX_INNER]


def _rim(cap: Cap) -> np.ndarray:
    """The cap's region grown into its four neighbours (onto the drawn line around it, as
    ``profile`` grows it): a pocket's opening is its hole outside it."""
    return dilated(cap.region)


def _fill_holes(cap: Cap, body: Body, inner: list[Inner], tops: list[Inner] = (),
                regions: list[np.ndarray] = (), background: np.ndarray | None = None) -> Body:
    """``body`` (the prism of ``cap``) with the holes of ``inner`` filled; where the bosses of
    ``tops`` hide part of the cap's outline (their screen footprints: each top swept down to its
    hole), its hidden corners restored as ``profile`` restores them behind another body, between
    seen edges ``BOSS_CORNER_EDGE`` long, and the parts of the cap's face that a boss cuts off
    (``_beside_bosses``, among ``regions``) joined to it across the boss; with the ``background``
    seen inside the silhouette, the parts of the bosses' holes beside them that show it left open
    (``_open_beside``: a hole through the cap that a boss stands across), one circle kept of those
    that overlap (``_apart``)."""
    hidden, region = None, cap.region | np.logical_or.reduce([t.hole for t in inner])
    seen = cap.region
    if tops:
        direction = screen_vector(-plane_basis(cap.axis)[2])
        shadow = np.logical_or.reduce([sweep(_holes_filled(t.face), t.hole, direction)[2] for t in tops])  # the bosses on the screen
        parts = _beside_bosses(cap, shadow, [r for r in regions if not any(r is t.face for t in tops)])
        if parts.any():
            seen = cap.region | parts
            region = region | parts | (shadow & _hull(seen))
        hidden = dilated(shadow & ~seen, SQUARE5)
        if background is not None:
            region &= ~_open_beside(cap, shadow, tops, background)
    outline, holes = profile(dataclasses.replace(cap, region=region), hidden, seen if tops else None, BOSS_CORNER_EDGE)
    return dataclasses.replace(body, outline=outline, holes=_apart(holes))


def _apart(holes: list[Loop]) -> tuple[Loop, ...]:
    """``holes`` without the circles that overlap a larger one (the parts of one hole a boss
    stands across each read as its circle: cut together, they would make no valid solid)."""
    circles = sorted((h for h in holes if isinstance(h, tuple)), key=lambda c: -c[2])
    kept = [c for i, c in enumerate(circles) if all(np.hypot(c[0] - d[0], c[1] - d[1]) >= c[2] + d[2] for d in circles[:i])]
    return tuple(h for h in holes if not isinstance(h, tuple) or h in kept)


def _open_beside(cap: Cap, shadow: np.ndarray, tops: list[Inner], background: np.ndarray) -> np.ndarray:
    """The parts of the holes of ``tops`` beside the bosses (off their screen footprints
    ``shadow``) and enclosed by the cap with them, that show ``MIN_THROUGH`` pixels of the ``background``:
    holes through the cap that the bosses stand in or in front of."""
    rest, count = label(np.logical_or.reduce([t.hole for t in tops]) & ~dilated(shadow) & _holes_filled(cap.region | shadow))
    seen = np.bincount(rest[background], minlength=count + 1)
    return np.isin(rest, np.flatnonzero(seen[1:] >= MIN_THROUGH) + 1)


def _beside_bosses(cap: Cap, shadow: np.ndarray, regions: list[np.ndarray]) -> np.ndarray:
    """The planar ``regions`` off the cap that are parts of its face a boss cuts off (a post
    standing at the face's edge splits it in two): each touches the boss's screen footprint
    ``shadow`` and has an edge (``MIN_CORNER_EDGE`` long) on the line of an edge of the cap's
    outline (``BOSS_CORNER_EDGE`` long; both ends within ``SIMPLIFY`` pixels of it), the two apart
    with the boss between them (half the gap or more in ``shadow``)."""
    near = dilated(shadow, iterations=2)
    cap_edges = [e for e in _edges(cap.region) if np.hypot(*(e[1] - e[0])) >= BOSS_CORNER_EDGE]
    found = np.zeros_like(cap.region)
    for region in regions:
        if (region & cap.region).any() or not (region & near).any() or region.sum() < MIN_TOP:
            continue
        if any(_continues(e, f, shadow) for f in _edges(region) if np.hypot(*(f[1] - f[0])) >= MIN_CORNER_EDGE for e in cap_edges):
            found |= region
    return found


def _split_faces(regions: list[np.ndarray], drawn: np.ndarray) -> list[np.ndarray]:
    """Pairs of the planar ``regions`` that may be a prism's cap (``find_caps``'s) which are one
    face split in two by a boss standing across it, each pair joined: their outlines have edges
    (``MIN_CORNER_EDGE`` long) on ``SPLIT_LINES`` distinct lines, the two edges on each line apart
    with the ``drawn`` silhouette over half the gap between them (``_in_line``)."""
    edges = [[e for e in _edges(r) if np.hypot(*(e[1] - e[0])) >= MIN_CORNER_EDGE] for r in regions]
    joined = []
    for i, a in enumerate(regions):
        for j in range(i + 1, len(regions)):
            gap = drawn & ~a & ~regions[j]
            lines = [(e, f) for e in edges[i] for f in edges[j] if _in_line(e, f, gap)]
            if len({tuple(np.round(e.ravel())) for e, _ in lines}) >= SPLIT_LINES and not _one_line(lines):
                joined.append(a | regions[j])
    return joined


def _in_line(e: np.ndarray, f: np.ndarray, gap: np.ndarray) -> bool:
    """Whether edges ``e`` and ``f`` (two screen points each) lie on one line (all four ends within
    ``SPLIT_TOLERANCE`` of the line through the two ends farthest apart), apart along it, with
    ``gap`` over at least half the gap between them."""
    ends = np.concatenate([e, f])
    far = max(((a, b) for a in range(4) for b in range(a + 1, 4)), key=lambda ab: np.hypot(*(ends[ab[0]] - ends[ab[1]])))
    d = ends[far[1]] - ends[far[0]]
    d = d / np.hypot(*d)
    if np.abs((ends - ends[far[0]]) @ np.array([-d[1], d[0]])).max() > SPLIT_TOLERANCE:
        return False
    (e0, e1), (f0, f1) = sorted((e - ends[far[0]]) @ d), sorted((f - ends[far[0]]) @ d)
    start, stop = (e1, f0) if e1 <= f0 else (f1, e0) if f1 <= e0 else (None, None)
    if start is None:  # they overlap along the line
        return False
    return _gap_covered(ends[far[0]], d, start, stop, gap)


def _one_line(lines: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Whether the edge pairs of ``lines`` all lie on one line (a long edge simplified in two)."""
    points = np.concatenate([np.concatenate(pair) for pair in lines])
    centred = points - points.mean(0)
    return np.linalg.svd(centred, compute_uv=False)[-1] / np.sqrt(len(points)) <= SPLIT_TOLERANCE


def _edges(region: np.ndarray) -> list[np.ndarray]:
    """The edges of ``region``'s simplified outer outline, each its two screen end points."""
    polygon = cv2.approxPolyDP(_contours(region)[0], SIMPLIFY, True).reshape(-1, 2).astype(float)
    return [np.array([a, b]) for a, b in zip(polygon, np.roll(polygon, -1, 0))]


def _continues(edge: np.ndarray, other: np.ndarray, shadow: np.ndarray) -> bool:
    """Whether ``other`` (an edge, two screen points) lies on the line of ``edge`` beyond its ends,
    with ``shadow`` over at least half of the gap between them (or the gap ``MIN_WALL`` pixels at most)."""
    d = (edge[1] - edge[0]) / np.hypot(*(edge[1] - edge[0]))
    normal = np.array([-d[1], d[0]])
    if np.abs((other - edge[0]) @ normal).max() > SIMPLIFY:
        return False
    ends, span = sorted((other - edge[0]) @ d), np.hypot(*(edge[1] - edge[0]))
    if ends[0] < span and ends[1] > 0:  # they overlap along the line
        return False
    gap = (span, ends[0]) if ends[0] >= span else (ends[1], 0.0)
    return gap[1] - gap[0] <= MIN_WALL or _gap_covered(edge[0], d, *gap, shadow)


def _gap_covered(origin: np.ndarray, d: np.ndarray, start: float, stop: float, mask: np.ndarray) -> bool:
    """Whether ``mask`` covers at least half of seven points evenly spaced strictly between
    ``origin + start * d`` and ``origin + stop * d`` (screen points)."""
    return np.mean([_covered(origin + t * d, mask) for t in np.linspace(start, stop, 9)[1:-1]]) >= 0.5


def _pixels_along(steps: int, axis: int) -> float:
    """Screen steps of a sweep along ``axis`` as a length in pixels along it (at least 1)."""
    return max(steps / np.abs(screen_vector(plane_basis(axis)[2])).max(), 1.0)


def _bossed(cap: Cap, body: Body, tops: list[Inner], regions: list[np.ndarray], pool: SandboxPool,
            target: RenderTarget, objective: dict[str, float], background: np.ndarray | None = None) -> list[Body] | None:
    """``body`` (the prism of ``cap``) with its holes filled, then the bosses of ``tops``
    (``_inner_faces``) standing there: each top's outline, unprojected onto the cap's plane, is a
    boss's sketch, moved along the view direction (which keeps it in place on the screen) until
    the boss stands on the cap. The heights start at the sweeps' and are fit by ``objective`` one
    boss at a time (on ``INNER_STEPS`` heights, climbing on past an end of them: ``_climbed``),
    largest first, on the base and the bosses executed once each and rendered
    together (a boss stretched along the axis from the cap, its foot moved along with its sketch:
    the same boss at another height); then the cap's depth is fit again with the bosses in place.
    ``background``: the background seen inside the silhouette (holes beside the bosses that show it
    stay open: ``_fill_holes``)."""
    base = _fill_holes(cap, body, tops, tops, regions, background)
    along = _along(body.axis)
    sketches = [profile(Cap(t.face, body.axis, 0.0)) for t in tops]

    def bosses(heights: list[float]) -> list[Body]:
        return [Body(body.axis, outline, tuple(holes), h, tuple(h * along)) for (outline, holes), h in zip(sketches, heights)]

    starts = [_pixels_along(t.steps, body.axis) for t in tops]
    g_base, *g_starts = _execute_all([[base]] + [[b] for b in bosses(starts)], pool)
    if g_base is None or any(g is None for g in g_starts):
        return None
    heights = list(starts)
    for k, start in enumerate(starts):
        def score(height: float) -> float:
            tall = [height if j == k else h for j, h in enumerate(heights)]
            meshes = [_raised(g, body.axis, s, h) for g, s, h in zip(g_starts, starts, tall)]
            return _placed_fit(functools.reduce(_joined, meshes, g_base), target, objective)

        span = _span(start, body.axis)
        heights[k] = _climbed(start * np.exp(np.linspace(-span, span, INNER_STEPS)), score, start * np.exp([-BOSS_CLIMB, BOSS_CLIMB]))
    g_bosses = _execute(bosses(heights), pool)
    if g_bosses is None:
        return None
    base = _fit_depth(base, g_base, target, objective, g_bosses)  # the base's depth was fit with holes where the bosses stand
    return [base, *bosses(heights)]


def _raised(g: Geometry, axis: int, height: float, to: float) -> Geometry:
    """A boss executed ``height`` tall (its sketch moved ``height`` along the view direction, as
    ``_bossed`` stands it on a cap in the plane through the origin) as it is ``to`` tall: stretched
    along the axis from the cap's plane, and moved in that plane as its sketch moves."""
    normal = plane_basis(axis)[2]
    return _stretched(g, np.where(normal != 0, to / height, 1.0), (to - height) * (_along(axis) - normal))


def _pocketed(cap: Cap, body: Body, floors: list[Inner], pool: SandboxPool,
              target: RenderTarget, objective: dict[str, float]) -> list[Body] | None:
    """``body`` (the prism of ``cap``) with its holes filled, then the pockets of ``floors``
    (``_inner_faces``) cut into its cap: a pocket's opening is its hole, cut to the depth that
    fits the render best (``INNER_STEPS`` around the sweep's, one pocket at a time, largest first,
    on one executed mesh whose floor is moved: ``_deepened``); the holes of a floor are cut
    through the rest of the body, from the floor down (their outline is seen on the floor, so their
    sketch is moved along the view direction down to the floor's start depth, and stays there
    across the fit as the floor moves), twice the body's depth long, so that they still go
    through when the body is deepened (with bosses on the same cap). Each cut starts ``OVERCUT``
    above the face it opens, so that the numbers' rounding leaves no film over it."""
    base = _fill_holes(cap, body, floors)
    normal = plane_basis(body.axis)[2]
    along, up = _along(body.axis), OVERCUT * normal
    rim = _rim(cap)
    openings = [profile(Cap(t.hole & ~rim, body.axis, 0.0))[0] for t in floors]
    through = [_through_holes(t, body.axis) for t in floors]

    deepest = body.depth - MIN_FLOOR
    starts = [min(_pixels_along(t.steps, body.axis), deepest) for t in floors]

    def cuts(depths: list[float]) -> list[Body]:  # a floor's holes stay where they are seen at its start depth
        pockets = [Body(body.axis, o, (), d + OVERCUT, tuple(up), cut=True) for o, d in zip(openings, depths)]
        return pockets + [Body(body.axis, h, (), 2 * body.depth + OVERCUT, tuple(up - s * along + (s - d) * normal), cut=True)
                          for loops, s, d in zip(through, starts, depths) for h in loops]

    depths = list(starts)
    g = _execute([base, *cuts(depths)], pool)
    if g is None:
        return None
    for k, start in enumerate(starts):
        span = _span(start, body.axis)
        tried = np.minimum(start * np.exp(np.linspace(-span, span, INNER_STEPS)), deepest)
        best = _best(tried, lambda d: _placed_fit(_deepened(g, body.axis, openings[k], start, d), target, objective))
        g, depths[k] = _deepened(g, body.axis, openings[k], start, best), best
    return [base, *cuts(depths)]


def _through_holes(floor: Inner, axis: int) -> list[Loop]:
    """The holes through a pocket's ``floor`` in its sketch plane: the holes of the floor region
    (``profile``), and the circles seen along its contour (``_arc_circles``) where holes touch
    one another (one hole of several arcs) or the floor's seen edge (a notch: the pocket's wall
    hides the rest); a hole whose contour is at least half on such circles is replaced by them."""
    to_plane = _to_plane(axis)
    outer, holes = _contours(floor.face)
    loops = [simplified(c, to_plane) for c in holes]  # as profile reads them
    polygons = [(c, loop) for c, loop in zip(holes, loops) if not isinstance(loop, tuple)]
    searched = [_on_plane(c, to_plane) for c in [outer] + [c for c, _ in polygons]]
    circles, explained = _arc_circles(searched, floor, to_plane)
    if not circles:
        return loops
    return ([loop for loop in loops if isinstance(loop, tuple)] + circles
            + [loop for (_, loop), share in zip(polygons, explained[1:]) if share < 0.5])


def _arc_circles(contours: list[np.ndarray], floor: Inner, to_plane: np.ndarray) -> tuple[list[Loop], list[float]]:
    """Circles (in the plane of the ``contours``' points) that holes through ``floor`` draw along
    its contours, and the share of each contour's points on them. Circles through three points
    ``ARC_SPANS`` apart along a contour are tried; the one most points lie on is kept (refit to
    them by least squares) where they cover ``ARC_COVERAGE`` of it and its inside (mapped to the
    screen: ``_on_screen``) is off the floor (``ARC_ON_FACE``) and in the opening
    (``ARC_IN_OPENING``); its points are then set aside and the next is looked for."""
    points = np.concatenate(contours)
    width = np.ptp(points, 0).max()
    trials = []
    for c in contours:
        n = len(c)
        for span in ARC_SPANS:
            if n >= 2 * span:
                trials += [c[[i, (i + span // 2) % n, (i + span) % n]] for i in range(0, n, 2)]
    if not trials:
        return [], [0.0] * len(contours)
    three = np.array(trials)  # circle x^2 + y^2 = 2 cx x + 2 cy y + k through each three points
    a = np.concatenate([2 * three, np.ones((len(three), 3, 1))], -1)
    solvable = np.abs(np.linalg.det(a)) > 1e-9
    centre_k = np.linalg.solve(a[solvable], (three[solvable] ** 2).sum(-1)[..., None])[..., 0]
    r = np.sqrt(np.maximum(centre_k[:, 2] + (centre_k[:, :2] ** 2).sum(1), 0.0))
    keep = (r >= 2) & (2 * r <= width)
    centres, r = centre_k[keep, :2], r[keep]
    near = np.abs(np.linalg.norm(points[None] - centres[:, None], axis=-1) - r[:, None]) <= CIRCLE_TOLERANCE * r[:, None] + 0.75
    grid = np.stack(np.meshgrid(*[np.linspace(-0.9, 0.9, 19)] * 2), -1).reshape(-1, 2)
    grid = grid[(grid ** 2).sum(1) <= 0.81]
    h, w = floor.face.shape

    def inside(cx: float, cy: float, radius: float) -> tuple[float, float]:  # shares of the inside on the floor and in the opening
        x, y = np.rint(_on_screen(grid * radius + [cx, cy], to_plane)).astype(int).T
        x, y = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
        return floor.face[y, x].mean(), floor.hole[y, x].mean()

    left, circles = np.ones(len(points), bool), []

    def next_circle() -> tuple[Loop, np.ndarray] | None:  # the circle most points left lie on, and those points
        counts = (near & left).sum(1)
        for j in np.argsort(-counts, kind="stable"):
            if counts[j] < ARC_POINTS:
                return None
            on = near[j] & left
            angles = np.arctan2(*(points[on] - centres[j]).T[::-1])
            if len(np.unique(np.floor((angles + np.pi) / (2 * np.pi) * 36) % 36)) < ARC_COVERAGE * 36:
                continue
            fit = _circle(points[on])
            if fit is not None:
                on_face, in_opening = inside(*fit)
                if on_face <= ARC_ON_FACE and in_opening >= ARC_IN_OPENING:
                    return fit, on
        return None

    while len(circles) < MAX_ARCS and (found := next_circle()) is not None:
        circles.append(found[0])
        left &= ~found[1]
    bounds = np.cumsum([0] + [len(c) for c in contours])
    return circles, [float((~left[i:k]).mean()) for i, k in zip(bounds[:-1], bounds[1:])]


def _deepened(g: Geometry, axis: int, opening: Loop, depth: float, to: float) -> Geometry:
    """``g`` (executed in pixel units, the cap's plane at 0 along ``axis``) with its vertices and
    edge points at ``depth`` below the cap inside ``opening``'s bounds moved to ``to`` below it:
    a pocket's floor, with the feet of its walls and the tops of the holes through it, moved to
    another depth (the walls are prisms along the axis, so this is the pocket at that depth)."""
    x_dir, y_dir, normal = plane_basis(axis)
    lo, hi = _bounds(opening)

    def moved(points: np.ndarray) -> np.ndarray:
        p = np.array(points, dtype=float)
        u, v, w = p @ x_dir, p @ y_dir, p @ normal
        floor = (np.abs(w + depth) < LEVEL_TOLERANCE) & (u > lo[0] - 1) & (u < hi[0] + 1) & (v > lo[1] - 1) & (v < hi[1] + 1)
        return p + (floor * (depth - to))[..., None] * normal

    return dataclasses.replace(g, vertices=moved(g.vertices), edges=moved(g.edges))


def _same_solid(a: Cap, b: Cap) -> bool:
    """Whether the sweeps of caps ``a`` and ``b`` (on two faces, along their own axes) cover the
    same part of the screen (IoU ``SAME_SOLID``): one prism seen from two of its faces."""
    return a.axis != b.axis and mask_iou(a.swept, b.swept) >= SAME_SOLID


def _moved_onto(bodies: list[Body], base: Body) -> list[Body]:
    """The bosses of ``bodies`` (their base first) moved along the view direction, which keeps them
    in place on the screen, by as much as their base's centre lies from ``base``'s along it."""
    view = np.asarray(VIEW_DIR, float) / np.linalg.norm(VIEW_DIR)
    offset = view * ((base.corners().mean(0) - bodies[0].corners().mean(0)) @ view)
    return [dataclasses.replace(b, shift=tuple(np.asarray(b.shift) + offset)) for b in bodies[1:]]


def _along(axis: int) -> np.ndarray:
    """A move along the view direction (which keeps a point in place on the screen) that raises
    a point by 1 along ``axis``'s normal."""
    return np.asarray(VIEW_DIR) / (np.asarray(VIEW_DIR) @ plane_basis(axis)[2])


def fit_prisms(image: Image.Image | RenderTarget, pool: SandboxPool, objective: dict[str, float],
               quick: bool = False) -> list[str]:
    """The programs of ``framed_prisms``."""
    return [code for code, _ in framed_prisms(image, pool, objective, quick)]


def framed_prisms(image: Image.Image | RenderTarget, pool: SandboxPool, objective: dict[str, float],
                  quick: bool = False) -> list[tuple[str, Frame]]:
    """Prism programs read off ``image``, each with the frame that draws it where the image shows
    it (``program_frame``): for each of the ``PRISMS`` best caps whose sweep fits
    the silhouette, the prism with its depth fit by ``objective``, with its holes (but the openings
    of pockets whose floors are seen: ``_opened``) and without (the
    first also as a symmetric extrusion, ``Body.both``: the same solid, a line round its middle);
    the first ``BOSSED_CAPS`` such caps with bosses standing in their holes, with the bosses (and
    where the two caps' sweeps match, one prism seen from two of its faces, the first's prism with
    the bosses of both: ``_same_solid``, ``_moved_onto``), and the first with pockets seen through
    its holes, with the pockets (``_inner_faces``), and the first bossed cap with both when that is
    one cap (in holes apart); the first cap that fits only with its dents filled (``_dented_caps``:
    a face a boss splits in two or bites into at its edge) and holds tops, with the bosses; then the unions of two and three prisms, when more caps cover the silhouette clearly
    better than one. ``quick``: the ``QUICK_PRISMS`` best caps' prisms (with and without their
    holes), and the bosses, pockets and union as in the full fit."""
    target = RenderTarget.of(image)
    pixels = np.asarray(target.image.convert("RGB").resize((SIZE_PX, SIZE_PX), Image.NEAREST))
    drawn = silhouette(pixels)
    filled = fill_holes(drawn)
    background = filled & ~drawn  # seen through the part
    regions, flat = planar_regions(pixels), flat_pixels(pixels)
    caps = find_caps(pixels, regions)
    out: list[list[Body]] = []
    bossed: list[tuple[Cap, list[Inner], list[Body]]] = []  # (cap, its inner faces, the bodies: the cap's prism first)
    pocketed = None
    prisms = QUICK_PRISMS if quick else PRISMS
    ahead = {id(cap): _body(cap, filled, background=background)[0] for cap in caps[:prisms] if cap.fit >= MIN_FIT}
    pool.prefetch([program([body], normalise=False) for body in ahead.values()], MESHED)  # executed while the first is fit
    for i, cap in enumerate(c for c in caps if c.fit >= MIN_BOSSED_FIT):  # best first: the caps that fit come first
        fits = cap.fit >= MIN_FIT
        more_bosses = len(bossed) < BOSSED_CAPS
        holes = _cap_holes(cap, regions, flat) if more_bosses or (fits and pocketed is None) else []
        tops = _tops(cap, holes, regions, filled) if more_bosses else []
        floors = _inner_faces(cap, holes, +1) if pocketed is None and fits else []
        if (i >= prisms or not fits) and not tops and not floors:
            continue
        opened = _opened(cap, floors)
        body = _fit_prism(opened, filled, background, pool, target, objective, ahead.get(id(cap)) if opened is cap else None)
        if body is None:
            continue
        if i < prisms and fits:
            first = not out
            out.append([body])
            if body.holes:
                out.append([dataclasses.replace(body, holes=())])
            if first:  # the best cap's prism as a symmetric extrusion too: the same solid, a line round its middle
                out.append([dataclasses.replace(body, both=True)])
        if tops:
            bodies = _bossed(cap, body, tops, regions, pool, target, objective, background)
            if bodies is not None:
                bossed.append((cap, tops, bodies))
        if floors:
            bodies = _pocketed(cap, body, floors, pool, target, objective)
            pocketed = None if bodies is None else (cap, floors, bodies)
    out += [bodies for _, _, bodies in bossed + ([pocketed] if pocketed else [])]
    for cap in _dented_caps(caps, pixels, regions, drawn, filled):  # the first that holds tops
        tops = _tops(cap, _cap_holes(cap, regions, flat), regions, filled)
        if not tops:
            continue
        body = _fit_prism(cap, filled, background, pool, target, objective)
        bodies = None if body is None else _bossed(cap, body, tops, regions, pool, target, objective, background)
        if bodies is not None:
            out.append(bodies)
        break
    if len(bossed) > 1 and _same_solid(bossed[0][0], bossed[1][0]):  # bosses on two faces of one prism: all of them on it
        out.append(bossed[0][2] + _moved_onto(bossed[1][2], bossed[0][2][0]))
    first_bossed = bossed[0] if bossed else None
    if first_bossed and pocketed and first_bossed[0] is pocketed[0] and not any((t.hole & f.hole).any() for t in first_bossed[1] for f in pocketed[1]):
        cap, tops, (base, *bosses) = first_bossed  # bosses and pockets on one cap: the base with both sets of holes filled
        out.append([_fill_holes(cap, base, tops + pocketed[1], tops, regions, background), *bosses, *pocketed[2][1:]])
    if caps:
        out += _union(caps, pixels, regions, flat, filled, background, pool, target, objective)
    framed: dict[str, Frame] = {}
    for bodies in out:
        framed.setdefault(program(bodies), program_frame(bodies))
    return list(framed.items())
