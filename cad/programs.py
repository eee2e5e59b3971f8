"""Program text utilities: the canonical form for training and numeric perturbation.

Canonical form (``canonicalize``): every decimal number rounded to ``decimals`` places and written
without float noise (``6.123233995736766e-17`` becomes ``0.0``), trailing zeros dropped, no spaces
around ``=`` or after ``,``, GenCAD's ``# Generating a workplane`` comments dropped (optional),
blank lines removed. The program builds the same solid (tests check exact IoU >= 0.99) and is
shorter, which shortens training targets.

Structure (``structure``): the canonical form with every number written as ``#``: the operations,
their order and their variables. Two programs with the same structure differ only in numbers, so
one can be edited into the other by changing numbers alone (template decoding, refinement).
"""
from __future__ import annotations

import re

import numpy as np

# A Python float or int literal, optionally signed, not part of an identifier (wp_sketch0).
NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
COMMENT_RE = re.compile(r"^\s*#.*$", re.MULTILINE)


def format_number(value: float, decimals: int = 4) -> str:
    """Shortest fixed-point text of ``value`` rounded to ``decimals`` places ("0.0", "-0.5")."""
    x = round(float(value), decimals)
    if x == 0:
        return "0.0"
    text = f"{x:.{decimals}f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def canonicalize(code: str, decimals: int = 4, keep_comments: bool = False, grid: int | None = None) -> str:
    """The canonical training form of a program (see module docstring).

    With ``grid`` (e.g. 256, DeepCAD's 8-bit quantisation), numbers that are exact multiples of
    1/grid are written exactly (``0.0234375``) instead of being rounded to ``decimals``.
    """
    lines = []
    for line in code.splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not keep_comments):
            continue
        if stripped.startswith("#"):
            lines.append(stripped)
            continue
        body = NUMBER_RE.sub(lambda m: _canon_literal(m.group(0), decimals, grid), stripped)
        body = re.sub(r"\s*=\s*(?!=)", "=", body)
        body = re.sub(r"\s*,\s*", ",", body)
        body = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", body))
        lines.append(body)
    return "\n".join(lines) + "\n"


def structure(code: str) -> str:
    """``code``'s canonical form with every number literal (sign included) replaced by ``#``."""
    return NUMBER_RE.sub("#", canonicalize(code))


def on_grid(value: float, grid: int) -> bool:
    """Is ``value`` an exact multiple of 1/grid (up to float noise)?"""
    return abs(value * grid - round(value * grid)) < 1e-6


def _canon_literal(text: str, decimals: int, grid: int | None = None) -> str:
    if re.fullmatch(r"-?\d+", text):
        return text  # integers (loop counts, sketch indices) stay as they are
    value = float(text)
    if grid and on_grid(value, grid):
        return format_number(round(value * grid) / grid, 10)
    return format_number(value, decimals)


def perturb(code: str, rng: np.random.Generator, sigma: float = 0.1, decimals: int = 6, share: float = 1.0) -> str:
    """Scale non-zero decimal literals by (1 + N(0, sigma)): a nearby, usually valid program.

    Each distinct literal is scaled with probability ``share`` (all of them by default). Unit-vector
    components (|x| close to 1 or 0) are kept so sketch planes stay orthonormal, and equal literals
    map to equal values, so aligned points stay aligned and loops stay closed.
    """
    mapping: dict[str, str] = {}

    def repl(m: re.Match) -> str:
        text = m.group(0)
        if re.fullmatch(r"-?\d+", text):
            return text
        x = float(text)
        if abs(x) < 1e-9 or abs(abs(x) - 1.0) < 1e-9:
            return text
        if text not in mapping:
            scale = 1.0 + sigma * rng.standard_normal() if share >= 1.0 or rng.random() < share else 1.0
            mapping[text] = format_number(x * scale, decimals) if scale != 1.0 else text
        return mapping[text]

    return NUMBER_RE.sub(repl, code)


# GenCAD-Code's program shape: a plane per sketch, loops on it, one extrusion per sketch.
PLANE_RE = re.compile(r"^(wp_sketch\d+)\s*=\s*cq\.Workplane\(cq\.Plane\(cq\.Vector\(([^()]*)\),\s*"
                      r"cq\.Vector\(([^()]*)\),\s*cq\.Vector\(([^()]*)\)\)\)", re.M)
LOOP_RE = re.compile(r"^loop\d+\s*=\s*(wp_sketch\d+)(\..*)$", re.M)
EXTRUDE_RE = re.compile(r"^solid\d+\s*=\s*(wp_sketch\d+)\..*\.extrude\(([^,()]+)(,\s*both\s*=\s*True)?\)", re.M)
CALL_RE = re.compile(r"\.(moveTo|lineTo|threePointArc|circle)\(([^()]*(?:\([^()]*\)[^()]*)*)\)")


def _floats(text: str) -> list[float]:
    return [float(t) for t in NUMBER_RE.findall(text)]


def sketch_numbers(code: str) -> dict[str, list[tuple[str, tuple[int, int]]]]:
    """Per sketch (``wp_sketchN``), its loop numbers in order: each one's role (``x`` or ``y`` for a
    point of ``moveTo`` / ``lineTo`` / ``threePointArc``, ``r`` for a circle's radius) and its span
    in ``code``."""
    out: dict[str, list[tuple[str, tuple[int, int]]]] = {}
    for m in LOOP_RE.finditer(code):
        numbers = out.setdefault(m.group(1), [])
        for call in CALL_RE.finditer(code, m.start(2), m.end(2)):
            spans = [(call.start(2) + a, call.start(2) + b) for a, b in (n.span() for n in NUMBER_RE.finditer(call.group(2)))]
            if call.group(1) == "circle":
                numbers.extend(("r", s) for s in spans)
            else:
                numbers.extend(("xy"[i % 2], s) for i, s in enumerate(spans))
    return out


def bounding_size(code: str) -> float | None:
    """The largest side of a GenCAD-style program's bounding box, from its text: each sketch's 2-D
    box (loop points, circles as centre ± radius; arcs through their three points) placed on its
    plane and swept along the normal by its extrusion. None when the text has no such sketch."""
    planes = {m.group(1): [np.array(_floats(m.group(i)), dtype=float) for i in (2, 3, 4)] for m in PLANE_RE.finditer(code)}
    points: dict[str, list[tuple[float, float]]] = {}
    for name, numbers in sketch_numbers(code).items():
        pts = points[name] = []
        x = y = 0.0  # the last point: a circle's centre
        for role, (a, b) in numbers:
            value = float(code[a:b])
            if role == "x":
                x = value
            elif role == "y":
                y = value
                pts.append((x, y))
            else:
                pts += [(x - abs(value), y - abs(value)), (x + abs(value), y + abs(value))]
    corners = []
    for m in EXTRUDE_RE.finditer(code):
        name = m.group(1)
        if name not in planes or not points.get(name) or any(len(v) != 3 for v in planes[name]):
            continue
        origin, x_dir, normal = planes[name]
        y_dir = np.cross(normal, x_dir)
        depth = float(m.group(2))
        sweep = (-depth, depth) if m.group(3) else (0.0, depth)
        uv = np.array(points[name])
        for u in (uv[:, 0].min(), uv[:, 0].max()):
            for v in (uv[:, 1].min(), uv[:, 1].max()):
                corners += [origin + u * x_dir + v * y_dir + t * normal for t in sweep]
    if not corners:
        return None
    pts = np.array(corners)
    return float((pts.max(0) - pts.min(0)).max())


def rescale(code: str, factor: float, decimals: int = 6) -> str:
    """The same part ``factor`` times larger: plane origins, loop numbers and extrusion depths
    scaled; plane directions kept. Lines of another shape are left as they are."""

    def scaled(text: str) -> str:
        return NUMBER_RE.sub(lambda n: format_number(float(n.group(0)) * factor, decimals), text)

    code = PLANE_RE.sub(lambda m: m.group(0).replace(f"cq.Vector({m.group(2)})", f"cq.Vector({scaled(m.group(2))})", 1), code)
    code = LOOP_RE.sub(lambda m: m.group(0)[: m.start(2) - m.start(0)] + scaled(m.group(2)), code)
    return EXTRUDE_RE.sub(lambda m: m.group(0)[: m.start(2) - m.start(0)] + scaled(m.group(2)) + m.group(0)[m.end(2) - m.start(0):], code)


def normalize_scale(code: str, size: float = 1.5) -> str:
    """``code`` rescaled so that its bounding box's largest side is ``size`` (GenCAD's normalised
    frame); unchanged when its size cannot be read from the text."""
    current = bounding_size(code)
    if not current or current < 1e-9:
        return code
    return rescale(code, size / current)


def _world_axis(direction: np.ndarray) -> int | None:
    """The world axis (0, 1, 2) a unit direction lies along, up to sign and float noise."""
    if direction.shape != (3,):
        return None
    axis = int(np.argmax(np.abs(direction)))
    return axis if abs(abs(direction[axis]) - 1.0) < 1e-6 else None


def stretch_spans(code: str) -> dict[int, list[tuple[int, int]]]:
    """Per world axis (0: x, 1: y, 2: z), the spans of the numbers that all scale by f when the
    part is stretched f times along that axis: plane origins' components on the axis, loop
    coordinates along the plane direction that lies on the axis, and extrusion depths along a normal
    on it. Circle radii are left out (a stretched circle is an ellipse), and so are the loop
    coordinates and depths of a plane whose directions are not along world axes."""
    out: dict[int, list[tuple[int, int]]] = {0: [], 1: [], 2: []}
    directions: dict[str, tuple[int | None, int | None, int | None]] = {}
    for m in PLANE_RE.finditer(code):
        origin = [(m.start(2) + n.start(), m.start(2) + n.end()) for n in NUMBER_RE.finditer(m.group(2))]
        if len(origin) == 3:
            for axis, span in enumerate(origin):
                out[axis].append(span)
        x_dir, normal = (np.array(_floats(m.group(i)), dtype=float) for i in (3, 4))
        y_dir = np.cross(normal, x_dir) if x_dir.shape == normal.shape == (3,) else np.zeros(0)
        directions[m.group(1)] = (_world_axis(x_dir), _world_axis(y_dir), _world_axis(normal))
    for name, numbers in sketch_numbers(code).items():
        x_axis, y_axis, _ = directions.get(name, (None, None, None))
        for role, span in numbers:
            axis = {"x": x_axis, "y": y_axis}.get(role)
            if axis is not None:
                out[axis].append(span)
    for m in EXTRUDE_RE.finditer(code):
        axis = directions.get(m.group(1), (None, None, None))[2]
        if axis is not None and NUMBER_RE.fullmatch(m.group(2).strip()):
            a = m.start(2) + (len(m.group(2)) - len(m.group(2).lstrip()))
            out[axis].append((a, a + len(m.group(2).strip())))
    return {axis: sorted(spans) for axis, spans in out.items()}
