"""A shipped model folder (``models/<name>/``, written by ``scripts/export_model.py``): checked, loaded.

The folder holds the model (fp16 safetensors + config), its tokenizer, its image processor
config, the retrieval index (``index.npz``), the default decoding options (``decoding.json``), the
render critic the reranker may weigh (``critic.safetensors``, optional),
``MODEL_CARD.md`` and ``manifest.json``: the sha256 and size of every other file. ``verify``
checks every listed file before anything is loaded and says which one is missing or corrupt.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from cad.io import InputError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "img2cad-small"
MANIFEST = "manifest.json"
INDEX = "index.npz"
DECODING = "decoding.json"
CARD = "MODEL_CARD.md"
MANIFEST_FORMAT = 1
GET_ONE = ("python scripts/export_model.py --model TRAINED_MODEL_DIR --index INDEX.npz "
           "(see README, 'Use it'), or pass --model DIR")


class ShippedModelError(InputError):
    """The model folder cannot be used; the message names the file and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path, name: str) -> dict:
    """List every file of ``folder`` (but the manifest) with its sha256 and size."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"format": MANIFEST_FORMAT, "name": name,
                "files": {p.relative_to(folder).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify(folder: str | Path) -> dict:
    """The manifest, once every file it lists is present with its hash; else ShippedModelError."""
    folder = Path(folder)
    restore = f"restore it (git checkout -- {folder}) or export the model again ({GET_ONE.split(' (')[0]})"
    if not folder.is_dir():
        raise ShippedModelError(f"no model at {folder}: get one with {GET_ONE}")
    path = folder / MANIFEST
    if not path.is_file():
        raise ShippedModelError(f"{folder}: no {MANIFEST}, so not a folder written by scripts/export_model.py; export it with {GET_ONE}")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ShippedModelError(f"{path}: unreadable manifest ({type(exc).__name__}); {restore}") from exc
    for rel, entry in files.items():
        p = folder / rel
        if not p.is_file():
            raise ShippedModelError(f"{p} is missing (listed in {MANIFEST}); {restore}")
        if p.stat().st_size != entry["bytes"] or sha256(p) != entry["sha256"]:
            raise ShippedModelError(f"{p} is corrupt (its sha256 differs from {MANIFEST}); {restore}")
    return manifest


@dataclass
class Shipped:
    """A verified, loaded model folder."""

    path: Path
    manifest: dict
    model: object
    tokenizer: object
    processor: object
    index: object | None  # decoding.retrieval.RetrievalIndex
    decoding: dict = field(default_factory=dict)  # DecodeConfig fields
    critic: object | None = None  # reward.critic.RenderCritic, where the folder has one

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.path.name)

    @property
    def fingerprint(self) -> str:
        """A hash of the manifest: same fingerprint, same files."""
        return hashlib.sha256(json.dumps(self.manifest["files"], sort_keys=True).encode()).hexdigest()[:16]


def load_index(path: str | Path):
    """A retrieval index file, or ShippedModelError saying why it cannot be read."""
    from decoding.retrieval import RetrievalIndex

    p = Path(path)
    if not p.is_file():
        raise ShippedModelError(f"{p}: no such retrieval index file; pass an index written by decoding.retrieval")
    try:
        return RetrievalIndex.load(p)
    except (ValueError, OSError, KeyError) as exc:
        raise ShippedModelError(f"{p}: not a readable retrieval index ({exc}); rebuild it") from exc


def load_shipped(folder: str | Path = DEFAULT_MODEL, device: str = "cpu", index: str | Path | None = None) -> Shipped:
    """Verify and load a model folder (weights in float32); ``index`` replaces its retrieval index."""
    from transformers.utils import logging as hf_logging

    from reward.critic import saved_critic
    from sft.model import load_model

    folder = Path(folder)
    manifest = verify(folder)
    hf_logging.disable_progress_bar()  # one line per image on the terminal, no loading bars
    model, tokenizer, processor = load_model(str(folder), device)
    model = model.float()  # shipped in fp16; computed in float32 (CPU kernels; T5 overflows in fp16)
    index_path = Path(index) if index is not None else folder / INDEX
    idx = load_index(index_path) if index is not None or index_path.is_file() else None
    decoding = json.loads((folder / DECODING).read_text()) if (folder / DECODING).is_file() else {}
    return Shipped(folder, manifest, model, tokenizer, processor, idx, decoding, saved_critic(folder))
