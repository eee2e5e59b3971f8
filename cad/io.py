"""JSONL input and output that names the bad line, never loses an id and never serves a stale row.

Resumable outputs carry, per row, ``_fp``: a fingerprint of the options and of the input row that
produced it (``fingerprint``). A rerun keeps a row only when its fingerprint is the one the
current options and input would give (``done_rows``), so changed inputs or options are recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

FP_KEY = "_fp"


class InputError(ValueError):
    """A user-supplied file or option is unusable; the message says which and what to do."""


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


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts; ``bytes`` parts are hashed as they are."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            h.update(b"b:" + bytes(part))
        else:
            h.update(b"j:" + json.dumps(part, sort_keys=True, default=str).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def files_fingerprint(*paths: str | os.PathLike | None) -> str:
    """A fingerprint of files or folders by name, size and modification time (a retrained model
    or a rebuilt dataset at the same path gets a new one); a missing path counts as missing."""
    entries = []
    for path in paths:
        if path is None:
            entries.append(None)
            continue
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.is_file() else []
        entries.append([str(p), [[str(f.relative_to(p) if p.is_dir() else f.name), f.stat().st_size,
                                  f.stat().st_mtime_ns] for f in files]])
    return fingerprint(*entries)


def _jsonl_rows(path: Path) -> Iterator[dict]:
    """Rows of a resumable output; a line cut short by an interruption is skipped."""
    if not path.is_file():
        return
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "id" in row:
                yield row


def done_rows(paths: Iterable[str | os.PathLike], fingerprints: Mapping[str, str]) -> dict[str, dict]:
    """Rows of earlier (possibly interrupted) runs that are still valid: the id is wanted and the
    row's ``_fp`` equals ``fingerprints[id]``. Later files and later lines win."""
    done: dict[str, dict] = {}
    for path in paths:
        for row in _jsonl_rows(Path(path)):
            pid = str(row["id"])
            if pid in fingerprints and row.get(FP_KEY) == fingerprints[pid]:
                done[pid] = row
    return done


def done_ids(path: str | os.PathLike, fingerprints: Mapping[str, str] | None = None) -> set[str]:
    """Ids already written to a resumable JSONL output; with ``fingerprints``, only those whose
    row was made from the same input and options (see ``done_rows``)."""
    if fingerprints is not None:
        return set(done_rows([path], fingerprints))
    return {str(row["id"]) for row in _jsonl_rows(Path(path))}


def prune_stale(path: str | os.PathLike, fingerprints: Mapping[str, str]) -> int:
    """Remove from a resumable JSONL output the rows of ids in ``fingerprints`` made from another
    input or options (their ``_fp`` differs), and lines cut short by an interruption; rows of other
    ids stay. Returns the number of lines removed (the file is rewritten only when there are some)."""
    p = Path(path)
    if not p.is_file():
        return 0
    kept, dropped = [], 0
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += bool(line.strip())
            continue
        if not isinstance(row, dict) or "id" not in row or (
                str(row["id"]) in fingerprints and row.get(FP_KEY) != fingerprints[str(row["id"])]):
            dropped += 1
            continue
        kept.append(row)
    if dropped:
        write_jsonl_atomic(p, kept)
    return dropped


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Refuse an output file that is one of the inputs (after resolving links) or a folder, before
    any work; create its folder. Returns the path."""
    p = Path(out)
    for src in inputs:
        if src is not None and (_same_path(p, Path(src)) or p.resolve() == Path(src).resolve()):
            raise InputError(f"--out {out} is the input {src}: writing it would destroy the input; "
                             "choose another output file")
    if p.is_dir():
        raise InputError(f"--out {out} is a folder; pass a file path such as {p / 'out.jsonl'}")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def check_output_dir(out: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Refuse an output folder that is an existing file or one of the inputs; create it."""
    p = Path(out)
    for src in inputs:
        if src is not None and (_same_path(p, Path(src)) or p.resolve() == Path(src).resolve()):
            raise InputError(f"--out {out} is the input {src}; choose another output folder")
    if p.exists() and not p.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder (it is created when missing)")
    p.mkdir(parents=True, exist_ok=True)
    return p


def require_model_dir(path: str | os.PathLike | None, what: str = "--model") -> str:
    """The path of a model folder written by ``python -m sft`` or ``python -m rl.dpo``, or an
    ``InputError`` saying what is wrong with it."""
    if not path:
        raise InputError(f"{what} is required: pass a model folder written by python -m sft (…/final)")
    p = Path(path)
    if not p.is_dir():
        raise InputError(f"{what} {path}: no such folder; pass a model folder written by python -m sft "
                         "or python -m rl.dpo (for example outputs/sft/final)")
    if not (p / "config.json").is_file():
        raise InputError(f"{what} {path}: not a model folder (no config.json); pass the final/ folder "
                         "written by python -m sft or python -m rl.dpo")
    return str(path)


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write all rows to ``path`` at once: a reader sees the old file or the new one, and an
    interruption leaves no temporary file behind."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
