"""Loader, renderer and synthetic generator."""
import ast
import json
import re

import numpy as np
import pytest
from PIL import Image

from cad.data import DatasetUnavailable, load_gencad, to_image
from cad.program_stats import GENCAD_TEST_STATS, program_stats
from cad.render import render_geometry, silhouette_iou
from cad.sandbox import ExecOptions
from cad.synth import accept, synthesize
from cad.synth_programs import random_program
from tests.conftest import REFERENCE

GEO = ExecOptions(want_geometry=True)


def test_loader_reads_reference_rows(reference_rows):
    ds = load_gencad(REFERENCE / "samples.jsonl")
    assert len(ds) == 10
    assert set(ds.column_names) == {"image", "deepcad_id", "cadquery", "token_count", "prompt", "hundred_subset"}
    img = to_image(ds[0]["image"])
    assert img.size == (448, 448)
    assert ds[0]["cadquery"].startswith("import cadquery as cq")
    assert len(load_gencad(REFERENCE, subset="hundred")) == 10


def test_loader_explains_how_to_use_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable, match="local"):
        load_gencad(None, split="test")
    with pytest.raises(DatasetUnavailable, match="not found"):
        load_gencad("/nonexistent/folder")


def test_renderer_matches_real_images(pool, reference_rows):
    results = pool.run_many([r["cadquery"] for r in reference_rows], GEO)
    for row, res in zip(reference_rows, results):
        real = np.array(Image.open(REFERENCE / row["image"]).convert("RGB"))
        ours = render_geometry(res.geometry)
        assert ours.shape == real.shape
        assert silhouette_iou(real, ours) >= 0.95, row["deepcad_id"]
        # the palette: white background, the flat face grey and black edges dominate
        assert (ours == [141, 141, 138]).all(-1).sum() > 0 and (ours == 0).all(-1).sum() > 0


def test_renderer_is_deterministic(pool, reference_rows):
    res = pool.run(reference_rows[1]["cadquery"], GEO)
    assert np.array_equal(render_geometry(res.geometry), render_geometry(res.geometry))


def test_a_frame_is_as_far_from_the_window_fit_as_it_draws_the_box_away_from_it(pool, reference_rows):
    from cad.render import box_corners, frame_offset, project, window_fit

    res = pool.run(reference_rows[1]["cadquery"], GEO)
    corners = project(box_corners(np.asarray(res.geometry.vertices, dtype=np.float64)))[:, :2]
    scale, centre = window_fit(corners.min(0), corners.max(0))
    fit = (scale / 448, *centre)
    assert np.array_equal(render_geometry(res.geometry, frame=fit), render_geometry(res.geometry))  # the window fit, as a frame
    assert frame_offset(res.geometry, fit) < 1e-9
    assert np.isclose(frame_offset(res.geometry, (fit[0], fit[1] + 3 / scale, fit[2])), 3.0)  # three pixels to the left
    assert frame_offset(res.geometry, (fit[0] * 0.9, fit[1], fit[2])) > 10.0  # drawn smaller than the fit


def test_render_cli_writes_one_png_per_program(tmp_path, reference_rows):
    from cad.render import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": r["deepcad_id"], "code": r["cadquery"]}) + "\n" for r in reference_rows[:2])
                   + json.dumps({"id": "bad", "code": "solid = 1"}) + "\n")
    assert main([str(src), "--out", str(tmp_path / "png"), "--size", "128"]) == 0
    assert Image.open(tmp_path / "png" / f"{reference_rows[0]['deepcad_id']}.png").size == (128, 128)
    failures = [json.loads(x) for x in (tmp_path / "png" / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["bad"]


GENCAD_LINE = re.compile(
    r"^(import cadquery as cq"
    r"|# Generating a workplane for sketch \d+"
    r"|wp_sketch\d+ = cq\.Workplane\(cq\.Plane\(cq\.Vector\([^()]*\), cq\.Vector\([^()]*\), cq\.Vector\([^()]*\)\)\)"
    r"|loop\d+=wp_sketch\d+\.moveTo\([^()]*\)(\.circle\([^()]*\)|(\.(lineTo\([^()]*\)|threePointArc\(\([^()]*\), \([^()]*\)\)))+\.close\(\))"
    r"|solid\d+=wp_sketch\d+(\.add\(loop\d+\))+\.extrude\(-?[\d.e-]+(, both=True)?\)"
    r"|solid=solid0|solid=solid\.(union|cut)\(solid\d+\))$"
)


def test_generated_programs_have_gencad_style():
    rng = np.random.default_rng(3)
    for _ in range(200):
        code = random_program(rng)
        ast.parse(code)
        for line in code.strip().splitlines():
            assert GENCAD_LINE.match(line), line


def test_generated_statistics_follow_stats_md():
    rng = np.random.default_rng(4)
    stats = program_stats([random_program(rng) for _ in range(600)])
    share1 = stats["sketches"].get(1, 0) / stats["programs"]
    assert abs(share1 - 0.57) < 0.1
    assert abs(stats["loops_mean"] - GENCAD_TEST_STATS["loops_mean"]) < 0.6
    assert abs(stats["arc_share"] - GENCAD_TEST_STATS["arc_share"]) < 0.08
    assert abs(stats["union_share"] - GENCAD_TEST_STATS["union_share"]) < 0.12
    normals = stats["normals"]
    total = sum(normals.values())
    assert abs(normals["(0,0,1)"] / total - 0.44) < 0.1 and abs(normals["(0,-1,0)"] / total - 0.40) < 0.1


def test_synth_is_valid_deterministic_and_resumable(tmp_path, pool):
    a = tmp_path / "a"
    info = synthesize(12, a, seed=7, workers=2, shard_size=6, size=128, progress=False)
    assert info["totals"]["accepted"] == 12
    ds = load_gencad(a, split="train")
    assert len(ds) == 12 and len(set(ds["deepcad_id"])) == 12
    assert to_image(ds[0]["image"]).size == (128, 128)
    results = pool.run_many(list(ds["cadquery"]), ExecOptions())
    assert all(accept(r) for r in results)  # 100% of kept programs execute to one valid solid
    # same seed, same data; an interrupted run (a shard missing) completes to the same data
    b = tmp_path / "b"
    synthesize(12, b, seed=7, workers=1, shard_size=6, size=128, progress=False)
    assert list(load_gencad(b)["cadquery"]) == list(ds["cadquery"])
    (b / "train-00001.parquet").unlink()
    synthesize(12, b, seed=7, workers=2, shard_size=6, size=128, progress=False)
    again = load_gencad(b)
    assert list(again["cadquery"]) == list(ds["cadquery"])
    assert np.array_equal(np.array(to_image(again[11]["image"])), np.array(to_image(ds[11]["image"])))
    # reward.evaluate reads such a folder as ground truth, as it reads JSONL
    from reward.evaluate import ground_truth

    assert ground_truth(str(a)) == [(i, c, "") for i, c in zip(ds["deepcad_id"], ds["cadquery"])]


def test_rasteriser_spans_cover_exactly_the_pixels_of_the_barycentric_test():
    """The rasteriser visits only a span of each row; it must colour exactly the pixels that the
    barycentric test over the triangle's whole box accepts, for long thin slivers, near-horizontal
    edges and triangles off the frame too."""
    from cad.render import _rasterise

    rng = np.random.default_rng(0)
    size = 64
    points = rng.uniform(-20, size + 20, (300, 3, 2))
    points[:100, 2] = points[:100, 0] + rng.uniform(-1, 1, (100, 2)) * [30, 1e-7]  # slivers, flat edges
    points[100:150, 1, 1] = points[100:150, 0, 1] + rng.uniform(-1e-5, 1e-5, 50)  # edges almost horizontal
    for tri in points:
        px, py = tri[:, 0].copy(), tri[:, 1].copy()
        zbuf, ibuf = np.full((size, size), -np.inf), np.zeros((size, size))
        _rasterise(px, py, np.zeros(3), np.array([[0, 1, 2]]), np.ones(3), zbuf, ibuf)
        (x0, x1, x2), (y0, y1, y2) = px, py
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        sx, sy = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
        w0 = ((x1 - sx) * (y2 - sy) - (x2 - sx) * (y1 - sy)) / area
        w1 = ((x2 - sx) * (y0 - sy) - (x0 - sx) * (y2 - sy)) / area
        inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (1.0 - w0 - w1 >= -1e-9) if abs(area) >= 1e-12 else np.zeros_like(w0, bool)
        box = np.zeros((size, size), bool)  # the box the old loop scanned: the test counted only there
        box[max(int(np.floor(py.min())), 0):min(int(np.ceil(py.max())), size - 1) + 1,
            max(int(np.floor(px.min())), 0):min(int(np.ceil(px.max())), size - 1) + 1] = True
        assert np.array_equal(np.isfinite(zbuf), inside & box), tri
