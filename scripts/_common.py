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


def dataset_rows(source: str, split: str | None, limit: int | None, offset: int = 0) -> list[dict]:
    """Rows (deepcad_id, cadquery, image) of a local dataset from row ``offset`` on, at most
    ``limit`` of them; its test split refused (``cad.io.InputError`` names what is wrong)."""
    from cad.data import load_gencad
    ds = load_gencad(source, split=split, limit=None if limit is None else offset + limit, allow_test=False)
    return [dict(ds[i]) for i in range(min(offset, len(ds)), len(ds))]


def row_picture(row: dict):
    """The row's picture as an RGB PIL image: a reference row names its file, a dataset row holds the image."""
    from PIL import Image

    from cad.data import to_image
    image = row["image"]
    return (Image.open(REFERENCE / image) if isinstance(image, str) else to_image(image)).convert("RGB")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def write_json(path: str | Path, payload: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2))
    print(json.dumps(payload, indent=2))
