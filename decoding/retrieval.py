"""Nearest-neighbour retrieval over training images: the programs the model edits, a baseline row
and extra candidates.

An image is embedded as 64 px grayscale "ink" (background 0); ``blur64`` smooths it with a
Gaussian (sigma 1.5 px) first, so that a line one pixel off still overlaps (``pixel64``, the plain
pixels, is kept for comparison: ``scripts/retrieval_quality.py`` measures both). The 4,096 values
are projected on the first ``dims`` principal components of the training embeddings, L2-normalised
and stored as int8 (cosine similarity = dot product / 127^2). Programs are stored in the canonical
form the model reads and writes (``sft.tokenizer.canonical_target``), LZMA-compressed.

The index records the split it was built from; ``build`` refuses a test split. A model folder
saves the index its model was trained with (``saved_index``).
"""
from __future__ import annotations

import json
import lzma
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from cad.data import load_gencad, to_image, undecoded
from img2cad.shipped import INDEX as SHIPPED_INDEX
from sft.image_processing import ImageProcessor
from sft.tokenizer import canonical_target

EMBED = ImageProcessor(size=64, channels=1)
EMBEDDINGS = ("blur64", "pixel64")
FORMAT_VERSION = 2
RUN_INDEX = "retrieval_index.npz"  # beside the weights of an sft / rl run of a retrieval-conditioned model


def saved_index(model_dir: str | Path | None) -> Path | None:
    """The index saved in a model folder: a run's ``retrieval_index.npz`` or a shipped folder's
    ``index.npz``; None when it holds neither."""
    if model_dir is None:
        return None
    return next((Path(model_dir) / n for n in (RUN_INDEX, SHIPPED_INDEX) if (Path(model_dir) / n).exists()), None)


def load_saved_index(model_dir: str | Path) -> "RetrievalIndex":
    """The index saved in a model folder (``saved_index``); an error naming both files when it has none."""
    path = saved_index(model_dir)
    if path is None:
        raise FileNotFoundError(f"{model_dir}: no saved retrieval index ({RUN_INDEX} or {SHIPPED_INDEX})")
    return RetrievalIndex.load(path)


def ink(images) -> np.ndarray:
    """(B, 64, 64) float32 ink (background 0) of PIL images (or anything ``cad.data.to_image`` reads)."""
    x = np.stack([EMBED.to_array(to_image(im))[0] for im in images]).astype(np.float32)
    return (255.0 - x) / 255.0


def features(ink_images: np.ndarray, embedding: str = "blur64") -> np.ndarray:
    """(B, 4096) float32 features of ink images under one of ``EMBEDDINGS``."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}; choose from {EMBEDDINGS}")
    x = ink_images
    if embedding == "blur64":
        x = gaussian_filter(x, sigma=(0, 1.5, 1.5), mode="constant")
    return x.reshape(len(x), -1)


def raw_features(images, embedding: str = "blur64") -> np.ndarray:
    """(B, 4096) float32 features of images under one of ``EMBEDDINGS``."""
    return features(ink(images), embedding)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def embed(images, embedding: str = "pixel64") -> np.ndarray:
    """Unit-norm features of images, without projection (the reranker's pixel term)."""
    return _unit(raw_features(images, embedding))


def _pack_strings(items: list[str]) -> np.ndarray:
    return np.frombuffer(lzma.compress("\0".join(items).encode(), preset=9 | lzma.PRESET_EXTREME), dtype=np.uint8)


def _unpack_strings(blob: np.ndarray, n: int) -> list[str]:
    items = lzma.decompress(blob.tobytes()).decode().split("\0") if n else []
    if len(items) != n:
        raise ValueError(f"retrieval index: {len(items)} strings stored for {n} rows")
    return items


@dataclass
class RetrievalIndex:
    vectors: np.ndarray  # (N, dims) int8, unit vectors x 127
    programs: list[str]  # canonical programs
    ids: list[str]
    mean: np.ndarray  # (4096,) float32: PCA centre
    components: np.ndarray  # (4096, dims) float32: PCA basis
    embedding: str = "blur64"
    meta: dict = field(default_factory=dict)  # source, split, n

    # ---- building ------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows, embedding: str = "blur64", dims: int = 128, meta: dict | None = None,
                  progress: bool = True) -> "RetrievalIndex":
        """Index ``rows`` (a datasets.Dataset or list of dicts with ``image``, ``cadquery``, ``deepcad_id``)."""
        images, codes, ids = read_rows(rows, progress)
        return cls.from_features(features(images, embedding), codes, ids, embedding, dims, meta)

    @classmethod
    def from_features(cls, feats: np.ndarray, codes: list[str], ids: list[str], embedding: str, dims: int = 128,
                      meta: dict | None = None) -> "RetrievalIndex":
        mean, comps = _pca(feats, dims)
        index = cls(np.zeros((0, comps.shape[1]), np.int8), [canonical_target(c) for c in codes], [str(i) for i in ids],
                    mean, comps, embedding, {**(meta or {}), "n": len(codes), "dims": int(comps.shape[1])})
        index.vectors = index._quantise(feats)
        return index

    @classmethod
    def build(cls, source: str | Path, split: str | None = None, limit: int | None = None,
              embedding: str = "blur64", dims: int = 128) -> "RetrievalIndex":
        """Index a training (or validation) split; a test split is refused."""
        ds = load_gencad(source, split=split, limit=limit, allow_test=False)
        return cls.from_rows(ds, embedding, dims, {"source": str(source), "split": split})

    def _project(self, feats: np.ndarray) -> np.ndarray:
        return _unit((feats - self.mean) @ self.components)

    def _quantise(self, feats: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(self._project(feats) * 127), -127, 127).astype(np.int8)

    # ---- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        meta = {**self.meta, "embedding": self.embedding, "format": FORMAT_VERSION}
        with open(path, "wb") as f:
            np.savez(f, vectors=self.vectors, mean=self.mean.astype(np.float16), components=self.components.astype(np.float16),
                     programs=_pack_strings(self.programs), ids=_pack_strings(self.ids),
                     meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path: str | Path) -> "RetrievalIndex":
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z:
                raise ValueError(f"{path}: not a retrieval index of this version; rebuild it with --retrieval-data")
            meta = json.loads(z["meta"].tobytes())
            n = len(z["vectors"])
            return cls(z["vectors"], _unpack_strings(z["programs"], n), _unpack_strings(z["ids"], n),
                       z["mean"].astype(np.float32), z["components"].astype(np.float32), meta.pop("embedding"), meta)

    # ---- queries ---------------------------------------------------------------------------
    def embed(self, images) -> np.ndarray:
        """Unit query vectors (float32) of images."""
        return self._project(raw_features(images, self.embedding))

    def unit_vectors(self) -> np.ndarray:
        """The rows' vectors as float32 (``vectors`` / 127), converted once per ``vectors`` array."""
        if getattr(self, "_unit_of", None) is not self.vectors:
            self._unit, self._unit_of = self.vectors.astype(np.float32) / 127.0, self.vectors
        return self._unit

    def search(self, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None,
               chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
        """(indices, similarities) of the ``k`` most similar rows for each unit query vector,
        best first; ``exclude[i]`` removes rows from query i's answers (-1 / -inf pad a short row)."""
        base = self.unit_vectors()
        k_eff = min(k + (max(len(e) for e in exclude) if exclude else 0), len(base))
        idx = np.full((len(queries), k), -1, np.int64)
        sim = np.full((len(queries), k), -np.inf, np.float32)
        for lo in range(0, len(queries), chunk):
            s = queries[lo:lo + chunk] @ base.T
            top = np.argpartition(-s, k_eff - 1, axis=1)[:, :k_eff] if k_eff < len(base) else np.tile(np.arange(len(base)), (len(s), 1))
            for r in range(len(s)):
                order = top[r][np.argsort(-s[r, top[r]], kind="stable")]
                if exclude:
                    order = [j for j in order if j not in exclude[lo + r]]
                order = order[:k]
                idx[lo + r, :len(order)] = order
                sim[lo + r, :len(order)] = s[r, order]
        return idx, sim

    def exclusions(self, ids: list[str], programs: list[str | None] | None = None) -> list[set[int]]:
        """For each query id: the index's own row of that id and every row with the same canonical
        program (its own, or ``programs[i]`` when given), so that a training image never retrieves
        itself or a copy of its program; an empty set for an id the index does not hold."""
        if not hasattr(self, "_rows_by_program"):
            self._row_of = {rid: i for i, rid in enumerate(self.ids)}
            self._rows_by_program: dict[str, set[int]] = {}
            for i, p in enumerate(self.programs):
                self._rows_by_program.setdefault(p, set()).add(i)
        out = []
        for i, rid in enumerate(ids):
            row = self._row_of.get(str(rid))
            given = programs[i] if programs is not None else None
            own = canonical_target(given) if given else (self.programs[row] if row is not None else None)
            out.append(({row} if row is not None else set()) | self._rows_by_program.get(own, set()))
        return out

    def query(self, images, k: int = 1, exclude_ids: list[str] | None = None) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest (program, cosine similarity) pairs of each image, best first; with
        ``exclude_ids`` (one per image), never the image's own row or a copy of its program."""
        idx, sim = self.search(self.embed(images), k, self.exclusions(exclude_ids) if exclude_ids is not None else None)
        return [[(self.programs[j], float(s)) for j, s in zip(row, srow) if j >= 0] for row, srow in zip(idx, sim)]

    def training_neighbours(self, k: int) -> np.ndarray:
        """(N, k) nearest rows of every indexed row among the others, excluding itself and every
        row with the same canonical program (so that a model trained on them learns to edit)."""
        return self.search(self.unit_vectors(), k, self.exclusions(self.ids))[0]


def read_rows(rows, progress: bool = True, batch: int = 512) -> tuple[np.ndarray, list[str], list[str]]:
    """(ink images, programs, ids) of GenCAD-schema rows (a datasets.Dataset or a list of dicts)."""
    rows = undecoded(rows) if hasattr(rows, "cast_column") else rows
    n = len(rows)
    out = np.zeros((n, EMBED.size, EMBED.size), np.float32)
    for start in tqdm(range(0, n, batch), desc="read images", unit="batch", leave=False, disable=not progress):
        chunk = rows[start:start + batch]
        images = chunk["image"] if isinstance(chunk, dict) else [r["image"] for r in chunk]
        out[start:start + len(images)] = ink(images)
    codes = list(rows["cadquery"]) if hasattr(rows, "column_names") else [r["cadquery"] for r in rows]
    ids = list(rows["deepcad_id"]) if hasattr(rows, "column_names") else [r["deepcad_id"] for r in rows]
    return out, codes, [str(i) for i in ids]


def _pca(feats: np.ndarray, dims: int, sample: int = 12_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the first ``dims`` principal directions, from at most ``sample`` rows (seeded)."""
    rng = np.random.default_rng(seed)
    x = feats[rng.choice(len(feats), sample, replace=False)] if len(feats) > sample else feats
    mean = x.mean(0)
    cov = np.cov((x - mean).T.astype(np.float64)) if len(x) > 1 else np.eye(x.shape[1])
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:min(dims, x.shape[1])]
    return mean.astype(np.float32), vecs[:, order].astype(np.float32)
