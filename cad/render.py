"""Renderer in GenCAD-Code's image style: ``python -m cad.render IN.jsonl --out DIR [--size 448]``.

Style, as measured on the real images in ``shared/gencad_reference``: one orthographic isometric
view from the direction (1, -1, 1) with z up; planar faces one flat grey RGB (141, 141, 138) with
no shading; curved faces lightly shaded; 1-pixel black lines on the visible B-rep edges (not on
cylinder seams); white background; the part's bounding box fit to a centred 4:3 window (400 x 300 of 448 pixels);
no anti-aliasing. A small z-buffer rasteriser compiled with numba does the work, so rendering is
headless, deterministic and fast. The same ``render_geometry`` serves training data, the
render-and-compare reranker and result grids.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from PIL import Image, PngImagePlugin

from cad.cli import TIMEOUT, WORKERS, ArgumentParser, guarded, int_in
from cad.io import InputError, check_output_dir, fingerprint, write_jsonl_atomic
from cad.sandbox import Geometry

FP_TEXT = "img2cad-fingerprint"  # PNG text chunk: what produced the image (cad.io.fingerprint)

VIEW_DIR = np.array([1.0, -1.0, 1.0]) / np.sqrt(3.0)  # from the part towards the camera
RIGHT = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
UP = np.array([-1.0, 1.0, 2.0]) / np.sqrt(6.0)


@dataclass(frozen=True)
class Style:
    size: int = 448
    # The projected 3D bounding box is fit into a centred 4:3 window of the frame (measured on
    # the real images: 400 x 300 pixels of 448, as if rendered 4:3 and padded to a square).
    fit_width: float = 400 / 448
    fit_height: float = 300 / 448
    face_rgb: tuple[int, int, int] = (141, 141, 138)
    background: int = 255
    line_rgb: tuple[int, int, int] = (0, 0, 0)
    curved_ambient: float = 0.605  # curved faces: face_rgb * (ambient + diffuse * |n . light|),
    curved_diffuse: float = 0.659  # a headlight; fit to the real images (RMS error 1.7 grey levels)
    light: tuple[float, float, float] = (1.0, -1.0, 1.0)
    lines: bool = True
    seams: bool = True  # the real images do draw a cylinder's seam line where it is visible
    line_depth_tolerance: float = 2.5  # pixels of depth by which an edge may lie behind a face


GENCAD_STYLE = Style()


@numba.njit(cache=True, nogil=True)
def _span(lo, hi, a, dy, area):  # pragma: no cover - compiled
    """[lo, hi] narrowed to the sx where the weight a + (dy / area) * sx is at least -1e-9. An edge
    less than 1e-6 pixels tall does not narrow it: there rounding could move the end by pixels
    (elsewhere it moves it by at most 2e-11 / |dy|)."""
    if abs(dy) < 1e-6:
        return lo, hi
    end = (-1e-9 - a) / (dy / area)
    if dy / area > 0:
        return max(lo, end), hi
    return lo, min(hi, end)


@numba.njit(cache=True, nogil=True)
def _rasterise(px, py, pz, tris, shade, zbuf, ibuf):  # pragma: no cover - compiled
    h, w = zbuf.shape
    for t in range(tris.shape[0]):
        a, b, c = tris[t, 0], tris[t, 1], tris[t, 2]
        x0, y0, x1, y1, x2, y2 = px[a], py[a], px[b], py[b], px[c], py[c]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            continue
        xmin = max(int(np.floor(min(x0, x1, x2))), 0)
        xmax = min(int(np.ceil(max(x0, x1, x2))), w - 1)
        ymin = max(int(np.floor(min(y0, y1, y2))), 0)
        ymax = min(int(np.ceil(max(y0, y1, y2))), h - 1)
        for y in range(ymin, ymax + 1):
            sy = y + 0.5
            # Each weight is linear in sx (a + b * sx, b = dy / area): the row's pixels inside
            # the triangle lie in one span. A pixel more is visited each side and every pixel is
            # tested as before, so the span only skips pixels the test rejects (a long thin
            # triangle's box is mostly outside it).
            a0 = (x1 * (y2 - sy) - x2 * (y1 - sy)) / area
            a1 = (x2 * (y0 - sy) - x0 * (y2 - sy)) / area
            lo, hi = _span(-np.inf, np.inf, a0, y1 - y2, area)
            lo, hi = _span(lo, hi, a1, y2 - y0, area)
            lo, hi = _span(lo, hi, 1.0 - a0 - a1, y0 - y1, area)
            lo = min(max(lo, xmin - 1.0), xmax + 2.0)  # inside the box, so finite
            hi = min(max(hi, xmin - 1.0), xmax + 2.0)
            x_start = max(xmin, int(np.floor(lo - 0.5)) - 1)
            x_end = min(xmax, int(np.ceil(hi - 0.5)) + 1)
            for x in range(x_start, x_end + 1):
                sx = x + 0.5
                w0 = ((x1 - sx) * (y2 - sy) - (x2 - sx) * (y1 - sy)) / area
                w1 = ((x2 - sx) * (y0 - sy) - (x0 - sx) * (y2 - sy)) / area
                w2 = 1.0 - w0 - w1
                if w0 < -1e-9 or w1 < -1e-9 or w2 < -1e-9:
                    continue
                z = w0 * pz[a] + w1 * pz[b] + w2 * pz[c]
                if z > zbuf[y, x]:
                    zbuf[y, x] = z
                    ibuf[y, x] = w0 * shade[a] + w1 * shade[b] + w2 * shade[c]


@numba.njit(cache=True, nogil=True)
def _paint(img, zbuf, ibuf, rgb):  # pragma: no cover - compiled
    """Every pixel a face covers gets ``rgb`` times its shade, rounded (half to even) and clipped."""
    h, w = zbuf.shape
    for y in range(h):
        for x in range(w):
            if zbuf[y, x] > -np.inf:
                for c in range(3):
                    img[y, x, c] = np.uint8(np.rint(min(max(rgb[c] * ibuf[y, x], 0.0), 255.0)))


@numba.njit(cache=True, nogil=True)
def _draw_lines(seg, zbuf, mask, eps):  # pragma: no cover - compiled
    h, w = zbuf.shape
    for s in range(seg.shape[0]):
        x0, y0, z0 = seg[s, 0, 0], seg[s, 0, 1], seg[s, 0, 2]
        x1, y1, z1 = seg[s, 1, 0], seg[s, 1, 1], seg[s, 1, 2]
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for k in range(n + 1):
            t = k / n
            x = int(np.floor(x0 + t * (x1 - x0)))
            y = int(np.floor(y0 + t * (y1 - y0)))
            if x < 0 or y < 0 or x >= w or y >= h:
                continue
            z = z0 + t * (z1 - z0)
            if z >= zbuf[y, x] - eps:  # visible unless a surface lies clearly in front of it
                mask[y, x] = True


def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per-vertex normals, area-weighted; vertices are per face, so normals are smooth per face."""
    v = vertices[triangles]
    fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    vn = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vn, triangles[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return vn / np.where(norm > 0, norm, 1.0)


def project(points: np.ndarray) -> np.ndarray:
    """World points to (right, up, depth-towards-camera) coordinates."""
    return np.stack([points @ RIGHT, points @ UP, points @ VIEW_DIR], axis=-1)


Frame = tuple[float, float, float]  # (pixels per unit as a share of the image size, centre right, centre up)


def box_corners(points: np.ndarray) -> np.ndarray:
    """The eight corners of the points' axis-aligned bounding box."""
    lo, hi = np.min(points, 0), np.max(points, 0)
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def window_fit(low: np.ndarray, high: np.ndarray, style: Style = GENCAD_STYLE) -> tuple[float, np.ndarray]:
    """(pixels per unit, centre) that fit the projected box from ``low`` to ``high`` into the
    style's centred window: how a picture in this style frames a part."""
    ext = np.maximum(high - low, 1e-9)
    return min(style.size * style.fit_width / ext[0], style.size * style.fit_height / ext[1]), (low + high) / 2.0


def frame_offset(geometry: Geometry, frame: Frame, style: Style = GENCAD_STYLE) -> float:
    """Pixels between where the window fit and ``frame`` draw the farthest corner of the solid's
    bounding box: none where ``frame`` is the window fit (a program read whole and in place)."""
    pc = project(box_corners(np.asarray(geometry.vertices, dtype=np.float64)))[:, :2]
    scale, centre = window_fit(pc.min(0), pc.max(0), style)
    return float(np.abs((pc - centre) * scale - (pc - np.asarray(frame[1:])) * frame[0] * style.size).max())


def render_geometry(geometry: Geometry, style: Style = GENCAD_STYLE, frame: Frame | None = None) -> np.ndarray:
    """Render an executed solid to an (H, W, 3) uint8 image in GenCAD's style: its projected
    bounding box fit to the style's window, or placed by ``frame`` (the projected point
    ``frame[1:]`` at the image's centre, ``frame[0] * size`` pixels per unit)."""
    size = style.size
    verts = np.asarray(geometry.vertices, dtype=np.float64)
    tris = np.asarray(geometry.triangles, dtype=np.int64)
    img = np.full((size, size, 3), style.background, dtype=np.uint8)
    if len(verts) == 0 or len(tris) == 0:
        return img
    pc = project(box_corners(verts))[:, :2]
    scale, centre = window_fit(pc.min(0), pc.max(0), style)
    if frame is not None:
        scale, centre = frame[0] * size, np.array(frame[1:], dtype=np.float64)

    def to_screen(points: np.ndarray) -> np.ndarray:
        p = project(points)
        sx = (p[..., 0] - centre[0]) * scale + size / 2.0
        sy = size / 2.0 - (p[..., 1] - centre[1]) * scale
        return np.stack([sx, sy, p[..., 2] * scale], axis=-1)

    sp = to_screen(verts)
    light = np.asarray(style.light, dtype=float)
    light /= np.linalg.norm(light)
    normals = _vertex_normals(verts, tris)
    curved_vertex = np.zeros(len(verts), dtype=bool)
    curved_faces = ~np.asarray(geometry.face_planar, dtype=bool)
    curved_vertex[tris[curved_faces[geometry.tri_face]].ravel()] = True
    shade = np.where(curved_vertex, style.curved_ambient + style.curved_diffuse * np.abs(normals @ light), 1.0)
    zbuf = np.full((size, size), -np.inf)
    ibuf = np.zeros((size, size))
    _rasterise(sp[:, 0].copy(), sp[:, 1].copy(), sp[:, 2].copy(), tris, shade, zbuf, ibuf)
    _paint(img, zbuf, ibuf, np.asarray(style.face_rgb, dtype=np.float64))
    edges = np.asarray(geometry.edges, dtype=np.float64)
    if not style.seams:
        edges = edges[~np.asarray(geometry.edge_seam, dtype=bool)]
    if style.lines and len(edges):
        seg = to_screen(edges)
        mask = np.zeros((size, size), dtype=bool)
        _draw_lines(seg, zbuf, mask, style.line_depth_tolerance)
        img[mask] = style.line_rgb
    return img


def silhouette(image: np.ndarray, threshold: int = 250) -> np.ndarray:
    """Non-background pixels of an RGB image (any channel below ``threshold``)."""
    a = np.asarray(image)
    if a.ndim == 2:
        return a < threshold
    return (a[..., 0] < threshold) | (a[..., 1] < threshold) | (a[..., 2] < threshold)  # about 8x faster than .any(-1)


def silhouette_iou(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = silhouette(a), silhouette(b)
    union = np.logical_or(sa, sb).sum()
    return float(np.logical_and(sa, sb).sum() / union) if union else 1.0


def render_codes(codes: list[str], pool, style: Style = GENCAD_STYLE, timeout: float = 10.0):
    """Execute programs in the sandbox and render each; yields (ExecResult, image or None)."""
    from cad.sandbox import ExecOptions

    for res in pool.imap(codes, ExecOptions(timeout=timeout, want_geometry=True)):
        yield res, (render_geometry(res.geometry, style) if res.ok and res.geometry is not None else None)


def file_names(ids: list[str]) -> dict[str, str]:
    """An injective id -> PNG file name map: an id made only of letters, digits and ``-_.#`` (at
    most 150 characters) keeps its name; any other id is sanitised, cut and given a hash suffix."""
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    for pid in ids:
        safe = "".join(ch if ch.isalnum() or ch in "-_.#" else "_" for ch in pid)
        if safe != pid or len(safe) > 150 or safe.startswith("."):
            safe = f"{safe.lstrip('.')[:120]}~{hashlib.sha256(pid.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
        name = f"{safe}.png"
        if owner.setdefault(name, pid) != pid:
            raise InputError(f"ids {owner[name]!r} and {pid!r} map to the same file {name}; rename one of them")
        names[pid] = name
    return names


def _fingerprint_of(path: Path) -> str | None:
    """The fingerprint a PNG written by ``main`` carries, or None."""
    try:
        with Image.open(path) as im:
            return im.info.get(FP_TEXT)
    except (OSError, ValueError):
        return None


@guarded("rerun the same command to resume; finished images are kept")
def main(argv: list[str] | None = None) -> int:
    """Render every program of a JSONL file to ``OUT/<name>.png``. ``OUT/index.jsonl`` maps every
    input id, in input order, to its file (null when it failed) and status; ``OUT/failures.jsonl``
    lists the failures. Each PNG carries the fingerprint of its program and style: a rerun renders
    again what changed and keeps the rest."""
    from tqdm import tqdm

    from cad.execute import load_programs
    from cad.sandbox import SandboxPool

    ap = ArgumentParser(prog="python -m cad.render", description=__doc__.splitlines()[0])
    ap.add_argument("input", help="JSONL with {'id', 'code'} (or GenCAD rows) per line")
    ap.add_argument("--out", required=True, help="folder for the PNGs, index.jsonl and failures.jsonl")
    ap.add_argument("--size", type=int_in(16, 4096), default=448, help="image size in pixels (16 to 4096)")
    ap.add_argument("--workers", type=WORKERS, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--timeout", type=TIMEOUT, default=10.0)
    args = ap.parse_args(argv)
    out = check_output_dir(args.out, args.input)
    items = load_programs(args.input)
    names = file_names([pid for pid, _, _ in items])
    style = Style(size=args.size)
    fps = {pid: fingerprint("cad.render", dataclasses.asdict(style), code) for pid, code, _ in items}
    status = {pid: {"id": pid, "file": None, "status": "rejected", "error": err}
              for pid, code, err in items if code is None or err}
    todo = []
    for pid, code, err in items:
        if pid not in status:
            if _fingerprint_of(out / names[pid]) == fps[pid]:
                status[pid] = {"id": pid, "file": names[pid], "status": "ok", "error": ""}
            else:
                todo.append((pid, code))
    kept = sum(r["status"] == "ok" for r in status.values())
    rendered = 0
    meta = PngImagePlugin.PngInfo
    with SandboxPool(args.workers) as pool:
        pairs = render_codes([c for _, c in todo], pool, style, args.timeout)
        for (pid, _), (res, img) in tqdm(zip(todo, pairs), total=len(todo), desc="render", unit="img"):
            target = out / names[pid]
            if img is None:
                target.unlink(missing_ok=True)  # an image of an earlier program would be stale
                status[pid] = {"id": pid, "file": None, "status": res.status, "error": res.error or "no solid to render"}
                continue
            info = meta()
            info.add_text(FP_TEXT, fps[pid])
            tmp = out / f".{names[pid]}.tmp"
            try:
                Image.fromarray(img).save(tmp, format="PNG", pnginfo=info)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            rendered += 1
            status[pid] = {"id": pid, "file": names[pid], "status": "ok", "error": ""}
    rows = [status[pid] for pid, _, _ in items]
    write_jsonl_atomic(out / "index.jsonl", rows)
    write_jsonl_atomic(out / "failures.jsonl", [{k: r[k] for k in ("id", "status", "error")} for r in rows if r["file"] is None])
    print(json.dumps({"n": len(items), "rendered_now": rendered, "kept": kept,
                      "failed": sum(r["file"] is None for r in rows), "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
