"""Beyond the fixed vectors: a generated graph marshalled by BuildKit's Go client and by llbgen.

benchmarks/go-marshal builds a chain of run and mkfile steps with ``client/llb`` v0.32.2; the same
chain built by benchmarks/marshal.py must give the same op bytes and metadata.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

import llbgen
from llbgen.pb import ops_pb2

ROOT = Path(__file__).resolve().parent.parent


def _python_chain(n: int) -> llbgen.State:
    spec = importlib.util.spec_from_file_location("marshal_bench", ROOT / "benchmarks" / "marshal.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state: llbgen.State = module.chain(n)
    return state


def test_generated_chain_matches_go_client(tmp_path: Path) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is required for this test (it is on every machine of this project's kind)")
    out = tmp_path / "go.pb"
    subprocess.run(
        [go, "run", ".", "-n", "301", "-runs", "1", "-o", str(out)],
        cwd=ROOT / "benchmarks" / "go-marshal",
        check=True,
        capture_output=True,
        timeout=900,
    )
    expected = ops_pb2.Definition.FromString(out.read_bytes())
    ours = llbgen.marshal(_python_chain(301), platform="linux/amd64")
    assert list(ours.ops) == list(getattr(expected, "def"))
    got = ours.to_pb()
    for digest, meta in expected.metadata.items():
        assert got.metadata[digest] == meta
