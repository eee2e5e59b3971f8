"""Best IoU (exact and voxel) and the evaluation CLI."""
import json

import numpy as np
import pytest

from cad.geometry import best_iou, exact_iou_pair, to_trimesh
from cad.programs import bounding_size, canonicalize, normalize_scale, perturb, structure
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
        "z_shape": "import cadquery as cq\nsolid = cq.Workplane('XY').polyline([(0,0),(2,0),(2,1),(3,1),(3,2),(1,2),(1,1),(0,1)]).close().extrude(0.5)",
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


def test_normalized_scale_builds_the_same_part_at_the_asked_size(pool, reference_rows):
    originals = [r["cadquery"] for r in reference_rows]
    scaled = [normalize_scale(c, 1.5) for c in originals]
    res = pool.run_many(originals + scaled, GEO)
    n = len(originals)
    for i in range(n):
        v = res[i].geometry.vertices
        assert bounding_size(originals[i]) == pytest.approx(float((v.max(0) - v.min(0)).max()), rel=2e-3)  # read from the text
        w = res[n + i].geometry.vertices
        assert float((w.max(0) - w.min(0)).max()) == pytest.approx(1.5, rel=2e-3)
        assert best_iou(res[n + i].geometry, res[i].geometry).iou >= 0.99  # the same part, only larger or smaller
    assert normalize_scale("result = cq.Workplane().box(1, 2, 3)") == "result = cq.Workplane().box(1, 2, 3)"  # not GenCAD's shape


def test_evaluate_cli_on_perturbed_reference(tmp_path, reference_rows):
    from reward.evaluate import main

    rng = np.random.default_rng(0)
    gt = tmp_path / "gt.jsonl"
    gt.write_text("".join(json.dumps(r) + "\n" for r in reference_rows[:4]))
    preds = [{"id": r["deepcad_id"], "code": perturb(r["cadquery"], rng, 0.05)} for r in reference_rows[:3]]
    preds[2]["code"] = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1.5, 0.5, 0.25)"  # runs, another structure
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds))
    out = tmp_path / "report.json"
    assert main(["--pred", str(pred), "--gt", str(gt), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    s = report["summary"]
    assert s["n"] == 4
    assert s["vsr"] == pytest.approx(0.75)  # the fourth id has no prediction
    assert s["errors"]["semantic"]["count"] == 1
    assert 0.3 < s["iou_best"] <= 1.0 and s["n_valid"] == 3
    assert len(report["rows"]) == 4
    assert [r["same_structure"] for r in report["rows"]] == [True, True, False, False]
    assert s["structure_match"] == pytest.approx(0.5)  # counted over all ids, the missing one included


def test_structure_masks_numbers_and_keeps_operations(reference_rows):
    code = reference_rows[0]["cadquery"]
    edited = perturb(code, np.random.default_rng(1), 0.2)
    assert canonicalize(edited) != canonicalize(code) and structure(edited) == structure(code)
    assert "wp_sketch0" in structure(code) and "#" in structure(code)
    assert structure(code.replace(".close()", ".lineTo(0.1, 0.2).close()", 1)) != structure(code)


def _exhaustive_iou(pred, gt, mode="exact"):
    """The maximum over every candidate rotation, each one intersected (no bound, no symmetry)."""
    from cad.geometry import _affine, candidate_rotations, prepare

    p, g = prepare(pred), prepare(gt)
    best = 0.0
    for r in candidate_rotations(p.pose, g.pose, mode):
        v = (p.raw.transform(_affine(r, p.pose)) ^ g.normalised).volume()
        best = max(best, v / (p.volume + g.volume - v))
    return best


def test_pruned_search_equals_the_exhaustive_maximum(shapes, pool, reference_rows):
    from cad.geometry import clear_caches

    rng = np.random.default_rng(1)
    codes = [r["cadquery"] for r in reference_rows[:6]]
    res = pool.run_many(codes + [perturb(c, rng, 0.1) for c in codes], GEO)
    pairs = [(res[len(codes) + i].geometry, res[i].geometry) for i in range(len(codes))]  # near misses
    pairs += [(res[i].geometry, res[(i + 1) % len(codes)].geometry) for i in range(len(codes))]  # other parts
    pairs += [(shapes[a], shapes[b]) for a, b in (("a", "l_shape"), ("plate", "l_shape"), ("cyl", "cube"), ("l_shape", "a"))]
    for pred, gt in pairs:
        clear_caches()
        for mode in ("exact", "cadcoder"):
            r = best_iou(pred, gt, mode)
            if r.method == mode:
                assert r.iou == pytest.approx(_exhaustive_iou(pred, gt, mode), abs=1e-6)


def test_symmetries_and_slab_volumes(shapes):
    from cad.geometry import prepare, slab_volumes

    assert len(prepare(shapes["cube"]).symmetries()) == 48
    assert len(prepare(shapes["a"]).symmetries()) == 16  # 2 x 1 x 1: the 8 sign flips, each with or without y <-> z
    assert len(prepare(shapes["l_shape"]).symmetries()) == 2  # only the mirror through the mid-plane of the extrusion
    # a Z outline keeps its bounding box under all 8 sign flips but only 4 map the solid onto itself
    assert len(prepare(shapes["z_shape"]).symmetries()) == 4
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    k0, vols = slab_volumes(np.asarray(box.vertices), np.asarray(box.faces), np.array([1.0, 0, 0]), 0.1)
    assert k0 == -10 and vols == pytest.approx(np.full(20, 0.05))
    u = np.array([1.0, 2.0, 2.0]) / 3.0
    _, vols = slab_volumes(np.asarray(box.vertices), np.asarray(box.faces), u, 0.1)
    assert vols.sum() == pytest.approx(1.0) and (vols > -1e-12).all()


def test_cadcoder_iou_of_two_boxes_matches_the_hand_computed_value(pool):
    # boxes with half-sides h are scaled by r_g = sqrt(sum(h^2) / 3) and aligned axis to axis (distinct
    # moments, longest with longest); aligned centred boxes overlap in the box of the smaller half-sides
    a, b = np.array([1.0, 0.5, 0.25]), np.array([1.5, 1.0, 0.5])
    na, nb = a / np.sqrt((a ** 2).sum() / 3), b / np.sqrt((b ** 2).sum() / 3)
    inter = np.prod(np.minimum(na, nb))
    expected = inter / (np.prod(na) + np.prod(nb) - inter)  # 0.6295
    res = pool.run_many([box(2, 1, 0.5, at=(3, 1, 0)), box(1, 3, 2, at=(-1, 0, 2))], GEO)  # B lies along y, not x
    r = best_iou(res[0].geometry, res[1].geometry, "cadcoder")
    assert r.method == "cadcoder" and r.iou == pytest.approx(expected, abs=1e-6)
    assert best_iou(res[0].geometry, res[1].geometry, "exact").iou == pytest.approx(expected, abs=1e-6)


def test_cadcoder_poses_are_those_of_its_published_alignment(shapes):
    from cad.geometry import candidate_rotations, prepare

    p, g = prepare(shapes["l_shape"]).pose, prepare(shapes["z_shape"]).pose
    theirs = [g.axes @ p.axes.T]  # CAD-Coder's align_shapes: Rs[0], then one sign pattern per i
    for i in range(3):
        alignment = 1 - 2 * np.array([i > 0, (i + 1) % 2, i % 3 <= 1])
        theirs.append(g.axes @ (alignment[None, :] * p.axes).T)
    assert np.allclose(candidate_rotations(p, g, "cadcoder"), np.array(theirs))


def test_evaluate_cli_cadcoder_mode(tmp_path, reference_rows, pool):
    from reward.evaluate import main

    rng = np.random.default_rng(2)
    gts = [r["cadquery"] for r in reference_rows[:2]] + [box(1, 1, 1)]
    preds = [perturb(c, rng, 0.05) for c in gts[:2]] + [box(1, 1, 1, at=(0.3, 2, -1))]  # a cube: degenerate moments
    gt, pred = tmp_path / "gt.jsonl", tmp_path / "pred.jsonl"
    gt.write_text("".join(json.dumps({"id": str(i), "code": c}) + "\n" for i, c in enumerate(gts)))
    pred.write_text("".join(json.dumps({"id": str(i), "code": c}) + "\n" for i, c in enumerate(preds)))
    scored = {}
    for mode in ("cadcoder", "exact"):
        assert main(["--pred", str(pred), "--gt", str(gt), "--iou", mode, "--out", str(tmp_path / f"{mode}.json")]) == 0
        scored[mode] = {r["id"]: r["iou"] for r in json.loads((tmp_path / f"{mode}.json").read_text())["rows"]}
    res = pool.run_many(preds + gts, GEO)
    for i in range(len(gts)):
        assert scored["cadcoder"][str(i)] == pytest.approx(best_iou(res[i].geometry, res[len(gts) + i].geometry, "cadcoder").iou, abs=1e-9)
    # CAD-Coder's four poses miss the moved cube that the cube rotations find
    assert scored["exact"]["2"] == pytest.approx(1.0, abs=1e-6) and scored["cadcoder"]["2"] < 0.9
