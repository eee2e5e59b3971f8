"""Geometry of executed solids: watertight meshes, pose normalisation and the study's Best IoU.

Best IoU (the study's definition): centre each solid on its centroid, scale it by 1/r_g with
r_g = sqrt(trace(I) / (2 V)) (I the inertia tensor about the centroid, unit density), rotate the
prediction onto the ground truth's principal axes of inertia under four sign patterns
(+++, ++-, +-+, -++) and keep the best IoU.

Three modes:

* ``voxel``: the study's own measurement, trimesh voxelisation at pitch 0.05 on one shared grid
  (filled), study poses only. Slow; kept to compare with the study's numbers. It inherits the
  study's flaw: when principal moments are (nearly) equal (cube, square plate, cylinder) the
  eigenvectors are arbitrary, the "aligned" copy comes out rotated, and identical shapes can score
  far below 1.
* ``exact`` (default): volumetric IoU from manifold3d boolean intersection of the normalised
  meshes, IoU = V(A & B) / (V(A) + V(B) - V(A & B)). To survive degenerate moments it takes the
  best over the four study poses *and* the 24 proper rotations of the cube group applied to the
  unrotated (centred and scaled) prediction. GenCAD parts are built on axis-aligned planes, so the
  cube group contains the right pose whenever the principal axes are ambiguous; identical shapes
  score 1 and the score is invariant to translation, uniform scale and 90-degree rotations.
  The maximum is exact but most rotations are never intersected: candidates are visited by
  decreasing upper bound and the search stops when no bound beats the best score by more than
  1e-9. The bounds are the smaller volume, the overlap of the bounding boxes and, per axis, the
  sum over slabs of width 0.1 of the smaller slab volume (``slab_volumes``, exact for a closed
  mesh); rotations related by a symmetry of either mesh (a signed permutation that maps the mesh
  onto itself as a point set) score the same, so one of them stands for all (``rotation_classes``).
  Prepared solids and scores are cached by content: a ground truth is meshed once for all its
  candidates.
* ``cadcoder``: what CAD-Coder's published IoU code computes: exact volumes (manifold3d here,
  OpenCascade booleans there) under the four poses of its ``align_shapes`` only (the target's
  principal axes times the source's with sign flips +++, +--, -+-, --+), after the same centring
  and scaling (its scale sqrt(trace(I)/V) differs from ours by a factor that cancels in the IoU).

Centroid, volume and inertia come from OpenCascade's exact mass properties (computed in the
sandbox child), not from the mesh. Each solid of a result is meshed and made a manifold on its
own (``manifold3d.Mesh.merge`` closes the per-face tessellation), then the solids are unioned,
so compounds of touching solids are handled. A mesh that still is not a manifold (rare: invalid
B-reps) falls back to voxels, and the result says ``method='voxel_fallback'``; a solid whose
mass properties are meaningless (self-intersecting) scores 0 with ``method='degenerate'``.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import trimesh

from cad.sandbox import Geometry

STUDY_SIGNS = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=float)
# CAD-Coder's published IoU code (align_shapes): the target's eigenvectors times the source's with
# these sign flips applied to its columns
CADCODER_SIGNS = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
IOU_MODES = ("exact", "voxel", "cadcoder")
VOXEL_PITCH = 0.05


def _cube_rotations() -> np.ndarray:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            if np.linalg.det(m) > 0:
                mats.append(m)
    return np.array(mats)


CUBE_ROTATIONS = _cube_rotations()  # (24, 3, 3)


def to_trimesh(geometry: Geometry) -> trimesh.Trimesh:
    """A triangle mesh of the whole result with coincident vertices merged."""
    mesh = trimesh.Trimesh(geometry.vertices, geometry.triangles, process=False)
    mesh.merge_vertices(digits_vertex=9)
    mesh.remove_unreferenced_vertices()
    return mesh


@dataclass(frozen=True)
class Pose:
    """Normalised frame of a solid: x_normalised = (x - centroid) / r_g."""

    centroid: np.ndarray
    r_g: float
    axes: np.ndarray  # (3, 3), columns are principal axes, ascending moments
    volume: float


def pose_of(geometry: Geometry) -> Pose:
    """Pose from OpenCascade's exact mass properties (volume, centroid, inertia)."""
    mass = np.asarray(geometry.mass, dtype=float)
    volume, centroid, inertia = float(mass[0]), mass[1:4], mass[4:13].reshape(3, 3)
    if not np.isfinite(mass).all() or volume <= 0:
        raise ValueError("solid has no positive finite volume")
    r_g2 = np.trace(inertia) / (2.0 * volume)
    if not r_g2 > 0:  # self-intersecting B-reps can give meaningless inertia
        raise ValueError("solid has no positive radius of gyration")
    r_g = float(np.sqrt(r_g2))
    _, vecs = np.linalg.eigh(inertia)
    return Pose(centroid, r_g, vecs, volume)


def candidate_rotations(pred: Pose, gt: Pose, mode: str) -> np.ndarray:
    """Rotations R applied as x -> R x to the normalised prediction."""
    if mode == "cadcoder":
        return np.array([gt.axes @ np.diag(s) @ pred.axes.T for s in CADCODER_SIGNS])
    study = np.array([gt.axes @ np.diag(s) @ pred.axes.T for s in STUDY_SIGNS])
    if mode == "voxel":
        return study
    return np.concatenate([study, CUBE_ROTATIONS])


def _manifold_from_arrays(vertices: np.ndarray, faces: np.ndarray):
    import manifold3d

    mesh = manifold3d.Mesh(vert_properties=np.ascontiguousarray(vertices, dtype=np.float32),
                           tri_verts=np.ascontiguousarray(faces, dtype=np.uint32))
    mesh.merge()
    m = manifold3d.Manifold(mesh)
    if m.status() != manifold3d.Error.NoError:
        raise ValueError(f"mesh is not a manifold: {m.status()}")
    return m


def to_manifold(geometry: Geometry):
    """One manifold for the whole result: each solid closed on its own, then unioned."""
    import manifold3d

    face_of_tri = geometry.tri_face
    solid_of_tri = geometry.face_solid[face_of_tri] if len(face_of_tri) else face_of_tri
    parts = []
    for sid in np.unique(solid_of_tri):
        tris = geometry.triangles[solid_of_tri == sid]
        used, inverse = np.unique(tris, return_inverse=True)
        parts.append(_manifold_from_arrays(geometry.vertices[used], inverse.reshape(-1, 3)))
    if not parts:
        raise ValueError("empty mesh")
    return parts[0] if len(parts) == 1 else manifold3d.Manifold.batch_boolean(parts, manifold3d.OpType.Add)


def _affine(rotation: np.ndarray, pose: Pose) -> np.ndarray:
    """3x4 matrix of x -> rotation @ (x - centroid) / r_g."""
    lin = rotation / pose.r_g
    return np.hstack([lin, (-lin @ pose.centroid)[:, None]])


def exact_iou_pair(a_vertices, a_faces, b_vertices, b_faces) -> float:
    """Volumetric IoU of two closed meshes as they stand (no normalisation), via manifold3d."""
    a = _manifold_from_arrays(np.asarray(a_vertices), np.asarray(a_faces))
    b = _manifold_from_arrays(np.asarray(b_vertices), np.asarray(b_faces))
    inter = (a ^ b).volume()
    union = a.volume() + b.volume() - inter
    return float(inter / union) if union > 0 else 0.0


def _voxel_keys(vertices: np.ndarray, faces: np.ndarray, pitch: float) -> set:
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    grid = mesh.voxelized(pitch).fill()
    idx = np.round(np.asarray(grid.points) / pitch).astype(np.int64)
    return set(map(tuple, idx))


def _voxel_scores(pred: Geometry, gt: Geometry, pp: Pose, gp: Pose, rotations: np.ndarray,
                  max_cells: int | None = None) -> list[float]:
    """Voxel IoU per rotation at the study's pitch; ``max_cells`` coarsens the pitch so the longest
    side spans at most that many cells (the fast fallback; the study's mode leaves it None)."""
    pm, gm = to_trimesh(pred), to_trimesh(gt)
    gv = (np.asarray(gm.vertices) - gp.centroid) / gp.r_g
    pv = (np.asarray(pm.vertices) - pp.centroid) / pp.r_g
    pitch = VOXEL_PITCH
    if max_cells:
        extent = max(float(np.abs(gv).max()), float(np.abs(pv).max())) * 2
        pitch = max(pitch, extent / max_cells)
    g_keys = _voxel_keys(gv, np.asarray(gm.faces), pitch)
    scores = []
    for rot in rotations:
        faces = np.asarray(pm.faces)
        faces = faces[:, ::-1] if np.linalg.det(rot) < 0 else faces
        p_keys = _voxel_keys(pv @ rot.T, faces, pitch)
        union = len(p_keys | g_keys)
        scores.append(len(p_keys & g_keys) / union if union else 0.0)
    return scores


# ---- exact IoU: prepared solids, exact upper bounds, symmetry classes --------------------------

SLAB = 0.1  # width of the slabs of the volume-profile bound, in normalised units (r_g = 1)
_EPS = 1e-9  # a rotation is skipped when its bound exceeds the best score by at most this much
SMALL_MESH = 200  # triangles of both meshes, below which an intersection costs less than the analysis


class Prepared:
    """One solid made ready for IoU: its pose and, built on first use and kept, its manifold
    (as executed and normalised), normalised mesh, volume profiles and symmetries.
    ``prepare`` caches these by content, so a ground truth scored against many candidates is
    meshed and analysed once."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.pose = pose_of(geometry)  # ValueError: degenerate
        self._manifold: tuple | None = None
        self._profiles: dict = {}
        self._symmetries: np.ndarray | None = None
        self._corners: np.ndarray | None = None

    def _build(self) -> tuple:
        if self._manifold is None:
            try:
                raw = to_manifold(self.geometry)
                norm = raw.transform(_affine(np.eye(3), self.pose))
                mesh = norm.to_mesh64()
                verts = np.asarray(mesh.vert_properties, dtype=float)[:, :3]
                self._manifold = (raw, norm, norm.volume(), verts, np.asarray(mesh.tri_verts, dtype=np.int64))
            except ValueError:
                self._manifold = (None,)
        return self._manifold

    @property
    def is_manifold(self) -> bool:
        return self._build()[0] is not None

    @property
    def raw(self):
        return self._build()[0]

    @property
    def normalised(self):
        return self._build()[1]

    @property
    def volume(self) -> float:
        return self._build()[2]

    @property
    def vertices(self) -> np.ndarray:
        return self._build()[3]

    @property
    def triangles(self) -> np.ndarray:
        return self._build()[4]

    @property
    def corners(self) -> np.ndarray:
        """The 8 corners of the normalised bounding box, lowest first, highest last."""
        if self._corners is None:
            lo, hi = self.vertices.min(0), self.vertices.max(0)
            self._corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        return self._corners

    def profile(self, direction: np.ndarray) -> tuple[int, np.ndarray]:
        """Volumes of the slabs [k h, (k+1) h] along ``direction``: (first k, volumes)."""
        key = tuple(np.round(direction, 12))
        if key not in self._profiles:
            self._profiles[key] = slab_volumes(self.vertices, self.triangles, np.asarray(direction, float), SLAB)
        return self._profiles[key]

    def symmetries(self) -> np.ndarray:
        """Signed permutations S (identity first) that map the normalised mesh onto itself."""
        if self._symmetries is None:
            self._symmetries = mesh_symmetries(self.vertices, self.triangles)
        return self._symmetries


_PREPARED: OrderedDict = OrderedDict()
_PREPARED_MAX = 256


def _digest(geometry: Geometry) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name in ("vertices", "triangles", "tri_face", "face_solid", "mass"):
        a = np.ascontiguousarray(getattr(geometry, name))
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.digest()


def prepare(geometry: Geometry) -> Prepared:
    """A cached ``Prepared`` for this geometry (keyed by its arrays' content); ValueError when degenerate."""
    key = _digest(geometry)
    hit = _PREPARED.get(key)
    if hit is None:
        try:
            hit = Prepared(geometry)
        except ValueError as exc:
            hit = exc
        _PREPARED[key] = hit
        if len(_PREPARED) > _PREPARED_MAX:
            _PREPARED.popitem(last=False)
    else:
        _PREPARED.move_to_end(key)
    if isinstance(hit, ValueError):
        raise ValueError(str(hit))
    return hit


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.stack([a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]], axis=1)


def slab_volumes(vertices: np.ndarray, triangles: np.ndarray, u: np.ndarray, h: float) -> tuple[int, np.ndarray]:
    """Exact volume of a closed mesh between the planes u.x = k h and (k+1) h, for every k it spans.

    The volume below t is V(t) = -sum_T (N_T . u) * mean over T of max(t - u.x, 0) (divergence
    theorem with the field (u.x - t) u, which vanishes on the cutting plane; N_T the area vector),
    and the mean of that hinge over a triangle has a closed form in its sorted heights.
    """
    x = vertices[triangles]
    area = _cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]) @ u / 2.0
    z = np.sort(x @ u, axis=1)
    z1, z2, z3 = z[:, 0], z[:, 1], z[:, 2]
    k0, k1 = int(np.floor(z1.min() / h)), int(np.ceil(z3.max() / h))
    t = h * np.arange(k0, k1 + 1)
    # triangles entirely below t contribute -A (t - mean z): cumulative sums over triangles sorted by top height
    order = np.argsort(z3)
    a_cum = np.concatenate([[0.0], np.cumsum(area[order])])
    am_cum = np.concatenate([[0.0], np.cumsum((area * z.mean(1))[order])])
    below = np.searchsorted(z3[order], t, side="right")
    vol = -(t * a_cum[below] - am_cum[below])
    # triangles cut by the plane: one (tri, threshold) entry per threshold strictly inside (z1, z3)
    lo = np.floor(z1 / h).astype(np.int64) + 1 - k0
    hi = np.ceil(z3 / h).astype(np.int64) - 1 - k0
    counts = np.clip(hi - lo + 1, 0, None)
    if counts.sum():
        tri = np.repeat(np.arange(len(z)), counts)
        k = lo[tri] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        tt, a1, b1, c1 = t[k], z1[tri], z2[tri], z3[tri]
        inside = (tt > a1) & (tt < c1)  # guard against rounding at the ends
        tri, k, tt, a1, b1, c1 = tri[inside], k[inside], tt[inside], a1[inside], b1[inside], c1[inside]
        d21, d31, d32 = b1 - a1, c1 - a1, c1 - b1
        one = (tt - a1) ** 3 / (3.0 * np.where(d21 > 0, d21, 1.0) * d31)
        two = (3.0 * tt - a1 - b1 - c1) / 3.0 + (c1 - tt) ** 3 / (3.0 * d31 * np.where(d32 > 0, d32, 1.0))
        phi = np.where(tt <= b1, one, two)
        np.add.at(vol, k, -area[tri] * phi)
    return k0, np.diff(vol)


def _profile_overlap(a: tuple[int, np.ndarray], b: tuple[int, np.ndarray]) -> float:
    """sum_k min(a_k, b_k) over common slabs: an upper bound on the volume of the intersection."""
    (ka, va), (kb, vb) = a, b
    lo, hi = max(ka, kb), min(ka + len(va), kb + len(vb))
    if hi <= lo:
        return 0.0
    return float(np.minimum(va[lo - ka:hi - ka], vb[lo - kb:hi - kb]).sum())


def _reversed(p: tuple[int, np.ndarray]) -> tuple[int, np.ndarray]:
    k, v = p
    return -(k + len(v)), v[::-1]


def _signed_permutation(r: np.ndarray) -> tuple[int, int] | None:
    """(axis, sign) per row when ``r`` is a signed permutation matrix, else None."""
    a = np.abs(r)
    if not (np.abs(a - np.round(a)) < 1e-12).all() or not (np.round(a).sum(1) == 1).all():
        return None
    return [(int(np.argmax(a[j])), int(np.sign(r[j, np.argmax(a[j])]))) for j in range(3)]


def intersection_bound(p: Prepared, g: Prepared, rotation: np.ndarray, slabs: bool = True) -> float:
    """An upper bound on V(R p & g) (normalised solids): the smaller volume, the volume of the
    overlap of the bounding boxes and, with ``slabs``, along each axis the sum over slabs of the
    smaller of the two slab volumes."""
    perm = _signed_permutation(rotation)
    pts = (p.corners if perm is not None else p.vertices) @ rotation.T  # a box maps onto the box
    g_lo, g_hi = g.corners[0], g.corners[-1]
    ext = np.clip(np.minimum(pts.max(0), g_hi) - np.maximum(pts.min(0), g_lo), 0, None)
    bound = min(p.volume, g.volume, float(np.prod(ext)))
    if slabs and bound > 0:
        for j in range(3):
            if perm is None:
                prof = p.profile(rotation[j])
            else:
                axis, sign = perm[j]
                prof = p.profile(np.eye(3)[axis])
                prof = prof if sign > 0 else _reversed(prof)
            bound = min(bound, _profile_overlap(prof, g.profile(np.eye(3)[j])))
    return bound


def _signed_permutations() -> np.ndarray:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            mats.append(m)
    return np.array(mats)


SIGNED_PERMUTATIONS = _signed_permutations()  # (48, 3, 3), identity first
_PERM_INDEX = {m.astype(int).tobytes(): i for i, m in enumerate(SIGNED_PERMUTATIONS)}


def _half_edges(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(start, end, unit normal of its triangle) of every half-edge not inside a flat region: a
    description of a closed mesh's surface as a point set that does not depend on how its flat
    regions are triangulated."""
    x = vertices[triangles]
    n = _cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    a = triangles.reshape(-1)
    b = triangles[:, [1, 2, 0]].reshape(-1)
    tri = np.repeat(np.arange(len(triangles)), 3)
    nv = len(vertices)
    key, twin_key = a * nv + b, b * nv + a
    order = np.argsort(key)
    pos = np.searchsorted(key[order], twin_key)
    pos = np.clip(pos, 0, len(key) - 1)
    twin = order[pos]
    has_twin = key[twin] == twin_key
    flat = has_twin & ((n[tri] * n[tri[twin]]).sum(1) > 1 - 1e-12)
    keep = ~flat
    return np.hstack([vertices[a[keep]], vertices[b[keep]], n[tri[keep]]])


def mesh_symmetries(vertices: np.ndarray, triangles: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Signed permutations S with S(mesh) = mesh as a point set (to ``tol``), identity first.

    Candidates must keep the bounding box; then S must map the set of half-edges outside flat
    regions (``_half_edges``; a reflection reverses them) onto itself: both sets are sorted along
    one generic direction and compared row by row (a near tie in that order only loses a symmetry).
    """
    lo, hi = vertices.min(0), vertices.max(0)
    scale = max(float(np.abs(vertices).max()), 1.0)
    found = [SIGNED_PERMUTATIONS[0]]
    boxes = np.sort(np.stack([SIGNED_PERMUTATIONS @ lo, SIGNED_PERMUTATIONS @ hi], axis=1), axis=1)
    same_box = (np.abs(boxes - np.stack([lo, hi])).reshape(48, 6).max(1) < tol * scale)
    cands = [m for m, ok in zip(SIGNED_PERMUTATIONS[1:], same_box[1:]) if ok]
    if not cands:
        return np.array(found)
    edges = _half_edges(vertices, triangles)
    direction = np.sqrt(np.arange(2, 11))  # generic: no two half-edges project alike by design
    ref = edges[np.argsort(edges @ direction)]
    for m in cands:
        start, end, normal = edges[:, :3] @ m.T, edges[:, 3:6] @ m.T, edges[:, 6:] @ m.T
        mapped = np.hstack([start, end, normal] if np.linalg.det(m) > 0 else [end, start, normal])
        mapped = mapped[np.argsort(mapped @ direction)]
        if np.abs(mapped - ref).max() < tol * scale:
            found.append(m)
    return np.array(found)


def _permutation_id(r: np.ndarray) -> int:
    """Index of ``r`` in SIGNED_PERMUTATIONS, or -1."""
    a = np.round(r)
    if np.abs(r - a).max() >= 1e-9 or not (np.abs(a).sum(0) == 1).all() or not (np.abs(a).sum(1) == 1).all():
        return -1
    return _PERM_INDEX[a.astype(int).tobytes()]


_PERM_PRODUCT = np.array([[_permutation_id(a @ b) for b in SIGNED_PERMUTATIONS] for a in SIGNED_PERMUTATIONS])


def rotation_classes(rotations: np.ndarray, p_sym: np.ndarray, g_sym: np.ndarray) -> list[list[int]]:
    """Groups of candidate rotations with equal scores: R' = T R S with S a symmetry of the
    prediction and T one of the ground truth (IoU(T R S p, g) = IoU(R p, T^-1 g) = IoU(R p, g)),
    which includes exact duplicates (a study pose that is a cube rotation)."""
    n = len(rotations)
    ids = [_permutation_id(r) for r in rotations]
    t_ids = np.array([_permutation_id(t) for t in g_sym])
    s_ids = np.array([_permutation_id(s) for s in p_sym])
    first: dict = {}  # signed permutation id -> the first candidate in its class
    groups: dict[int, list[int]] = {}
    general = []
    for i in range(n):
        if ids[i] < 0:
            general.append(i)
            continue
        orbit = np.unique(_PERM_PRODUCT[np.ix_(_PERM_PRODUCT[t_ids, ids[i]], s_ids)]).tolist()
        rep = next((first[o] for o in orbit if o in first), i)
        for o in orbit:
            first.setdefault(o, rep)
        groups.setdefault(rep, []).append(i)
    for i in general:  # a rotation that is no signed permutation only meets another such rotation
        images = ((g_sym @ rotations[i])[:, None] @ p_sym[None]).reshape(-1, 9)
        rep = next((r for r in groups if ids[r] < 0 and
                    (np.abs(images - rotations[r].reshape(9)).max(1) < 1e-9).any()), i)
        groups.setdefault(rep, []).append(i)
    return sorted(groups.values())


def _exact_best(p: Prepared, g: Prepared, rotations: np.ndarray, stats: dict | None = None) -> tuple[int, float]:
    """(index, IoU) of the best rotation: the maximum over all of them, each one an intersection
    of manifolds, except where an exact upper bound on its IoU (``intersection_bound``), or on that
    of a rotation known to score the same (``rotation_classes``), cannot beat the best score found
    by more than 1e-9. Symmetries and slab profiles are only worth their cost on larger meshes."""
    vp, vg = p.volume, g.volume
    big = len(p.triangles) + len(g.triangles) > SMALL_MESH
    if big:
        classes = rotation_classes(rotations, p.symmetries(), g.symmetries())
    else:
        classes = [[i] for i in range(len(rotations))]
    def iou_bound(r: np.ndarray, slabs: bool) -> float:
        v = intersection_bound(p, g, r, slabs)
        return v / (vp + vg - v) if v > 0 else 0.0

    # slab profiles along the box axes serve every signed permutation; a general rotation (a
    # study pose) needs three more, computed only when it would otherwise be evaluated
    general = [_signed_permutation(r) is None for r in rotations]
    bounds = [min(iou_bound(rotations[i], big and not general[i]) for i in members) for members in classes]
    best_i, best, evaluated = 0, -1.0, 0
    for c in np.argsort(bounds, kind="stable")[::-1]:
        if bounds[c] <= best + _EPS:
            break
        i = classes[c][0]
        if big and all(general[m] for m in classes[c]) and iou_bound(rotations[i], True) <= best + _EPS:
            continue
        q = p.raw.transform(_affine(rotations[i], p.pose))
        v = (q ^ g.normalised).volume()
        union = vp + vg - v
        score = v / union if union > 0 else 0.0
        evaluated += 1
        if score > best:
            best_i, best = i, score
    if stats is not None:
        stats.update(evaluated=evaluated, classes=len(classes))
    return best_i, best


@dataclass(frozen=True)
class IoUResult:
    iou: float
    rotation_index: int
    method: str


_RESULTS: OrderedDict = OrderedDict()
_RESULTS_MAX = 4096


def best_iou(pred: Geometry, gt: Geometry, mode: str = "exact", stats: dict | None = None) -> IoUResult:
    """The study's Best IoU between two executed solids (see module docstring), cached by the
    content of both; ``stats``, when given, receives how many rotations were evaluated."""
    if mode not in IOU_MODES:
        raise ValueError(f"unknown IoU mode {mode!r}: use one of {', '.join(IOU_MODES)}")
    key = (_digest(pred), _digest(gt), mode)
    if key in _RESULTS and stats is None:
        _RESULTS.move_to_end(key)
        return _RESULTS[key]
    result = _best_iou(pred, gt, mode, stats)
    _RESULTS[key] = result
    if len(_RESULTS) > _RESULTS_MAX:
        _RESULTS.popitem(last=False)
    return result


def clear_caches() -> None:
    """Forget prepared solids and scores (benchmarks time cold calls)."""
    _PREPARED.clear()
    _RESULTS.clear()


def _best_iou(pred: Geometry, gt: Geometry, mode: str, stats: dict | None) -> IoUResult:
    try:
        pp, gp = prepare(pred), prepare(gt)
    except ValueError:
        return IoUResult(0.0, -1, "degenerate")
    rotations = candidate_rotations(pp.pose, gp.pose, mode)
    if mode == "voxel":
        scores = _voxel_scores(pred, gt, pp.pose, gp.pose, rotations)
        i = int(np.argmax(scores))
        return IoUResult(float(min(max(scores[i], 0.0), 1.0)), i, mode)
    if pp.is_manifold and gp.is_manifold:
        i, score = _exact_best(pp, gp, rotations, stats)
        return IoUResult(float(min(max(score, 0.0), 1.0)), i, mode)
    # the rare fallback: the study poses (and the identity in exact mode) on a coarse voxel grid
    scores = _voxel_scores(pred, gt, pp.pose, gp.pose, rotations[:5], max_cells=64)
    i = int(np.argmax(scores))
    return IoUResult(float(min(max(scores[i], 0.0), 1.0)), i, "voxel_fallback")

