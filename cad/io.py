"""JSONL input and output that names the bad line and never loses an id."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator


class InputError(ValueError):
    """A user-supplied file is unusable; the message says which and what to do."""


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict | None, str]]:
    """Yield ``(line_number, row or None, error)`` for every non-empty line of ``path``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; pass a JSONL file with one JSON object per line")
    with p.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"{p}:{lineno}: not valid JSON ({exc.msg})"
                continue
            if not isinstance(row, dict):
                yield lineno, None, f"{p}:{lineno}: expected a JSON object"
                continue
            yield lineno, row, ""


def row_id(row: dict | None, lineno: int) -> str:
    """A row's id: ``id``, else GenCAD's ``deepcad_id``, else ``line:N``."""
    if row:
        for key in ("id", "deepcad_id"):
            if row.get(key) not in (None, ""):
                return str(row[key])
    return f"line:{lineno}"


def row_code(row: dict | None) -> str | None:
    """A row's program: ``code``, else GenCAD's ``cadquery``."""
    if not row:
        return None
    for key in ("code", "cadquery"):
        if isinstance(row.get(key), str):
            return row[key]
    return None


def done_ids(path: str | os.PathLike) -> set[str]:
    """Ids already written to a resumable JSONL output (a line cut short by an interruption is
    skipped, so that id is redone)."""
    p = Path(path)
    if not p.exists():
        return set()
    done = set()
    for line in p.read_text().splitlines():
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, p)
