"""The sandbox: hostile programs end not ok, touch nothing, leak nothing, and the pool keeps serving."""
import json
import os
import tempfile
from pathlib import Path

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
    "exporter": f"import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\ncq.exporters.export(solid, '{SENT}')",
    "export_stl": f"import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\nsolid.val().exportStl('{SENT}')",
    "import_step": "import cadquery as cq\nsolid = cq.importers.importStep('/etc/passwd')",
    "occ_impl": f"import cadquery as cq\ncq.occ_impl.exporters.export(cq.Workplane().box(1,1,1), '{SENT}')",
    "font_path": "import cadquery as cq\nsolid = cq.Workplane().text('a', 1, 1, fontPath='/etc/passwd')",
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


def test_hostile_corpus_is_large_enough():
    assert len(HOSTILE) >= 30


@pytest.fixture(scope="module")
def hostile_results(pool):
    SENTINEL_DIR.mkdir(exist_ok=True)
    os.chmod(SENTINEL_DIR, 0o777)  # even a writable target must stay untouched
    names = list(HOSTILE)
    results = pool.run_many([HOSTILE[n] for n in names], ExecOptions(timeout=3.0))
    return dict(zip(names, results))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_is_contained(hostile_results, name):
    result = hostile_results[name]
    assert result.status != "ok", f"{name} ran to a solid"
    assert result.status in ("syntax_error", "rejected", "runtime_error", "timeout", "memory", "crash", "no_solid")
    assert not Path(SENT).exists(), f"{name} wrote a file"
    assert "root:" not in result.error, f"{name} read a file back to the caller"


def test_expected_statuses(hostile_results):
    assert hostile_results["infinite_loop"].status == "timeout"
    assert hostile_results["ignore_signals"].status == "rejected"
    assert hostile_results["os_system"].status == "rejected"
    assert hostile_results["nul_bytes"].status == "rejected"
    assert hostile_results["megabytes"].status == "rejected"
    assert hostile_results["solid_is_int"].status == "no_solid"
    assert hostile_results["memory_bomb"].status == "memory"
    assert hostile_results["recursion"].status == "runtime_error"
    assert hostile_results["cpu_bomb"].status in ("timeout", "memory")


def test_pool_keeps_serving_after_hostile_programs(pool, hostile_results, reference_rows):
    results = pool.run_many([BOX] + [r["cadquery"] for r in reference_rows[:3]])
    assert all(r.status == "ok" and r.executable for r in results)
    assert results[0].volume == pytest.approx(6.0, rel=1e-6)
    assert results[0].n_faces == 6 and results[0].n_solids == 1


def test_no_state_leaks_between_programs(pool):
    # The policy forbids attribute assignment; even so each program starts from a fresh fork.
    first = pool.run("import cadquery as cq\nsolid = cq.Workplane().box(2, 2, 2)\nmarker = 1\n")
    second = pool.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\nsolid = solid if 'marker' not in dir else solid\n")
    assert first.volume == pytest.approx(8.0)
    assert second.status == "rejected"  # 'dir' is not an allowed name
    third = pool.run("import cadquery as cq\nsolid = cq.Workplane().box(1, 1, 1)\ny = marker\n")
    assert third.status == "runtime_error" and "marker" in third.error


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
    # Pretend a previous run finished 'a' (with a marker value) before it was interrupted.
    (tmp_path / "out.jsonl.partial").write_text(json.dumps({"id": "a", "status": "ok", "volume": -1.0}) + "\n")
    assert main([str(src), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["volume"] == -1.0  # kept, not recomputed
    assert rows[1]["volume"] == pytest.approx(8.0)
