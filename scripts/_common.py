"""Helpers shared by the scripts: paths, reference rows, JSON output."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("GENCAD_REFERENCE", ROOT.parent / "shared" / "gencad_reference"))


def reference_rows() -> list[dict]:
    path = REFERENCE / "samples.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} not found: set GENCAD_REFERENCE to a folder holding GenCAD rows (samples.jsonl + images/)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def write_json(path: str | Path, payload: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))
