"""Best IoU (exact and voxel) and the evaluation CLI."""
import json

import numpy as np
import pytest

from cad.geometry import best_iou, exact_iou_pair, to_trimesh
from cad.programs import canonicalize, perturb
from cad.sandbox import ExecOptions

GEO = ExecOptions(want_geometry=True)


def box(x, y, z, at=(0, 0, 0), rot=0):
    code = f"import cadquery as cq\nsolid = cq.Workplane('XY').box({x}, {y}, {z}, centered=False).translate({at})"
    if rot:
        code += f".rotate((0, 0, 0), (0, 0, 1), {rot})"
    return code


@pytest.fixture(scope="module")
def shapes(pool):
    codes = {
        "a": box(2, 1, 1),
        "b": box(2, 1, 1, at=(1, 0, 0)),
        "far": box(2, 1, 1, at=(10, 0, 0)),
        "a_moved_scaled_rotated": box(6, 3, 3, at=(5, -3, 2), rot=90),
        "plate": box(3, 3, 0.2),
        "plate_rot": box(3, 3, 0.2, rot=90),
        "cube": box(1, 1, 1),
        "cube_moved": box(1, 1, 1, at=(0.3, 2, -1)),
        "cyl": "import cadquery as cq\nsolid = cq.Workplane('XY').circle(1).extrude(2)",
        "l_shape": "import cadquery as cq\nsolid = cq.Workplane('XY').polyline([(0,0),(3,0),(3,1),(1,1),(1,2),(0,2)]).close().extrude(0.5)",
    }
    results = pool.run_many(list(codes.values()), GEO)
    return {k: r.geometry for k, r in zip(codes, results)}


def test_identical_scores_one(shapes):
    for name in ("a", "plate", "cube", "cyl", "l_shape"):
        assert best_iou(shapes[name], shapes[name]).iou == pytest.approx(1.0, abs=1e-6)


def test_disjoint_scores_zero(shapes):
    a, far = to_trimesh(shapes["a"]), to_trimesh(shapes["far"])
    assert exact_iou_pair(a.vertices, a.faces, far.vertices, far.faces) == pytest.approx(0.0, abs=1e-9)


def test_known_overlap_matches_analytic_value(shapes):
    a, b = to_trimesh(shapes["a"]), to_trimesh(shapes["b"])
    # [0,2]x[0,1]x[0,1] against [1,3]x[0,1]x[0,1]: intersection 1, union 3.
    assert exact_iou_pair(a.vertices, a.faces, b.vertices, b.faces) == pytest.approx(1 / 3, abs=1e-6)


def test_symmetric(shapes):
    for x, y in (("a", "l_shape"), ("plate", "cyl"), ("cube", "l_shape")):
        assert best_iou(shapes[x], shapes[y]).iou == pytest.approx(best_iou(shapes[y], shapes[x]).iou, abs=1e-4)


def test_invariant_to_translation_scale_and_quarter_turns(shapes):
    assert best_iou(shapes["a"], shapes["a_moved_scaled_rotated"]).iou == pytest.approx(1.0, abs=1e-5)
    assert best_iou(shapes["plate"], shapes["plate_rot"]).iou == pytest.approx(1.0, abs=1e-5)
    assert best_iou(shapes["cube"], shapes["cube_moved"]).iou == pytest.approx(1.0, abs=1e-5)


def test_different_shapes_score_below_one(shapes):
    assert best_iou(shapes["a"], shapes["cyl"]).iou < 0.9
    assert best_iou(shapes["plate"], shapes["l_shape"]).iou < 0.9


def test_voxel_backend_agrees_roughly(shapes):
    exact = best_iou(shapes["a"], shapes["l_shape"]).iou
    voxel = best_iou(shapes["a"], shapes["l_shape"], "voxel").iou
    assert abs(exact - voxel) < 0.15
    assert best_iou(shapes["a"], shapes["a"], "voxel").iou == pytest.approx(1.0)


def test_canonical_form_builds_the_same_solid_and_is_shorter(pool, reference_rows):
    originals = [r["cadquery"] for r in reference_rows]
    canon = [canonicalize(c) for c in originals]
    assert sum(map(len, canon)) < 0.8 * sum(map(len, originals))
    res = pool.run_many(originals + canon, GEO)
    n = len(originals)
    for i in range(n):
        assert res[n + i].status == "ok"
        assert best_iou(res[n + i].geometry, res[i].geometry).iou >= 0.99
    assert "e-17" not in "".join(canon)


def test_evaluate_cli_on_perturbed_reference(tmp_path, reference_rows):
    from reward.evaluate import main

    rng = np.random.default_rng(0)
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps(r) + "\n" for r in reference_rows[:4]))
    preds = [{"id": r["deepcad_id"], "code": perturb(r["cadquery"], rng, 0.05)} for r in reference_rows[:3]]
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds))
    out = tmp_path / "report.json"
    assert main(["--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    s = report["summary"]
    assert s["n"] == 4
    assert s["vsr"] == pytest.approx(0.75)  # the fourth id has no prediction
    assert s["errors"]["semantic"]["count"] == 1
    assert 0.5 < s["iou_best"] <= 1.0 and s["n_valid"] == 3
    assert len(report["rows"]) == 4
