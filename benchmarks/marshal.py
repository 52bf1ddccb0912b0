"""Marshal a generated chain of N ops (default 10,000) and print the time.

The graph is the one benchmarks/go-marshal builds with BuildKit's Go client, so the two can be run
side by side (benchmarks/marshal-vs-go) and their terminal digests compared: equal digests mean
equal bytes for every op.
"""

from __future__ import annotations

import argparse
import statistics
import time

import llbgen

DEB = (
    "docker.io/library/debian:bookworm"
    "@sha256:b5ed2cb4e2e5d8c4b2d3c2b1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
)


def chain(n: int) -> llbgen.State:
    """Alternating run and mkfile steps on one base image, as in go-marshal/main.go."""
    st = llbgen.image(DEB)
    for i in range(n):
        if i % 2 == 0:
            st = st.with_env("STEP", str(i)).run(f"sh -c 'echo {i} > /step'").root
        else:
            st = st.file(llbgen.mkfile(f"/f{i}", 0o644, str(i)))
    return st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10_000, help="number of ops in the chain")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("-o", metavar="FILE", help="write the definition of one run to FILE")
    ns = parser.parse_args()
    times = []
    for run in range(ns.runs):
        state = chain(ns.n)  # built outside the timed region, like the Go side
        start = time.perf_counter()
        definition = llbgen.marshal(state, platform="linux/amd64")
        times.append(time.perf_counter() - start)
        print(f"run {run + 1}: {times[-1]:.3f}s (ops={len(definition.ops)})")
    if ns.o:
        with open(ns.o, "wb") as f:
            f.write(definition.serialize())
    print(
        f"llbgen: ops={len(definition.ops)} best={min(times):.3f}s "
        f"median={statistics.median(times):.3f}s worst={max(times):.3f}s terminal={definition.digests[-1]}"
    )


if __name__ == "__main__":
    main()
