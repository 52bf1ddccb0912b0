"""A small C program compiled through ccache in a cache mount (tests/test_cachemounts.py).

``--arg COMPILERS=REF@sha256:...``: the compilers-ccache image, pinned (a fresh daemon pulls it
instead of building it); ``--arg CACHE_ID=...``: the cache mount's id suffix, so that a test has
a cache of its own on a shared daemon. The sources are the ``context`` local's ``src/*.c``.
"""

from __future__ import annotations

import llbgen

PLATFORMS = ("linux/amd64",)

COMPILE = r"""
set -eu
ccache -z >/dev/null
mkdir -p /build /out/usr/local/bin
cd /src
for f in *.c; do ccache gcc -O2 -c "$f" -o "/build/${f%.c}.o"; done
gcc -o /out/usr/local/bin/ccdemo /build/*.o
ccache -s | sed 's/^/ccache: /'
"""


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    compilers = ctx.arg("COMPILERS")
    if not compilers or "@sha256:" not in compilers:
        raise ValueError("pass --arg COMPILERS=REF@sha256:... (the compilers-ccache image)")
    src = llbgen.local("context", include=["src/*.c"])
    # A step of the build's own under the compile: a new daemon gets it from --cache-from, seeding
    # and exporting included (the copy steps run on the compile's root).
    prepared = llbgen.image(compilers).run(
        ["sh", "-c", "mkdir -p /build-root && echo llbgen-test: prepared the root"],
        network="none",
        name="prepare the compile's root",
    )
    return (
        prepared.root
        .run(
            ["sh", "-c", COMPILE],
            mounts=[
                llbgen.bind("/src", src, path="src", readonly=True),
                llbgen.cache("/ccache", f"ccdemo-ccache-{ctx.arg('CACHE_ID') or 'default'}", sharing="locked"),
                llbgen.tmpfs("/build"),
                llbgen.bind("/out", llbgen.scratch()),
            ],
            env={"CCACHE_DIR": "/ccache"},
            network="none",
            name="compile ccdemo",
        )
        .mount("/out")
        .with_entrypoint("/usr/local/bin/ccdemo")
    )
