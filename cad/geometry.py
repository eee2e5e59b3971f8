"""Geometry of executed solids: watertight meshes, pose normalisation and the study's Best IoU.

Best IoU (the study's definition): centre each solid on its centroid, scale it by 1/r_g with
r_g = sqrt(trace(I) / (2 V)) (I the inertia tensor about the centroid, unit density), rotate the
prediction onto the ground truth's principal axes of inertia under four sign patterns
(+++, ++-, +-+, -++) and keep the best IoU.

Two backends:

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
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import trimesh

from cad.sandbox import Geometry

STUDY_SIGNS = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=float)
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
    """A watertight triangle mesh from the sandbox's per-face tessellation (vertices merged)."""
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


def pose_of(mesh: trimesh.Trimesh) -> Pose:
    volume = float(abs(mesh.volume))
    if volume <= 0:
        raise ValueError("solid has no volume")
    inertia = np.asarray(mesh.moment_inertia, dtype=float)  # about the centroid, density 1
    if mesh.volume < 0:
        inertia = -inertia
    r_g = float(np.sqrt(np.trace(inertia) / (2.0 * volume)))
    _, vecs = np.linalg.eigh(inertia)
    return Pose(np.asarray(mesh.center_mass, dtype=float), r_g, vecs, volume)


def normalised_vertices(mesh: trimesh.Trimesh, pose: Pose) -> np.ndarray:
    return (np.asarray(mesh.vertices) - pose.centroid) / pose.r_g


def candidate_rotations(pred: Pose, gt: Pose, mode: str) -> np.ndarray:
    """Rotations R applied as x -> x @ R.T to the normalised prediction."""
    study = np.array([gt.axes @ np.diag(s) @ pred.axes.T for s in STUDY_SIGNS])
    if mode == "voxel":
        return study
    return np.concatenate([study, CUBE_ROTATIONS])


def _manifold(vertices: np.ndarray, faces: np.ndarray):
    import manifold3d

    m = manifold3d.Manifold(manifold3d.Mesh(
        vert_properties=np.ascontiguousarray(vertices, dtype=np.float32),
        tri_verts=np.ascontiguousarray(faces, dtype=np.uint32),
    ))
    if m.status() != manifold3d.Error.NoError:
        raise ValueError(f"mesh is not a manifold: {m.status()}")
    return m


def _flip_if_inverted(faces: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    return faces[:, ::-1] if np.linalg.det(rotation) < 0 else faces


def exact_iou_pair(a_vertices, a_faces, b_vertices, b_faces) -> float:
    """Volumetric IoU of two watertight meshes via manifold3d booleans."""
    a = _manifold(a_vertices, a_faces)
    b = _manifold(b_vertices, b_faces)
    va, vb = a.volume(), b.volume()
    inter = (a ^ b).volume()
    union = va + vb - inter
    return float(inter / union) if union > 0 else 0.0


def _voxel_keys(vertices: np.ndarray, faces: np.ndarray, pitch: float) -> set:
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    grid = mesh.voxelized(pitch).fill()
    idx = np.round(np.asarray(grid.points) / pitch).astype(np.int64)
    return set(map(tuple, idx))


def voxel_iou_pair(a_vertices, a_faces, b_vertices, b_faces, pitch: float = VOXEL_PITCH) -> float:
    a = _voxel_keys(a_vertices, a_faces, pitch)
    b = _voxel_keys(b_vertices, b_faces, pitch)
    union = len(a | b)
    return len(a & b) / union if union else 0.0


@dataclass(frozen=True)
class IoUResult:
    iou: float
    rotation_index: int
    method: str


def best_iou(pred: Geometry | trimesh.Trimesh, gt: Geometry | trimesh.Trimesh, mode: str = "exact") -> IoUResult:
    """The study's Best IoU between two solids (see module docstring); ``mode`` exact or voxel."""
    if mode not in ("exact", "voxel"):
        raise ValueError(f"unknown IoU mode {mode!r}: use 'exact' or 'voxel'")
    pm = pred if isinstance(pred, trimesh.Trimesh) else to_trimesh(pred)
    gm = gt if isinstance(gt, trimesh.Trimesh) else to_trimesh(gt)
    pp, gp = pose_of(pm), pose_of(gm)
    pv, gv = normalised_vertices(pm, pp), normalised_vertices(gm, gp)
    pf, gf = np.asarray(pm.faces), np.asarray(gm.faces)
    if pm.volume < 0:
        pf = pf[:, ::-1]
    if gm.volume < 0:
        gf = gf[:, ::-1]
    best, best_i, method = -1.0, -1, mode
    rotations = candidate_rotations(pp, gp, mode)
    if mode == "voxel":
        g_keys = _voxel_keys(gv, gf, VOXEL_PITCH)
    else:
        try:
            g_manifold = _manifold(gv, gf)
            g_vol = g_manifold.volume()
        except ValueError:
            method = "voxel_fallback"
            g_keys = _voxel_keys(gv, gf, VOXEL_PITCH / 2)
    for i, rot in enumerate(rotations):
        rv = pv @ rot.T
        rf = _flip_if_inverted(pf, rot)
        if method == "exact":
            try:
                p_manifold = _manifold(rv, rf)
            except ValueError:
                method = "voxel_fallback"
                g_keys = _voxel_keys(gv, gf, VOXEL_PITCH / 2)
            else:
                inter = (p_manifold ^ g_manifold).volume()
                union = p_manifold.volume() + g_vol - inter
                score = inter / union if union > 0 else 0.0
        if method != "exact":
            pitch = VOXEL_PITCH if mode == "voxel" else VOXEL_PITCH / 2
            p_keys = _voxel_keys(rv, rf, pitch)
            union = len(p_keys | g_keys)
            score = len(p_keys & g_keys) / union if union else 0.0
        if score > best:
            best, best_i = float(score), i
    return IoUResult(min(max(best, 0.0), 1.0), best_i, method)
