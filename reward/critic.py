"""A learned render critic: how close is a candidate's render to the input image, as 3D IoU would say.

The render terms of ``reward.score`` compare two drawings by hand-made measures (silhouette IoU,
edge distance, pixel embedding). ``RenderCritic`` is a small CNN that reads both drawings (the
input image and the candidate rendered in its style, grey, ``SIZE`` px) and their difference, and
returns one number per candidate. It is trained (``scripts/train_critic.py``) on training images
and their retrieved programs with a listwise loss: within one image, the softmax of its scores
should match the softmax of the candidates' true Best IoU. The reranker uses it as the ``critic``
term, weighed like the others.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

SIZE = 96  # the critic's input side in pixels
FILE = "critic.safetensors"  # its file in a model folder


def grey(pixels: np.ndarray, size: int = SIZE) -> np.ndarray:
    """An (H, W, 3) uint8 drawing as (size, size) uint8 grey, downsampled with area averaging."""
    return np.asarray(Image.fromarray(np.asarray(pixels, np.uint8)).convert("L").resize((size, size), Image.BOX))


class RenderCritic(nn.Module):
    """(input, candidate) grey drawings -> a score that ranks candidates by their true IoU."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        layers, c_in = [], 3
        for c_out in (w, w, 2 * w, 2 * w, 4 * w):  # 96 -> 48 -> 24 -> 12 -> 6 -> 3
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.GELU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in * 9, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, target: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """``target``, ``candidate``: (B, H, W) uint8 or float in [0, 255]; returns (B,) scores."""
        t = 1.0 - target.float() / 255.0  # ink is 1, paper 0
        c = 1.0 - candidate.float() / 255.0
        x = torch.stack([t, c, t - c], dim=1)
        return self.head(self.features(x).flatten(1)).squeeze(1)


def listwise_loss(scores: torch.Tensor, ious: torch.Tensor, groups: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Mean over images of the cross-entropy between softmax(ious / temperature) and softmax(scores)
    among each image's candidates (``groups`` numbers the image of each candidate)."""
    losses = []
    for g in torch.unique(groups):
        m = groups == g
        if int(m.sum()) < 2:
            continue
        target = torch.softmax(ious[m] / temperature, 0)
        losses.append(-(target * torch.log_softmax(scores[m], 0)).sum())
    return torch.stack(losses).mean() if losses else scores.sum() * 0.0


def save_critic(model: RenderCritic, path: str | Path, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in (meta or {}).items()})


def load_critic(path: str | Path) -> RenderCritic:
    """A critic saved by ``save_critic`` (fp16 on disk), in float32 eval mode on the CPU."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        width = int((f.metadata() or {}).get("width", 32))
    model = RenderCritic(width)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()


def saved_critic(model_dir: str | Path | None) -> RenderCritic | None:
    """The critic saved in a model folder (``FILE``), or None when it has none."""
    path = Path(model_dir) / FILE if model_dir else None
    return load_critic(path) if path is not None and path.exists() else None


@torch.no_grad()
def critic_scores(model: RenderCritic, target: np.ndarray, candidates: list[np.ndarray]) -> list[float]:
    """Scores of candidate grey drawings against one input grey drawing (all ``SIZE`` px)."""
    if not candidates:
        return []
    c = torch.from_numpy(np.stack(candidates))
    t = torch.from_numpy(np.array(target))[None].expand_as(c)
    return model(t, c).tolist()
