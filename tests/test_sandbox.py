"""The sandbox: hostile programs end not ok, touch nothing, leak nothing, and the pool keeps serving."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from cad.policy import check_source
from cad.sandbox import ExecOptions

SENTINEL_DIR = Path(tempfile.gettempdir()) / "img2cad_hostile"
SENT = str(SENTINEL_DIR / "pwned")
BOX = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 2, 3)\n"

HOSTILE = {
    "os_system": f"import os\nos.system('touch {SENT}')",
    "from_os": f"from os import system\nsystem('touch {SENT}')",
    "subprocess": f"import subprocess\nsubprocess.run(['touch', '{SENT}'])",
    "socket": "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))",
    "open_write": f"open('{SENT}', 'w').write('x')",
    "open_read": "solid = open('/etc/passwd').read()",
    "dunder_import": f"__import__('os').system('touch {SENT}')",
    "eval": "eval(\"__import__('os')\")",
    "exec": "exec('import os')",
    "compile": "compile('1', 'f', 'eval')",
    "getattr_builtins": "getattr(__builtins__, 'open')('/etc/passwd')",
    "subclasses": "x = ().__class__.__bases__[0].__subclasses__()",
    "subclasses_mro": "x = [].__class__.__mro__[1].__subclasses__()",
    "func_globals": "f = lambda: 0\ng = f.__globals__",
    "gen_frame": "g = (x for x in [1])\nfr = g.gi_frame.f_globals",
    "globals_call": "b = globals()['__builtins__']",
    "format_escape": "s = '{0.__class__.__mro__}'.format(1)",
    "type_new_class": "X = type('X', (), {})",
    "import_builtins": "import builtins\nbuiltins.open('/etc/passwd')",
    "sys_modules": "import sys\nsys.modules['cadquery'] = None",
    "exporter": f"import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\ncq.exporters.export(solid, '{SENT}', 'STEP')",
    "export_stl": f"import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\nsolid.val().exportStl('{SENT}')",
    "import_step": "import cadquery as cq\nsolid = cq.importers.importStep('/etc/passwd')",
    "occ_impl": f"import cadquery as cq\ncq.occ_impl.exporters.export(cq.Workplane().box(1,1,1), '{SENT}', 'STEP')",
    "font_path": "import cadquery as cq\nsolid = cq.Workplane().text('a', 1, 1, fontPath='/etc/passwd')",
    "font_path_positional": "import cadquery as cq\nsolid = cq.Workplane().text('a', 1, 1, 'cut', True, 'Arial', '/etc/passwd')",
    "font_path_unpacked": "import cadquery as cq\nsolid = cq.Workplane().text('a', 1, 1, **{'fontPath': '/etc/passwd'})",
    "font_path_alias": "import cadquery as cq\nt = cq.Workplane().text\nsolid = t('a', 1, 1, 'cut', True, 'Arial', '/etc/passwd')",
    "font_path_star": "import cadquery as cq\na = ['a', 1, 1, 'cut', True, 'Arial', '/etc/passwd']\nsolid = cq.Workplane().text(*a)",
    "make_text": "import cadquery as cq\nsolid = cq.Compound.makeText('a', 1, 1, 'Arial', '/etc/passwd')",
    "wrapped": "import cadquery as cq\nw = cq.Workplane().box(1, 1, 1).val().wrapped",
    "monkeypatch_cq": "import cadquery as cq\ncq.Workplane.box = lambda *a, **k: None",
    "infinite_loop": "while True:\n    pass",
    "cpu_bomb": "x = 7 ** (10 ** 9)",
    "memory_bomb": "x = [0] * (10 ** 10)",
    "memory_growth": "x = []\nwhile True:\n    x.append([0] * 100000)",
    "recursion": "def f(n):\n    return f(n + 1)\nf(0)",
    "os_exit": "import os\nos._exit(0)",
    "system_exit": "raise SystemExit(0)",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "ignore_signals": "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass",
    "fork": "import os\nos.fork()",
    "thread": "import threading, time\nthreading.Thread(target=lambda: time.sleep(60)).start()",
    "nul_bytes": "import cadquery as cq\x00\nsolid = cq.Workplane().box(1, 1, 1)",
    "megabytes": "x = 1\n" * 400_000,
    "deep_nesting": "x = " + "(" * 200_000 + "1" + ")" * 200_000,
    "solid_is_int": "solid = 5",
    "solid_is_str": "solid = 'a box'",
    "class_def": "class A:\n    pass\nsolid = A()",
    "try_except": "try:\n    pass\nexcept Exception:\n    pass",
    "attribute_store": "import math\nmath.pi = 3",
    "ctypes": "import ctypes\nctypes.CDLL(None).system(b'touch x')",
    "bytes_literal": "x = b'abc'",
}


# How each program must end: the static policy rejects all but these, which the forked child's
# limits and the result check stop (the status says which layer held).
EXPECTED = {name: {"rejected"} for name in HOSTILE} | {
    "infinite_loop": {"timeout"}, "cpu_bomb": {"timeout", "memory"}, "memory_bomb": {"memory"},
    "memory_growth": {"timeout", "memory"}, "recursion": {"runtime_error"},
    "solid_is_int": {"no_solid"}, "solid_is_str": {"no_solid"},
}
WRITES = ("os_system", "from_os", "subprocess", "open_write", "dunder_import", "exporter", "export_stl", "occ_impl")


def test_hostile_programs_do_harm_outside_the_sandbox(tmp_path):
    """Positive control: run with no policy and no limits (in a throwaway child process, never in
    this one), the corpus's writers do write and its reader does read, so the containment test
    below fails if the sandbox lets them run."""
    progs = {n: HOSTILE[n].replace(SENT, str(tmp_path / n)) for n in WRITES} | {"open_read": HOSTILE["open_read"]}
    runner = ("import json, sys\nread = {}\nfor name, code in json.load(sys.stdin).items():\n"
              "    ns = {'__name__': '__main__'}\n    try:\n        exec(code, ns)\n    except BaseException:\n        pass\n"
              "    read[name] = 'root:' in str(ns.get('solid'))\nprint(json.dumps(read))\n")
    done = subprocess.run([sys.executable, "-c", runner], input=json.dumps(progs), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert sorted(n for n in WRITES if (tmp_path / n).exists()) == sorted(WRITES), done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["open_read"]


@pytest.fixture(scope="module")
def hostile_results(pool):
    shutil.rmtree(SENTINEL_DIR, ignore_errors=True)
    SENTINEL_DIR.mkdir()
    os.chmod(SENTINEL_DIR, 0o777)  # even a writable target must stay untouched
    names = list(HOSTILE)
    results = pool.run_many([HOSTILE[n] for n in names], ExecOptions(timeout=3.0))
    return dict(zip(names, results))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(hostile_results, name):
    result = hostile_results[name]
    assert result.status in EXPECTED[name], (name, result.status, result.error)
    assert list(SENTINEL_DIR.iterdir()) == [], f"{name}: a program wrote a file"
    assert "root:" not in result.error, f"{name} read a file back to the caller"


def test_pool_keeps_serving_after_hostile_programs(pool, hostile_results, reference_rows):
    results = pool.run_many([BOX] + [r["cadquery"] for r in reference_rows[:3]])
    assert all(r.status == "ok" and r.executable for r in results)
    assert results[0].volume == pytest.approx(6.0, rel=1e-6)
    assert results[0].n_faces == 6 and results[0].n_solids == 1


def test_a_closed_pool_refuses_programs_and_starts_no_worker():
    """Using a pool after ``close`` (a generator of results read after its ``with`` block) says so,
    instead of failing inside its crash recovery or starting a worker nobody closes."""
    from cad.sandbox import SandboxPool

    with SandboxPool(1) as own:
        assert own.run(BOX).status == "ok"
    with pytest.raises(RuntimeError, match="closed"):
        own.run(BOX + "# another program\n")
    assert own._all == []


def test_prefetched_programs_run_in_the_background_once(pool):
    """``prefetch`` runs programs with no caller waiting, into the cache, where ``run`` then finds
    them; a program asked for before its turn came runs in the caller's thread."""
    codes = [f"import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1, {k + 1})  # prefetched\n" for k in range(6)]
    pool.prefetch(codes[:3])
    deadline = time.monotonic() + 60
    while any(pool.cached(c) is None for c in codes[:3]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(pool.cached(c) is not None for c in codes[:3])  # nobody ran them: the prefetch did
    assert pool.run(codes[1]) is pool.cached(codes[1])
    pool.prefetch(codes[3:])  # one background thread: the last two wait their turn, then run here
    results = pool.run_many(codes[3:])
    assert [r.volume for r in results] == pytest.approx([4.0, 5.0, 6.0])
    assert all(pool.cached(c) is r for c, r in zip(codes[3:], results))


def test_brep_check_is_skipped_only_when_asked(pool):
    checked, unchecked = pool.run(BOX), pool.run(BOX, ExecOptions(check_brep=False))
    assert checked.brep_valid is True and unchecked.brep_valid is None
    assert unchecked.executable and unchecked.volume == pytest.approx(6.0)
    assert pool.run("solid = 1 / 0\n", ExecOptions(check_brep=False)).status == "runtime_error"


def test_reused_child_runs_programs_alike_and_starts_again_after_a_timeout(pool):
    """``ExecOptions(reuse=True)`` programs run one after another in one child: the same results as
    a child each, a program that runs out of memory or time ends as it would there, and the next
    program still runs."""
    reuse = ExecOptions(want_geometry=True, reuse=True)
    boxes = [f"import cadquery as cq\nsolid = cq.Workplane('XY').box(2, 3, {k + 1}).faces('>Z').hole(0.5)  # reused\n"
             for k in range(3)]
    fresh = pool.run_many(boxes, ExecOptions(want_geometry=True))
    reused = pool.run_many(boxes, reuse)
    assert [r.volume for r in reused] == pytest.approx([r.volume for r in fresh])
    assert all(np.array_equal(a.geometry.triangles, b.geometry.triangles) for a, b in zip(fresh, reused))
    assert pool.run("x = [0] * 10 ** 10\n", reuse).status == "memory"
    assert pool.run("while True:\n    pass\n", ExecOptions(timeout=1.0, reuse=True)).status == "timeout"
    after = pool.run("import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1, 7)  # after the timeout\n", reuse)
    assert after.executable and after.volume == pytest.approx(7.0)


def test_reused_programs_share_a_child_whose_state_stays_in_it():
    """Reused programs share their child (what one changes in module state, the next sees: only
    programs this code base writes may be reused), and that state stays out of the programs that
    run in a child of their own, which start from the zygote's pristine image."""
    from cad.sandbox import SandboxPool

    spoil = "import cadquery as cq\nsolid = cq.Workplane().box(2, 2, 2)\ncq.selectors.geom_LUT_FACE.clear()\n"
    uses_lut = ("import cadquery as cq\nn = cq.Workplane().box(2, 2, 2).faces('%PLANE').size()\n"
                "solid = cq.Workplane().box(2, 2, n)\n")
    with SandboxPool(1) as own:
        assert own.run(spoil, ExecOptions(reuse=True)).status == "ok"
        assert own.run(uses_lut, ExecOptions(reuse=True)).status == "runtime_error"  # the same child: spoiled
        fresh = own.run(uses_lut)
        assert fresh.status == "ok" and fresh.volume == pytest.approx(24.0), fresh.error


def test_no_state_leaks_between_programs(pool):
    """A program may mutate module state the policy allows it to reach (a dict in
    ``cq.selectors``) and set globals; the next program must not see either."""
    spoil = ("import cadquery as cq\nsolid = cq.Workplane().box(2, 2, 2)\ncq.selectors.geom_LUT_FACE.clear()\n"
             "marker = 3\n# {}\n")
    spoiled = pool.run_many([spoil.format(k) for k in range(2 * pool.workers)])  # every worker runs one
    assert all(r.status == "ok" for r in spoiled)  # the policy lets them run: isolation must hold
    uses_lut = pool.run("import cadquery as cq\nn = cq.Workplane().box(2, 2, 2).faces('%PLANE').size()\n"
                        "solid = cq.Workplane().box(2, 2, n)\n")
    assert uses_lut.status == "ok" and uses_lut.volume == pytest.approx(24.0), uses_lut.error
    uses_global = pool.run("import cadquery as cq\nsolid = cq.Workplane().box(marker, 1, 1)\n")
    assert uses_global.status == "runtime_error" and "marker" in uses_global.error


def test_result_variable_fallbacks(pool):
    r = pool.run("import cadquery as cq\nresult = cq.Workplane().box(1, 1, 1)\n")
    assert r.status == "ok"
    r = pool.run("import cadquery as cq\nmy_part = cq.Workplane().box(1, 1, 2)\n")
    assert r.status == "ok" and r.volume == pytest.approx(2.0)
    r = pool.run("import cadquery as cq\nsolid = cq.Workplane().rect(1, 1)\n")
    assert r.status == "no_solid"


def test_reference_programs_execute_to_valid_solids(pool, reference_rows):
    results = pool.run_many([r["cadquery"] for r in reference_rows], ExecOptions(want_geometry=True))
    for row, res in zip(reference_rows, results):
        assert res.status == "ok", (row["deepcad_id"], res.error)
        assert res.executable and res.n_solids >= 1 and res.volume > 0
        assert res.geometry is not None and len(res.geometry.triangles) > 0


def test_edges_of_a_drilled_cylinder(pool):
    """A cylinder (radius 1, height 2) with a hole (radius 0.25): its four circles are drawn as 47
    segments each, every point on its circle and a 47th of a turn apart, and its two cylindrical
    faces' seams (and nothing else) are marked as seams."""
    code = "import cadquery as cq\nsolid = cq.Workplane('XY').circle(1).extrude(2).faces('>Z').workplane().hole(0.5)\n"
    g = pool.run(code, ExecOptions(want_geometry=True)).geometry
    seg, seam = np.asarray(g.edges), np.asarray(g.edge_seam)
    flat = np.isclose(seg[:, 0, 2], seg[:, 1, 2])  # segments in a plane z = const: the circles'
    assert seam.sum() == 2 and not flat[seam].any()  # the seams are vertical lines
    assert flat.sum() == 4 * 47 and (flat | seam).all()
    for z in (0.0, 2.0):
        for r in (1.0, 0.25):
            ring = seg[flat & np.isclose(seg[:, 0, 2], z) & np.isclose(np.hypot(seg[:, 0, 0], seg[:, 0, 1]), r)]
            assert len(ring) == 47
            assert np.allclose(np.hypot(ring[..., 0], ring[..., 1]), r, atol=1e-9)
            turn = np.angle(np.exp(1j * (np.arctan2(ring[:, 1, 1], ring[:, 1, 0]) - np.arctan2(ring[:, 0, 1], ring[:, 0, 0]))))
            assert np.allclose(np.abs(turn), 2 * np.pi / 47)


def test_policy_accepts_gencad_style(reference_rows):
    for row in reference_rows:
        assert check_source(row["cadquery"]).status == "ok"


def test_execute_cli_keeps_every_id_in_order(tmp_path):
    from cad.execute import main

    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": "box", "code": BOX}), "{broken", json.dumps({"id": "loop", "code": "while True:\n    pass"}),
             json.dumps({"id": "nocode"}), json.dumps({"id": "box", "code": BOX})]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert main([str(src), "--out", str(out), "--timeout", "1", "--workers", "2"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["box", "line:2", "loop", "nocode", "box#1"]
    assert [r["status"] for r in rows] == ["ok", "rejected", "timeout", "rejected", "rejected"]
    assert rows[0]["volume"] == pytest.approx(6.0) and rows[0]["bbox"] is not None
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_execute_cli_resumes_from_partial(tmp_path):
    from cad.execute import main

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "code": BOX}) + "\n" + json.dumps({"id": "b", "code": BOX.replace("3)", "4)")}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main([str(src), "--out", str(out)]) == 0
    # Pretend the run was interrupted after 'a' (its row marked) before 'b'.
    first = json.loads(out.read_text().splitlines()[0])
    (tmp_path / "out.jsonl.partial").write_text(json.dumps({**first, "volume": -1.0}) + "\n")
    out.unlink()
    assert main([str(src), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["volume"] == -1.0  # kept, not recomputed
    assert rows[1]["volume"] == pytest.approx(8.0)
