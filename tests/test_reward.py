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


def test_reranker_and_pair_reward_are_one_sum(pool):
    from decoding.rerank import Candidate, combined_score

    target = pool.run(BOX.format(3, 1, 0.2), ExecOptions(want_geometry=True))
    image = Image.fromarray(render_geometry(target.geometry))
    w = {"logprob": 0.5, "sanity": 0.2, "silhouette": 1.0, "edges": 0.3, "pixel": 0.1}
    codes = [BOX.format(3, 1, 0.2), BOX.format(1, 1, 1), BOX.format(2.5, 1, 0.3)]
    cands = [Candidate(c, logprob=-4.0 - i, tokens=8, result=pool.run(c, ExecOptions(want_geometry=True))) for i, c in enumerate(codes)]
    totals = [combined_score(c, image, w) for c in cands]
    lps = [(-4.0 - i, 8) for i in range(len(codes))]
    no_exec = {"executed": 0.0, "grammatical": 0.0}
    rewards = score(codes, pool, image=image, weights={**w, **no_exec}, logprobs=lps)
    assert [r.total for r in rewards] == pytest.approx(totals)
    # preference pairs: the same sum with the ground-truth IoU term added
    with_gt = score(codes, pool, reference=BOX.format(3, 1, 0.2), image=image, weights={**w, **no_exec, "iou": 5.0}, logprobs=lps)
    assert [r.total - 5.0 * r.iou for r in with_gt] == pytest.approx(totals)
    assert with_gt[0].iou == pytest.approx(1.0, abs=1e-6) and with_gt[0].total == max(r.total for r in with_gt)


def test_sanity_counts_a_malformed_extrude_number_as_a_failed_check():
    from reward.score import sanity

    good = "import cadquery as cq\nwp_sketch0=cq.Workplane('XY')\nloop0=wp_sketch0.moveTo(1,0).circle(1)\nsolid0=wp_sketch0.add(loop0).extrude(0.5)\nsolid=solid0\n"
    assert sanity(good) == 1.0
    assert sanity(good.replace("extrude(0.5)", "extrude(6-1.59765625)")) == pytest.approx(2 / 3)


def test_edge_distance_falls_with_the_gap_between_two_drawings_and_coarse_edges_forgive_a_pixel():
    import numpy as np

    from reward.score import _coarse, edge_distance, mask_iou

    def line(x: int) -> np.ndarray:
        m = np.zeros((64, 64), dtype=bool)
        m[8:56, x] = True
        return m

    assert edge_distance(line(10), line(10)) == 1.0
    assert edge_distance(line(10), line(12)) == pytest.approx(1 - 2 / 4)  # 2 px apart, width / 16 = 4 px
    assert edge_distance(line(10), line(11)) > edge_distance(line(10), line(12)) > edge_distance(line(10), line(30)) == 0.0
    assert edge_distance(line(10), np.zeros((64, 64), dtype=bool)) == 0.0
    assert mask_iou(line(10), line(11)) == 0.0 and mask_iou(_coarse(line(10)), _coarse(line(11))) == 1.0


def test_render_terms_prefer_the_nearer_of_two_wrong_parts(pool):
    from reward.score import RenderTarget, render_compare

    target = pool.run(BOX.format(3, 1, 0.2), ExecOptions(want_geometry=True))
    image = Image.fromarray(render_geometry(target.geometry))
    near, far = (pool.run(BOX.format(3, 1, h), ExecOptions(want_geometry=True)) for h in (0.3, 0.8))
    a, b, same = render_compare(near, image), render_compare(far, image), render_compare(target, image)
    assert same["edge_distance"] == 1.0 and same["edges_coarse"] == 1.0
    assert 1.0 > a["edge_distance"] > b["edge_distance"]
    assert a["edges_coarse"] > b["edges_coarse"]
    # the input's side prepared once (RenderTarget) still gives each term its full value on the same part
    assert render_compare(target, RenderTarget.of(image)) == same
    assert same["silhouette"] == same["edges"] == 1.0 and same["pixel"] == pytest.approx(1.0)
    # only the terms asked for are computed, each with the value it has among all of them
    assert render_compare(near, image, ("silhouette", "edge_distance")) == {t: a[t] for t in ("silhouette", "edge_distance")}


def test_the_k_d_tree_line_distance_is_the_distance_transforms_to_the_last_bit():
    """edge_distance's k-d tree gives exactly the numbers of the Euclidean distance transform it
    replaced (so reranking and every fit choose as before)."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    from reward.score import _mean_distance

    rng = np.random.default_rng(0)
    for density in (0.001, 0.02, 0.2):
        a, b = rng.random((2, 96, 128)) < density
        a[5, 7] = b[90, 120] = True
        assert _mean_distance(a, b) == distance_transform_edt(~b)[a].mean()
        assert _mean_distance(b, a) == distance_transform_edt(~a)[b].mean()
