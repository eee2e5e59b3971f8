"""Nearest-neighbour retrieval over training images: a baseline row and a source of candidates.

Images are embedded as plain pixels: 64 px grayscale ink (background 0), L2-normalised; the
program of the most similar training image (cosine) is the prediction, and the k nearest join
the sampled candidates of best-of-N before reranking.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cad.data import load_gencad, to_image
from sft.image_processing import ImageProcessor

EMBED = ImageProcessor(size=64, channels=1)


def embed(images) -> np.ndarray:
    x = np.stack([EMBED.to_array(to_image(im)) for im in images]).reshape(len(images), -1).astype(np.float32)
    x = (255.0 - x) / 255.0
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


@dataclass
class RetrievalIndex:
    vectors: np.ndarray
    programs: list[str]
    ids: list[str]

    @classmethod
    def build(cls, source: str | Path, split: str | None = None, limit: int | None = None) -> "RetrievalIndex":
        ds = load_gencad(source, split=split, limit=limit)
        vecs = []
        for start in tqdm(range(0, len(ds), 512), desc="index", unit="batch", leave=False):
            vecs.append(embed(ds[start:start + 512]["image"]))
        return cls(np.concatenate(vecs) if vecs else np.zeros((0, 64 * 64), np.float32), list(ds["cadquery"]), list(ds["deepcad_id"]))

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, vectors=self.vectors, programs=np.array(self.programs, dtype=object), ids=np.array(self.ids, dtype=object))

    @classmethod
    def load(cls, path: str | Path) -> "RetrievalIndex":
        z = np.load(path, allow_pickle=True)  # our own index file, written by save()
        return cls(z["vectors"], list(z["programs"]), list(z["ids"]))

    def query(self, images, k: int = 1) -> list[list[tuple[str, float]]]:
        sims = embed(images) @ self.vectors.T
        top = np.argsort(-sims, axis=1)[:, :k]
        return [[(self.programs[j], float(sims[i, j])) for j in row] for i, row in enumerate(top)]
