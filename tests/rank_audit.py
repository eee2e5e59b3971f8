"""Run a module as one rank of a multi-process launch, recording which files this rank writes.

    torchrun --nproc_per_node 2 -m tests.rank_audit AUDIT_DIR MODULE -- [ARGS ...]

Each rank writes ``AUDIT_DIR/rank-<RANK>.txt``: a ``world_size N`` line, then ``write PATH`` for
every file it opens for writing or renames into place (Python's audit events), so a test can check
that two ranks really ran and which of them wrote what. The ``--`` keeps torchrun's own parser
from reading the module's options (it rejects ``--n`` as an ambiguous abbreviation).
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND


def main() -> None:
    audit_dir, module, *args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    rank = os.environ.get("RANK", "0")
    log = open(Path(audit_dir) / f"rank-{rank}.txt", "w", buffering=1)  # noqa: SIM115 - open for the whole run
    log.write(f"world_size {os.environ.get('WORLD_SIZE', '1')}\n")

    def hook(event: str, a: tuple) -> None:
        if event == "open" and isinstance(a[0], (str, bytes, os.PathLike)):
            mode, flags = a[1], a[2] or 0
            if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS):
                log.write(f"write {os.path.abspath(os.fsdecode(a[0]))}\n")
        elif event == "os.rename":
            log.write(f"write {os.path.abspath(os.fsdecode(a[1]))}\n")

    sys.addaudithook(hook)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
