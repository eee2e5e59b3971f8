"""One image in, one program out: decoding (``decoding.predict.Predictor``), the chosen program
executed in the sandbox with STEP and STL export, rendered in the input's style and compared.

Sampling is seeded from the decoding seed and the normalised image's pixels, so the same image
and options give the same program whatever the file name or the order of the images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import decoding.predict
from cad.render import render_geometry, silhouette_iou
from cad.sandbox import ExecOptions, ExecResult, SandboxPool
from decoding.predict import DecodeConfig, Predictor
from decoding.rerank import Candidate
from img2cad.images import NORMALISE_VERSION
from img2cad.shipped import Shipped

EXPORT_TIMEOUT = 30.0  # seconds for the chosen program's final run: tessellation and STEP / STL export on top


# ``--thorough``: the slower setting chosen on validation images for the shipped model (16
# retrieved programs, 48 refinement renders: docs/results/refine_study-val-k16.json; primitives and
# prisms: docs/results/prism-bosses-val-real10.json), as decode_config arguments.
THOROUGH = {"strategy": "rerank", "k": 16, "refine": 48, "primitives": True}


def decode_config(shipped: Shipped, strategy: str | None = None, n: int | None = None, refine: int | None = None,
                  device: str = "cpu", k: int | None = None, primitives: bool | None = None,
                  prisms: bool | None = None) -> DecodeConfig:
    """The model folder's default decoding options with the user's choices on top. The folder's
    prism candidates (``prisms``) belong to rerank: another strategy leaves them out."""
    known = {f.name for f in dataclasses.fields(DecodeConfig)}
    options = {k: v for k, v in shipped.decoding.items() if k in known}
    if strategy is not None:
        options["strategy"] = strategy
    if n is not None:
        options["n"] = n
    if refine is not None:  # renders spent refining the chosen program (decoding.refine); 0: none
        options["refine_evaluations"] = refine
    if k is not None:  # retrieved training programs added to the candidates
        options["k_retrieval"] = k
    if primitives is not None:  # rerank: primitives and prisms fit to the image as candidates too
        options["primitives"] = primitives
    if prisms is not None:  # rerank: the three best caps' prisms and the union of two as candidates too
        options["prisms"] = prisms
    elif options.get("strategy") != "rerank":
        options["prisms"] = False
    options["device"] = device
    return DecodeConfig(**options)


def _finite(x: float) -> float | None:
    return round(float(x), 4) if x is not None and math.isfinite(x) else None


def candidate_row(c: Candidate) -> dict:
    r = c.result
    return {"source": c.source, "logprob": _finite(c.logprob), "tokens": c.tokens,
            "status": r.status if r is not None else "not executed", "executable": bool(r and r.executable),
            "scores": {k: _finite(v) for k, v in c.scores.items()}, "total": _finite(c.total), "code": c.code}


@dataclass
class Prediction:
    image: Image.Image  # the normalised input
    chosen: Candidate
    candidates: list[Candidate]
    info: dict
    result: ExecResult  # the chosen program, executed with geometry and exports
    render: np.ndarray | None
    seconds: float
    options: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def iou(self) -> float | None:
        """Silhouette IoU between the input and our render of the program."""
        return None if self.render is None else silhouette_iou(np.asarray(self.image), self.render)

    def compare_image(self) -> Image.Image:
        """The input beside our render (blank with the status where nothing executed), labelled."""
        size = self.image.size[0]
        ours = Image.fromarray(self.render) if self.render is not None else Image.new("RGB", (size, size), "white")
        out = Image.new("RGB", (2 * size + 8, size + 32), "white")
        out.paste(self.image, (0, 32))
        out.paste(ours, (size + 8, 32))
        draw = ImageDraw.Draw(out)
        font = ImageFont.load_default(size=18)
        draw.text((8, 6), "input", fill="black", font=font)
        right = (f"prediction ({self.chosen.source}), silhouette IoU {self.iou:.3f}" if self.render is not None
                 else f"prediction: {self.status}, nothing to render")
        draw.text((size + 16, 6), right, fill="black", font=font)
        return out

    def to_json(self) -> dict:
        chosen = self.candidates.index(self.chosen) if self.chosen in self.candidates else None
        return {"status": self.status, "executable": self.result.executable, "error": self.result.error,
                "silhouette_iou": _finite(self.iou) if self.iou is not None else None,
                "seconds": round(self.seconds, 3), "chosen": {**candidate_row(self.chosen), "index": chosen,
                                                              "status": self.status, "executable": self.result.executable},
                "volume": self.result.volume, "bbox": self.result.bbox, "decoding": self.info, "options": self.options,
                "candidates": [candidate_row(c) for c in self.candidates]}


class Engine:
    """A loaded model folder, its sandbox pool and a ``Predictor`` for one decoding config (and, given
    ``thorough``, a second one that ``predict(image, thorough=True)`` uses: the web app's choice)."""

    def __init__(self, shipped: Shipped, cfg: DecodeConfig, workers: int = 2, thorough: DecodeConfig | None = None):
        self.shipped, self.cfg, self.thorough = shipped, cfg, thorough
        self.pool = SandboxPool(workers)
        try:
            self.predictors = {t: Predictor(shipped.model, shipped.tokenizer, shipped.processor, c, self.pool, shipped.index,
                                            critic=shipped.critic) for t, c in ((False, cfg), (True, thorough)) if c is not None}
        except Exception:
            self.pool.close()
            raise

    def options_for(self, cfg: DecodeConfig) -> dict:
        """What decides the output: the model's files, the decoding config and the versions of the
        decoding code and of the input normalisation (``img2cad.images``)."""
        return {"model": self.shipped.name, "model_fingerprint": self.shipped.fingerprint, "decoding": dataclasses.asdict(cfg),
                "decoding_version": decoding.predict.DECODING_VERSION, "normalise_version": NORMALISE_VERSION}

    @property
    def options(self) -> dict:
        return self.options_for(self.cfg)

    def predict(self, image: Image.Image, thorough: bool = False) -> Prediction:
        import torch

        if thorough and self.thorough is None:
            raise ValueError("this engine has no thorough decoding config")
        cfg = self.thorough if thorough else self.cfg
        predictor = self.predictors[thorough]
        t0 = time.perf_counter()
        pixels = np.asarray(image.convert("RGB"))
        torch.manual_seed(cfg.seed + zlib.crc32(hashlib.sha256(pixels.tobytes()).digest()))
        cands = predictor.generate([image])[0]
        chosen, info = predictor.select(cands, image)
        opts = ExecOptions(timeout=max(cfg.timeout, EXPORT_TIMEOUT), want_geometry=True, export=("step", "stl"))
        result = self.pool.run(chosen.code, opts)
        frame = chosen.frame if chosen.scores.get("framed") else None  # a fit of part of the picture: drawn where it shows it
        render = render_geometry(result.geometry, frame=frame) if result.ok and result.geometry is not None else None
        return Prediction(image, chosen, cands, info, result, render, time.perf_counter() - t0, self.options_for(cfg))

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
