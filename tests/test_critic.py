"""The render critic: it learns to rank drawings by overlap, it is a rerank term, and asking for it
without one is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cad.render import render_geometry
from cad.sandbox import ExecOptions
from decoding.predict import DecodeConfig, Predictor
from decoding.rerank import Candidate
from reward.critic import SIZE, RenderCritic, critic_scores, grey, load_critic, save_critic
from reward.score import CRITIC, RenderTarget, compare_render
from scripts.train_critic import fit, predict, top1_iou

BOX = "import cadquery as cq\nsolid = cq.Workplane('XY').box({}, {}, {})\n"


def _drawing(box: tuple[int, int, int, int]) -> np.ndarray:
    img = np.full((SIZE, SIZE), 255, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 120
    return img


def _overlap(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _rectangles(n_images: int, per_image: int, seed: int) -> dict:
    """Targets are rectangles; candidates are moved and resized copies; their 'IoU' is the 2D overlap."""
    rng = np.random.default_rng(seed)
    targets, renders, groups, ious = [], [], [], []
    for g in range(n_images):
        x0, y0 = rng.integers(8, 40, 2)
        box = (x0, y0, x0 + rng.integers(16, 48), y0 + rng.integers(16, 48))
        targets.append(_drawing(box))
        for _ in range(per_image):
            d = rng.integers(-14, 15, 4)
            cand = (box[0] + d[0], box[1] + d[1], max(box[2] + d[2], box[0] + d[0] + 4), max(box[3] + d[3], box[1] + d[1] + 4))
            renders.append(_drawing(tuple(int(v) for v in np.clip(cand, 0, SIZE))))
            ious.append(_overlap(box, np.clip(cand, 0, SIZE)))
            groups.append(g)
    return {"targets": np.stack(targets), "renders": np.stack(renders), "group": np.asarray(groups, np.int32),
            "iou": np.asarray(ious, np.float32)}


def test_critic_learns_to_pick_the_candidate_that_overlaps_its_target_most():
    train, val = _rectangles(96, 8, seed=0), _rectangles(32, 8, seed=1)
    model, history = fit(train, val, epochs=4, lr=3e-3, width=8, seed=0, images_per_step=8)
    picked = top1_iou(predict(model, val), val)
    chance = float(val["iou"].mean())
    best = float(np.mean([val["iou"][val["group"] == g].max() for g in range(32)]))
    assert picked > chance + 0.5 * (best - chance), (picked, chance, best, history)


def test_critic_survives_saving_in_fp16(tmp_path):
    torch.manual_seed(0)
    model = RenderCritic(8).eval()
    save_critic(model, tmp_path / "c.safetensors", {"width": 8})
    again = load_critic(tmp_path / "c.safetensors")
    t, c = _drawing((10, 10, 50, 40)), [_drawing((12, 10, 50, 44)), _drawing((60, 60, 90, 90))]
    assert np.allclose(critic_scores(model, t, c), critic_scores(again, t, c), atol=2e-2)


def test_the_critic_is_a_rerank_term_where_the_target_carries_one(pool):
    result = pool.run(BOX.format(3, 1, 0.2), ExecOptions(want_geometry=True))
    ours = render_geometry(result.geometry)
    image = Image.fromarray(ours)
    assert CRITIC not in compare_render(ours, RenderTarget.of(image))
    torch.manual_seed(0)
    critic = RenderCritic(8).eval()
    terms = compare_render(ours, RenderTarget.of(image, critic))
    assert terms[CRITIC] == pytest.approx(critic_scores(critic, grey(ours), [grey(ours)])[0])

    cfg = DecodeConfig(strategy="rerank", n=2, weights={CRITIC: 1.0})
    with pytest.raises(ValueError, match="critic"):
        Predictor(None, None, None, cfg, pool)  # weighed, but no critic given
    cands = [Candidate(BOX.format(3, 1, 0.2), source="retrieval"), Candidate(BOX.format(1, 1, 1), source="retrieval")]
    chosen, _ = Predictor(None, None, None, cfg, pool, critic=critic).select(cands, image)
    scores = critic_scores(critic, grey(ours), [grey(render_geometry(pool.run(c.code, ExecOptions(want_geometry=True)).geometry))
                                               for c in cands])
    assert chosen.code == cands[int(np.argmax(scores))].code and chosen.scores[CRITIC] == pytest.approx(max(scores), rel=1e-4)
