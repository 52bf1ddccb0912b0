"""Generates llbgen's protobuf/gRPC bindings from protos/ while the package is built.

Generated modules are not committed: they pin the protobuf and grpcio versions they were made with,
so they are made by the grpcio-tools that pyproject.toml pins, for both `pip install .` and
`pip install -e .` (setuptools runs build_py in both cases).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "protos"


def generate_bindings(out_dir: Path) -> None:
    import google.rpc.status_pb2  # from googleapis-common-protos: google/rpc/status.proto
    import grpc_tools
    from grpc_tools import protoc

    googleapis = Path(google.rpc.status_pb2.__file__).parents[2]
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{googleapis}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    cwd = os.getcwd()
    os.chdir(PROTO_ROOT)  # protoc wants the proto paths relative to an include dir
    try:
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed to generate llbgen's bindings from protos/")
    finally:
        os.chdir(cwd)


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        # Into the source tree, so editable installs import them in place...
        generate_bindings(ROOT)
        super().run()
        # ...and into the build tree for regular wheels (build_py copied what existed before).
        if not self.editable_mode:
            generate_bindings(Path(self.build_lib).resolve())


setup(cmdclass={"build_py": BuildPyWithProtos})
