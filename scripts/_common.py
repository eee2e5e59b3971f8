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


def add_row_arguments(ap) -> None:
    """The options naming the rows a script decodes: ``--model``, ``--workers``, ``--data``,
    ``--split``, ``--offset``, ``--limit`` (``rows_of`` reads them)."""
    ap.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default=None, help="a GenCAD-style dataset folder to take rows from (default: the reference rows)")
    ap.add_argument("--split", default=None, help="--data's split (a test split is refused: tune on validation)")
    ap.add_argument("--offset", type=int, default=0, help="--data's rows from this one on")
    ap.add_argument("--limit", type=int, default=None, help="at most this many rows of --data (from --offset)")


def rows_of(ap, args) -> list[dict]:
    """The reference rows, or ``--data``'s rows (``dataset_rows``); a dataset that cannot be read
    (or a test split) stops with one line naming it and exit code 2 (``ap.error``)."""
    from cad.io import InputError
    try:
        return reference_rows() if args.data is None else dataset_rows(args.data, args.split, args.limit, args.offset)
    except InputError as exc:
        ap.error(f"--data: {exc}")


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
