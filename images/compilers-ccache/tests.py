"""Structure tests of compilers-ccache: ccache stands in for every gcc, the cross ones too.

bpftool's and llvm's compile steps put ``/usr/lib/ccache`` first in ``PATH`` and count on a link
there for the compiler they call; a cross compiler missing from it would compile without the
cache, silently.
"""

import llbgen
from llbgen.structure import Check, CommandTest

TRIPLET = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

# Two compiles of the same file through the cross gcc's link: a miss, then a hit.
TWICE = (
    "export CCACHE_DIR=/tmp/ccache PATH=/usr/lib/ccache:$PATH; "
    "for i in 1 2; do {cc} -c /tmp/t.c -o /tmp/t.o || exit 1; done; ccache --print-stats"
)


def tests(ctx: llbgen.BuildContext) -> list[Check]:
    native = TRIPLET[ctx.target_platform.architecture]
    (other,) = (t for t in TRIPLET.values() if t != native)
    links = [
        CommandTest(f"{compiler} goes through ccache", ["readlink", "-f", f"/usr/lib/ccache/{compiler}"],
                    expected_output=["^/usr/bin/ccache$"])
        for compiler in (f"{native}-gcc", f"{native}-g++", f"{other}-gcc", f"{other}-g++", "gcc", "g++")
    ]  # fmt: skip
    return [
        *links,
        CommandTest(
            "a cross compile hits the cache the second time",
            ["sh", "-c", TWICE.format(cc=f"{other}-gcc")],
            files={"/tmp/t.c": "int answer(void) { return 42; }\n"},
            expected_output=[r"^cache_miss\t1$", r"^direct_cache_hit\t1$"],
        ),
        CommandTest("patch runs", ["patch", "--version"], expected_output=["^GNU patch"]),
    ]
