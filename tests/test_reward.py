"""The reward: execution, grammar and IoU, with and without ground truth."""
import pytest
from PIL import Image

from cad.render import render_geometry
from cad.sandbox import ExecOptions
from reward.score import score

BOX = "import cadquery as cq\nsolid = cq.Workplane('XY').box({}, {}, {})\n"


def test_reward_orders_candidates_by_quality(pool):
    cands = [BOX.format(2, 1, 1), BOX.format(2, 1, 0.5), "import cadquery as cq\nsolid = cq.Workplane(\n", "solid = 1\n"]
    rewards = score(cands, pool, reference=BOX.format(2, 1, 1))
    assert rewards[0].iou == pytest.approx(1.0, abs=1e-6) and rewards[0].executed and rewards[0].grammatical
    assert rewards[0].total > rewards[1].total > rewards[2].total
    assert not rewards[2].grammatical and not rewards[2].executed
    cadrl = score(cands, pool, reference=BOX.format(2, 1, 1), shape="cadrl")
    assert cadrl[0].total == pytest.approx(10.0, abs=1e-5) and cadrl[2].total == -10.0


def test_reward_without_ground_truth_uses_the_image(pool):
    target = pool.run(BOX.format(3, 1, 0.2), ExecOptions(want_geometry=True))
    image = Image.fromarray(render_geometry(target.geometry))
    rewards = score([BOX.format(3, 1, 0.2), BOX.format(1, 1, 1)], pool, image=image)
    assert rewards[0].iou > 0.95 > rewards[1].iou
    with pytest.raises(ValueError, match="reference program or the input image"):
        score([BOX.format(1, 1, 1)], pool)
