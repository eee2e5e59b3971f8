"""Fork-server entry point: ``python -m cad._zygote`` (started by ``cad.sandbox.SandboxPool``).

Imports CadQuery once, then serves requests ``(code, ExecOptions)`` from stdin, forking one child
per program (``cad.sandbox.run_in_child``) and answering with an ``ExecResult`` on stdout.
"""
import os
import sys


def main() -> None:
    proto_out = os.fdopen(os.dup(1), "wb")
    proto_in = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol stream
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    import cadquery  # noqa: F401 - the reason this process exists
    # Everything the child imports, imported here: after dropping privileges the child may not be
    # allowed to read the virtual environment (a checkout under a private home, say).
    import ctypes  # noqa: F401
    import resource  # noqa: F401

    import OCP.BRep  # noqa: F401
    import OCP.BRepAdaptor  # noqa: F401
    import OCP.BRepCheck  # noqa: F401
    import OCP.BRepGProp  # noqa: F401
    import OCP.BRepMesh  # noqa: F401
    import OCP.GeomAbs  # noqa: F401
    import OCP.GProp  # noqa: F401
    import OCP.STEPControl  # noqa: F401
    import OCP.TopAbs  # noqa: F401
    import OCP.TopExp  # noqa: F401
    import OCP.TopLoc  # noqa: F401
    import OCP.TopoDS  # noqa: F401
    import OCP.TopTools  # noqa: F401
    from cad import policy  # noqa: F401
    from cad.sandbox import ExecResult, _recv, _send, run_in_child, run_resident

    _send(proto_out, "ready")
    while True:
        try:
            code, opts = _recv(proto_in)
        except EOFError:
            return
        try:
            result = (run_resident if opts.reuse else run_in_child)(code, opts)
        except Exception as exc:  # noqa: BLE001 - the zygote must keep serving
            result = ExecResult("crash", f"zygote error: {type(exc).__name__}: {exc}")
        _send(proto_out, result)


if __name__ == "__main__":
    sys.exit(main())
