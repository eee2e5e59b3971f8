"""Sandboxed execution of untrusted CadQuery programs.

Architecture (fork server, "zygote"):

* The calling process never imports or runs untrusted code. It starts ``workers`` zygote
  processes (``python -m cad._zygote``), each of which imports CadQuery once.
* For every program the zygote forks a child. The child starts a new process group, drops to an
  unprivileged user when run as root, sets resource limits (address space, CPU time, file size 0,
  core size 0, few open files, no new processes), checks the static policy (``cad.policy``), runs
  the program with restricted builtins, reduces the result to its solids, measures them and, on
  request, tessellates faces and discretises edges. It sends a JSON header plus raw array bytes
  back over a pipe (never pickle: the child is untrusted) and exits.
* The zygote enforces the wall-clock timeout with SIGKILL to the child's process group, so a hang
  or crash costs one child. Each program starts from the zygote's pristine memory image, so no
  program can leak state (monkeypatches, globals) into the next.
* Programs this code base writes itself (``ExecOptions(reuse=True)``: decoding's fits, never model
  output or dataset text) run instead one after another in one resident child per zygote
  (``run_resident``), isolated the same way but forked once: about half the cost of a program,
  with no isolation between those programs. A timeout or crash ends it; the next starts another.

``SandboxPool.run_many`` returns one ``ExecResult`` per input, in input order, whatever happens to
the workers; results are cached by the hash of the code and the options. With
``ExecOptions(export=("step", "stl"))`` the child also writes the solid as STEP and binary STL
into memory and returns the bytes (``ExecResult.exports``): files are exported inside the sandbox.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Iterator, Sequence

import numpy as np

STATUSES = ("ok", "syntax_error", "rejected", "runtime_error", "timeout", "memory", "crash", "no_solid")
RESULT_NAMES = ("solid", "result", "shape", "part", "model", "body", "obj", "final", "output", "out", "r")
DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_MB = 3072
MAX_RESULT_BYTES = 256 * 1024 * 1024
EXPORT_FORMATS = ("step", "stl")
RESIDENT_PROGRAMS = 256  # programs a resident child runs (ExecOptions.reuse) before a fresh one takes over
RESIDENT_CPU_SECONDS = 3600  # a resident child's CPU limit over all its programs (each has its wall-clock timeout)


@dataclass
class Geometry:
    """Tessellated solid plus its B-rep edges, as plain arrays (safe to pass between processes).

    ``vertices`` are per-face (not merged), ``triangles`` index them, ``tri_face`` gives each
    triangle's face index, ``face_planar`` says which faces are planar, ``edges`` holds B-rep edge
    polylines as segments of shape (K, 2, 3), degenerate edges excluded.
    ``edge_seam`` flags segments that lie on a seam of a periodic surface (a cylinder's
    seam line). ``face_solid`` gives each face's solid index; ``mass`` holds OpenCascade's exact mass
    properties: volume, centroid (3) and inertia tensor about the centroid (9), unit density.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    tri_face: np.ndarray
    face_planar: np.ndarray
    edges: np.ndarray
    edge_seam: np.ndarray
    face_solid: np.ndarray
    mass: np.ndarray

    ARRAYS = ("vertices", "triangles", "tri_face", "face_planar", "edges", "edge_seam", "face_solid", "mass")


@dataclass
class ExecResult:
    status: str
    error: str = ""
    volume: float | None = None
    bbox: list[float] | None = None  # xmin, ymin, zmin, xmax, ymax, zmax
    n_solids: int = 0
    n_faces: int = 0
    valid: bool = False
    brep_valid: bool | None = False  # None: not checked (ExecOptions.check_brep)
    seconds: float = 0.0
    geometry: Geometry | None = field(default=None, repr=False)
    exports: dict[str, bytes] = field(default_factory=dict, repr=False)  # format -> file bytes

    @property
    def ok(self) -> bool:
        """The program left a CadQuery object holding a solid (the study's VSR criterion)."""
        return self.status == "ok"

    @property
    def executable(self) -> bool:
        """That object is a valid solid with positive volume (the study's Executable %)."""
        return self.status == "ok" and self.valid and (self.volume or 0.0) > 0.0

    def to_json(self) -> dict:
        return {
            "status": self.status, "error": self.error, "volume": self.volume, "bbox": self.bbox,
            "n_solids": self.n_solids, "n_faces": self.n_faces, "valid": self.valid, "brep_valid": self.brep_valid,
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True)
class ExecOptions:
    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = DEFAULT_MEMORY_MB
    want_geometry: bool = False
    tolerance: float = 1e-3  # linear deflection, relative to the bounding-box diagonal
    angular_tolerance: float = 0.2
    export: tuple[str, ...] = ()  # EXPORT_FORMATS made from the solid in the child (ExecResult.exports)
    check_brep: bool = True  # run the full BRepCheck (ExecResult.brep_valid; None without it): a few ms a program
    # Programs this code base wrote itself (never model output or dataset text) may run one after
    # another in one sandboxed child (``run_resident``): no fork per program, about half the cost,
    # and no isolation between them.
    reuse: bool = False


# --------------------------------------------------------------------------------------------
# Child side: runs in the forked process, after the zygote imported CadQuery.
# --------------------------------------------------------------------------------------------

def _isolate_child(opts: ExecOptions, *keep_fds: int) -> tuple[int, ...]:
    """Process-level isolation for the forked child; returns the fds it keeps, renumbered from 3."""
    import resource

    os.setsid()
    try:  # die with the zygote, never gain privileges
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    except Exception:
        pass
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    import fcntl

    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(keep_fds)) for fd in keep_fds]  # out of the way of their new numbers
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i)
    os.closerange(3 + len(keep_fds), 1 << 16)
    os.chdir("/")
    cpu = int(opts.timeout) + 2
    limits = {
        resource.RLIMIT_AS: opts.memory_mb * 1024 * 1024,
        resource.RLIMIT_CPU: cpu,
        resource.RLIMIT_FSIZE: 0,
        resource.RLIMIT_CORE: 0,
        resource.RLIMIT_NOFILE: 8,
    }
    if os.getuid() == 0:  # root ignores some limits and file permissions: drop privileges
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    # OpenCascade's meshing starts threads: allow a few, but bound processes of the sandbox user.
    limits[resource.RLIMIT_NPROC] = 64
    for res, value in limits.items():
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass
    return tuple(range(3, 3 + len(keep_fds)))


def _reduce_to_solids(value) -> list:
    import cadquery as cq

    if isinstance(value, cq.Workplane):
        shapes = [o for o in value.objects if isinstance(o, cq.Shape)]
        solids = [s for o in shapes for s in o.Solids()]
        if not solids:
            try:  # an unfinished chain (e.g. a sketch after an extrude): the nearest solid
                solids = list(value.findSolid(searchStack=True, searchParents=True).Solids())
            except ValueError:
                solids = []
        return solids
    if isinstance(value, cq.Assembly):
        return list(value.toCompound().Solids())
    if isinstance(value, cq.Shape):
        return list(value.Solids())
    return []


def _closed_solids(solids: list) -> bool:
    """Every shell of every solid is closed (watertight topology).

    This is the "valid solid" of the Executable % criterion. Full ``BRepCheck`` validity is
    reported separately as ``brep_valid``: real GenCAD-Code programs often union nearly
    coincident cylinders, which leaves faces with touching wires that BRepCheck flags although
    the solid is closed and measurable.
    """
    from OCP.BRepCheck import BRepCheck_NoError, BRepCheck_Shell

    shells = [sh for s in solids for sh in s.Shells()]
    return bool(shells) and all(BRepCheck_Shell(sh.wrapped).Closed() == BRepCheck_NoError for sh in shells)


def _find_result(namespace: dict):
    import cadquery as cq

    for name in RESULT_NAMES:
        if name in namespace:
            return name, namespace[name]
    for name, value in reversed(list(namespace.items())):
        if isinstance(value, (cq.Workplane, cq.Shape, cq.Assembly)) and not name.startswith("__"):
            return name, value
    return None, None


def _mass_properties(shape) -> np.ndarray:
    from OCP.BRepGProp import BRepGProp
    from OCP.GProp import GProp_GProps

    props = GProp_GProps()
    BRepGProp.VolumeProperties_s(shape.wrapped, props)
    c = props.CentreOfMass()
    m = props.MatrixOfInertia()
    inertia = [m.Value(i, j) for i in (1, 2, 3) for j in (1, 2, 3)]
    return np.array([props.Mass(), c.X(), c.Y(), c.Z(), *inertia], dtype=float)


def _circle_points(circle, ts: np.ndarray) -> np.ndarray:
    """The points of an OCCT circle (``gp_Circ``, placed) at parameters ``ts``: what
    ``curve.Value(t)`` gives, computed as ``ElCLib::CircleValue`` does, at once rather than a call
    per point (most of the edges' cost on a part with holes)."""
    axes = circle.Position()
    (ox, oy, oz), (xx, xy, xz), (yx, yy, yz) = ((v.X(), v.Y(), v.Z()) for v in (axes.Location(), axes.XDirection(), axes.YDirection()))
    a1, a2 = circle.Radius() * np.cos(ts), circle.Radius() * np.sin(ts)
    return np.stack([a1 * xx + a2 * yx + ox, a1 * xy + a2 * yy + oy, a1 * xz + a2 * yz + oz], axis=-1)


def _tessellate(shape, solids: list, opts: ExecOptions) -> Geometry:
    from OCP.BRep import BRep_Tool
    from OCP.BRepAdaptor import BRepAdaptor_Curve, BRepAdaptor_Surface
    from OCP.BRepMesh import BRepMesh_IncrementalMesh
    from OCP.GeomAbs import GeomAbs_Circle, GeomAbs_Line, GeomAbs_Plane
    from OCP.TopAbs import TopAbs_EDGE, TopAbs_FACE, TopAbs_REVERSED
    from OCP.TopExp import TopExp
    from OCP.TopLoc import TopLoc_Location
    from OCP.TopoDS import TopoDS
    from OCP.TopTools import TopTools_IndexedDataMapOfShapeListOfShape

    bb = shape.BoundingBox()
    diag = max(bb.DiagonalLength, 1e-9)
    BRepMesh_IncrementalMesh(shape.wrapped, opts.tolerance * diag, False, opts.angular_tolerance, True)
    verts, tris, tri_face, planar = [], [], [], []
    faces = [f for s in solids for f in s.Faces()]
    face_solid = np.array([i for i, s in enumerate(solids) for _ in s.Faces()], dtype=np.int32)
    offset = 0
    for fi, face in enumerate(faces):
        loc = TopLoc_Location()
        poly = BRep_Tool.Triangulation_s(face.wrapped, loc)
        planar.append(BRepAdaptor_Surface(face.wrapped).GetType() == GeomAbs_Plane)
        if poly is None:
            continue
        trsf = loc.Transformation()
        n = poly.NbNodes()
        v = np.empty((n, 3))
        for i in range(n):
            p = poly.Node(i + 1).Transformed(trsf)
            v[i] = (p.X(), p.Y(), p.Z())
        t = np.empty((poly.NbTriangles(), 3), dtype=np.int64)
        for i in range(poly.NbTriangles()):
            t[i] = poly.Triangle(i + 1).Get()
        t -= 1
        if face.wrapped.Orientation() == TopAbs_REVERSED:
            t = t[:, ::-1]
        verts.append(v)
        tris.append(t + offset)
        tri_face.append(np.full(len(t), fi, dtype=np.int32))
        offset += n
    edge_faces = TopTools_IndexedDataMapOfShapeListOfShape()
    TopExp.MapShapesAndAncestors_s(shape.wrapped, TopAbs_EDGE, TopAbs_FACE, edge_faces)
    segments, seams = [], []
    for i in range(1, edge_faces.Extent() + 1):
        edge = TopoDS.Edge_s(edge_faces.FindKey(i))
        if BRep_Tool.Degenerated_s(edge):
            continue
        faces_of = edge_faces.FindFromIndex(i)  # Python iteration over an OCCT list costs ~0.2 ms; most edges have two faces
        ancestors = (faces_of.First(), faces_of.Last()) if 0 < faces_of.Size() <= 2 else tuple(faces_of)
        seam = any(BRep_Tool.IsClosed_s(edge, TopoDS.Face_s(f)) for f in ancestors)
        curve = BRepAdaptor_Curve(edge)
        kind = curve.GetType()
        k = 2 if kind == GeomAbs_Line else 48
        ts = np.linspace(curve.FirstParameter(), curve.LastParameter(), k)
        pts = _circle_points(curve.Circle(), ts) if kind == GeomAbs_Circle else np.array(
            [[p.X(), p.Y(), p.Z()] for p in (curve.Value(t) for t in ts)])
        segments.append(np.stack([pts[:-1], pts[1:]], axis=1))
        seams.append(np.full(k - 1, seam, dtype=bool))
    return Geometry(
        vertices=np.concatenate(verts) if verts else np.zeros((0, 3)),
        triangles=(np.concatenate(tris) if tris else np.zeros((0, 3), dtype=np.int64)).astype(np.int32),
        tri_face=np.concatenate(tri_face) if tri_face else np.zeros(0, dtype=np.int32),
        face_planar=np.array(planar, dtype=bool),
        edges=np.concatenate(segments) if segments else np.zeros((0, 2, 3)),
        edge_seam=np.concatenate(seams) if seams else np.zeros(0, dtype=bool),
        face_solid=face_solid,
        mass=_mass_properties(shape),
    )


def _export(shape, geometry: Geometry | None, solids: list, opts: ExecOptions) -> dict[str, bytes]:
    """The solid as file bytes, written to memory (the child may not create files)."""
    out = {}
    if "step" in opts.export:
        import io

        from OCP.STEPControl import STEPControl_AsIs, STEPControl_Writer

        writer, buf = STEPControl_Writer(), io.BytesIO()
        writer.Transfer(shape.wrapped, STEPControl_AsIs)
        writer.WriteStream(buf)
        out["step"] = buf.getvalue()
    if "stl" in opts.export:
        g = geometry or _tessellate(shape, solids, opts)
        tri = g.vertices[g.triangles].astype(np.float32)
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        rec = np.zeros(len(tri), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
        rec["n"], rec["v"] = normal, tri
        out["stl"] = b"img2cad binary STL".ljust(80, b" ") + struct.pack("<I", len(tri)) + rec.tobytes()
    return out


def _program_blob(code: str, opts: ExecOptions) -> bytes:
    """Run one program (policy check, restricted builtins) in this sandboxed process: its result
    as a JSON header and raw array bytes (``_parse_child_blob``)."""
    header: dict = {"status": "crash", "error": ""}
    arrays: list[np.ndarray] = []
    from cad.policy import SAFE_BUILTINS, check_source, safe_import

    t0 = time.perf_counter()
    check = check_source(code)
    if check.status != "ok":
        header = {"status": check.status, "error": check.error}
    else:
        builtins = dict(SAFE_BUILTINS)
        builtins["__import__"] = safe_import
        namespace: dict = {"__builtins__": builtins, "__name__": "__cad__"}
        try:
            exec(compile(check.tree, "<cadquery>", "exec"), namespace)  # noqa: S102 - sandboxed child
            name, value = _find_result(namespace)
            solids = _reduce_to_solids(value) if value is not None else []
            if not solids:
                what = "no result variable" if name is None else f"'{name}' holds no solid"
                header = {"status": "no_solid", "error": what}
            else:
                import cadquery as cq

                shape = solids[0] if len(solids) == 1 else cq.Compound.makeCompound(solids)
                bb = shape.BoundingBox()
                volume = float(shape.Volume())
                header = {
                    "status": "ok", "error": "", "volume": volume,
                    "bbox": [bb.xmin, bb.ymin, bb.zmin, bb.xmax, bb.ymax, bb.zmax],
                    "n_solids": len(solids), "n_faces": len(shape.Faces()),
                    "valid": _closed_solids(solids) and volume > 1e-12,
                    "brep_valid": bool(shape.isValid()) if opts.check_brep else None,
                }
                g = None
                if opts.want_geometry:
                    g = _tessellate(shape, solids, opts)
                    arrays = [getattr(g, name) for name in Geometry.ARRAYS]
                if opts.export:
                    try:
                        files = _export(shape, g, solids, opts)
                    except Exception as exc:  # noqa: BLE001 - the program ran; only its files are missing
                        files, header["error"] = {}, f"export failed: {type(exc).__name__}: {exc}"[:500]
                    header["exports"] = list(files)
                    arrays += [np.frombuffer(b, dtype=np.uint8) for b in files.values()]
        except MemoryError:
            header = {"status": "memory", "error": "MemoryError: memory limit exceeded"}
        except RecursionError as exc:
            header = {"status": "runtime_error", "error": f"RecursionError: {exc}"}
        except BaseException as exc:  # noqa: BLE001 - report every failure of the program
            msg = f"{type(exc).__name__}: {exc}"[:500]
            status = "memory" if "bad_alloc" in msg or "OutOfMemory" in msg else "runtime_error"
            header = {"status": status, "error": msg}
    header["seconds"] = time.perf_counter() - t0
    header["arrays"] = [[a.dtype.str, list(a.shape)] for a in arrays]
    payload = json.dumps(header).encode()
    blob = struct.pack("<Q", len(payload)) + payload + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return blob


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _child_main(code: str, opts: ExecOptions, result_fd: int) -> None:
    """Body of the forked child. Never returns: exits with os._exit."""
    try:
        (fd,) = _isolate_child(opts, result_fd)
        _write_all(fd, _program_blob(code, opts))
    except BaseException:  # noqa: BLE001
        os._exit(3)
    os._exit(0)


def _read_until(fd: int, size: int, deadline: float | None) -> bytes | None:
    """``size`` bytes from ``fd`` (fewer where it closes first); None once ``deadline`` (a
    ``time.monotonic`` time; None: none) passes."""
    chunks, got = [], 0
    while got < size:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        data = os.read(fd, min(size - got, 1 << 20))
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _resident_main(opts: ExecOptions, request_fd: int, result_fd: int) -> None:
    """Body of a resident child: isolated as a one-program child (but for a CPU limit over all its
    programs), it runs each program the zygote sends and answers with its length-prefixed blob,
    until the zygote closes the requests. Never returns."""
    try:
        request_fd, result_fd = _isolate_child(replace(opts, timeout=RESIDENT_CPU_SECONDS), request_fd, result_fd)
        while True:
            head = _read_until(request_fd, 8, None)
            if len(head) < 8:
                break
            request = json.loads(_read_until(request_fd, struct.unpack("<Q", head)[0], None))
            fields = request["opts"]
            blob = _program_blob(request["code"], ExecOptions(**{**fields, "export": tuple(fields["export"])}))
            _write_all(result_fd, struct.pack("<Q", len(blob)) + blob)
    except BaseException:  # noqa: BLE001
        os._exit(3)
    os._exit(0)


class _Resident:
    """Zygote side of a resident child (``ExecOptions.reuse``): forked once, it runs programs one
    after another; a timeout or crash ends it, and the next program starts a new one."""

    def __init__(self, opts: ExecOptions) -> None:
        request_r, request_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(request_w)
            os.close(result_r)
            _resident_main(opts, request_r, result_w)
        os.close(request_r)
        os.close(result_w)
        self.pid, self.requests, self.results = pid, request_w, result_r
        self.memory_mb, self.runs, self.alive = opts.memory_mb, 0, True

    def serves(self, opts: ExecOptions) -> bool:
        return self.alive and self.memory_mb == opts.memory_mb and self.runs < RESIDENT_PROGRAMS

    def run(self, code: str, opts: ExecOptions) -> ExecResult:
        t0 = time.monotonic()
        self.runs += 1
        request = json.dumps({"code": code, "opts": asdict(opts)}).encode()
        try:
            _write_all(self.requests, struct.pack("<Q", len(request)) + request)
        except OSError as exc:
            self.close()
            return ExecResult("crash", f"resident child gone: {exc}", seconds=time.monotonic() - t0)
        deadline = t0 + opts.timeout
        head = _read_until(self.results, 8, deadline)
        size = struct.unpack("<Q", head)[0] if head is not None and len(head) == 8 else None
        blob = _read_until(self.results, size, deadline) if size is not None and size <= MAX_RESULT_BYTES else b""
        if head is None or blob is None:
            self.close()
            return ExecResult("timeout", f"wall-clock timeout after {opts.timeout:g} s", seconds=time.monotonic() - t0)
        if size is None or len(blob) < size:  # it ended (or sent too much) before its whole answer
            self.close()
            return ExecResult("crash", "resident child ended without a result", seconds=time.monotonic() - t0)
        try:
            return _parse_child_blob(blob)
        except Exception as exc:  # noqa: BLE001
            self.close()
            return ExecResult("crash", f"unreadable result from child: {exc}", seconds=time.monotonic() - t0)

    def close(self) -> None:
        if not self.alive:
            return
        self.alive = False
        for fd in (self.requests, self.results):
            os.close(fd)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        os.waitpid(self.pid, 0)


_resident: _Resident | None = None


def run_resident(code: str, opts: ExecOptions) -> ExecResult:
    """Run ``code`` in the zygote's resident child (started, or restarted, as needed): for
    ``ExecOptions.reuse``. Called in the zygote, never in the main process."""
    global _resident
    if _resident is None or not _resident.serves(opts):
        if _resident is not None:
            _resident.close()
        _resident = _Resident(opts)
    return _resident.run(code, opts)


def _parse_child_blob(blob: bytes) -> ExecResult:
    """Parse the child's JSON header and raw arrays without trusting them (no pickle)."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode())
    status = header.get("status")
    if status not in STATUSES:
        return ExecResult("crash", f"child sent an unknown status {status!r}")
    arrays, pos = [], 8 + n
    for dtype, shape in header.get("arrays", []):
        dt = np.dtype(dtype)
        if dt.kind not in "fiub":
            return ExecResult("crash", "child sent an unexpected array type")
        size = int(np.prod(shape)) * dt.itemsize
        arrays.append(np.frombuffer(blob[pos:pos + size], dtype=dt).reshape(shape).copy())
        pos += size
    names = header.get("exports", [])
    if not isinstance(names, list) or len(names) > len(arrays) or any(n not in EXPORT_FORMATS for n in names):
        return ExecResult("crash", "child sent unexpected exports")
    n_geometry = len(arrays) - len(names)
    exports = {n: a.tobytes() for n, a in zip(names, arrays[n_geometry:])}
    geometry = Geometry(*arrays[:n_geometry]) if n_geometry == len(Geometry.ARRAYS) else None
    bbox, brep = header.get("bbox"), header.get("brep_valid", False)  # brep None: not checked
    return ExecResult(
        status=status, error=str(header.get("error", ""))[:1000],
        volume=None if header.get("volume") is None else float(header["volume"]),
        bbox=None if bbox is None else [float(x) for x in bbox][:6],
        n_solids=int(header.get("n_solids", 0)), n_faces=int(header.get("n_faces", 0)),
        valid=bool(header.get("valid", False)), brep_valid=None if brep is None else bool(brep),
        seconds=float(header.get("seconds", 0.0)),
        geometry=geometry, exports=exports,
    )


def run_in_child(code: str, opts: ExecOptions) -> ExecResult:
    """Fork a child that runs ``code``; enforce the timeout; classify how it ended.

    Called in the zygote (CadQuery already imported), never in the main process.
    """
    rfd, wfd = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        _child_main(code, opts, wfd)
    os.close(wfd)
    chunks, size, timed_out = [], 0, False
    deadline = t0 + opts.timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if not ready:
            continue
        data = os.read(rfd, 1 << 20)
        if not data:
            break
        size += len(data)
        if size > MAX_RESULT_BYTES:
            break
        chunks.append(data)
    os.close(rfd)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _, wstatus = os.waitpid(pid, 0)
    elapsed = time.monotonic() - t0
    if timed_out:
        return ExecResult("timeout", f"wall-clock timeout after {opts.timeout:g} s", seconds=elapsed)
    blob = b"".join(chunks)
    if len(blob) >= 8 and os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) == 0:
        try:
            return _parse_child_blob(blob)
        except Exception as exc:  # noqa: BLE001
            return ExecResult("crash", f"unreadable result from child: {exc}", seconds=elapsed)
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        if sig in (signal.SIGXCPU, signal.SIGKILL) and elapsed >= opts.timeout * 0.5:
            return ExecResult("timeout", f"CPU time limit ({signal.Signals(sig).name})", seconds=elapsed)
        return ExecResult("crash", f"child killed by {signal.Signals(sig).name}", seconds=elapsed)
    return ExecResult("crash", f"child exited with code {os.WEXITSTATUS(wstatus)} and no result", seconds=elapsed)


# --------------------------------------------------------------------------------------------
# Parent side: the pool of zygotes, driven from the main process.
# --------------------------------------------------------------------------------------------

def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("zygote closed its pipe")
    (n,) = struct.unpack("<Q", head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("zygote closed its pipe mid-message")
    return pickle.loads(data)  # the zygote is trusted code; children never speak pickle


class _Zygote:
    """One fork server process."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cad._zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env=env, start_new_session=True,
        )
        ready = self._recv_with_deadline(120.0)
        if ready != "ready":
            raise RuntimeError(f"sandbox zygote failed to start: {ready!r}")

    def _recv_with_deadline(self, seconds: float):
        ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
        if not ready:
            raise TimeoutError("sandbox zygote did not answer")
        return _recv(self.proc.stdout)

    def run(self, code: str, opts: ExecOptions) -> ExecResult:
        _send(self.proc.stdin, (code, opts))
        return self._recv_with_deadline(opts.timeout + 30.0)

    def close(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass


class SandboxPool:
    """A pool of zygotes; ``run_many`` keeps input order and survives crashes of any worker;
    ``prefetch`` starts programs whose results will be asked for later."""

    def __init__(self, workers: int = 2, cache_size: int = 2048) -> None:
        self.workers = max(1, int(workers))
        self._idle: queue.Queue[_Zygote] = queue.Queue()
        self._all: list[_Zygote] = []
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, ExecResult] = OrderedDict()
        self._cache_size = cache_size
        self._ahead: dict[str, Future] = {}  # programs started by prefetch, by cache key, until they finish
        self._background = ThreadPoolExecutor(max(1, self.workers - 1), thread_name_prefix="sandbox-prefetch")
        self.closed = False
        with ThreadPoolExecutor(self.workers) as ex:
            for z in ex.map(lambda _: _Zygote(), range(self.workers)):
                self._all.append(z)
                self._idle.put(z)

    def clear_cache(self) -> None:
        """Forget cached results (e.g. so that a timed run pays for its own executions)."""
        with self._lock:
            self._cache.clear()

    @staticmethod
    def cache_key(code: str, opts: ExecOptions) -> str:
        return hashlib.sha256((repr(opts) + "\0" + code).encode("utf-8", "surrogatepass")).hexdigest()

    def run(self, code: str, opts: ExecOptions | None = None) -> ExecResult:
        if self.closed:
            raise RuntimeError("this SandboxPool is closed: run programs inside its `with` block, before close()")
        opts = opts or ExecOptions()
        key = self.cache_key(code, opts)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            ahead = self._ahead.get(key)
        if ahead is not None and not ahead.cancel():  # prefetched and started: its result, not a second run
            return ahead.result()
        return self._execute(code, opts, key)

    def cached(self, code: str, opts: ExecOptions | None = None) -> ExecResult | None:
        """The cached result of ``code`` under ``opts``, None when there is none (yet)."""
        with self._lock:
            return self._cache.get(self.cache_key(code, opts or ExecOptions()))

    def prefetch(self, codes: Iterable[str], opts: ExecOptions | None = None) -> None:
        """Start running ``codes`` in the background, at most ``workers - 1`` at a time (a worker
        stays free for ``run``), into the cache: a later ``run`` or ``imap`` of the same program and
        options takes that result (or waits for it) instead of running it again; one whose turn has
        not come yet when it is asked for runs then, in the caller's thread."""
        opts = opts or ExecOptions()
        with self._lock:
            if self.closed:
                return
            for code in dict.fromkeys(codes):
                key = self.cache_key(code, opts)
                if key not in self._cache and key not in self._ahead:
                    self._ahead[key] = self._background.submit(self._execute, code, opts, key)

    def _execute(self, code: str, opts: ExecOptions, key: str) -> ExecResult:
        """Run ``code`` on a free worker (replacing one that dies) and cache the result under ``key``."""
        try:
            return self._on_worker(code, opts, key)
        finally:
            with self._lock:
                self._ahead.pop(key, None)

    def _on_worker(self, code: str, opts: ExecOptions, key: str) -> ExecResult:
        zygote = self._idle.get()
        try:
            result = zygote.run(code, opts)
        except (EOFError, BrokenPipeError, TimeoutError, OSError) as exc:
            zygote.close()
            if self.closed:  # closed while this program ran: no new worker for a closed pool
                raise RuntimeError("this SandboxPool was closed while a program ran in it") from exc
            with self._lock:
                self._all.remove(zygote)
            zygote = _Zygote()
            with self._lock:
                self._all.append(zygote)
            result = ExecResult("crash", f"sandbox worker lost: {exc}")
        finally:
            self._idle.put(zygote)
        with self._lock:
            self._cache[key] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def imap(self, codes: Iterable[str], opts: ExecOptions | Sequence[ExecOptions] | None = None) -> Iterator[ExecResult]:
        """Results in input order, computed ``workers`` at a time; ``opts``: one for all, or one per program."""
        each = opts if isinstance(opts, (list, tuple)) else None
        with ThreadPoolExecutor(self.workers) as ex:
            pending: list = []
            try:
                for i, code in enumerate(codes):
                    pending.append(ex.submit(self.run, code, opts if each is None else each[i]))
                    if len(pending) >= 4 * self.workers:
                        yield pending.pop(0).result()
                while pending:
                    yield pending.pop(0).result()
            finally:  # the consumer stopped (Ctrl-C, an error): drop queued programs, finish running ones
                for fut in pending:
                    fut.cancel()

    def run_many(self, codes: Sequence[str], opts: ExecOptions | None = None) -> list[ExecResult]:
        return list(self.imap(codes, opts))

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self._background.shutdown(wait=False, cancel_futures=True)
        for z in self._all:
            z.close()
        self._all.clear()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_default_pool: SandboxPool | None = None


def default_pool(workers: int | None = None) -> SandboxPool:
    """A process-wide pool, started on first use."""
    global _default_pool
    if _default_pool is None:
        _default_pool = SandboxPool(workers or min(2, os.cpu_count() or 1))
    return _default_pool


def execute(code: str, timeout: float = DEFAULT_TIMEOUT, geometry: bool = False) -> ExecResult:
    """Run one program in the default pool."""
    return default_pool().run(code, ExecOptions(timeout=timeout, want_geometry=geometry))
