import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("GENCAD_REFERENCE", ROOT.parent / "shared" / "gencad_reference"))


@pytest.fixture(scope="session")
def pool():
    from cad.sandbox import SandboxPool

    with SandboxPool(workers=2) as p:
        yield p


@pytest.fixture(scope="session")
def reference_rows():
    path = REFERENCE / "samples.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found: set GENCAD_REFERENCE to the gencad_reference folder")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
