"""Benchmark image: gcc against Debian's clang as the host compiler of the llvm image's compiles.

Built by benchmarks/host_compiler.py in a copy of images/ (it reads llvm's definition, as a helper,
for the same sources, options and configured tree). Both compilers compile the same sample of the
translation units of clang, llc and llvm-objcopy, one at a time, ccache off; the generated headers
they need (ninja's order-only inputs: generated headers) are made first, untimed. The result is
/times.txt: seconds per sample and compiler.

Build args: EVERY=<n> (the sample: every n-th C++ object, default 40), ROUNDS=<n> (default 2:
gcc, clang, gcc, clang..., so that a change of load shows as a difference between rounds).
"""

from __future__ import annotations

import llbgen

PLATFORMS = ("linux/amd64",)
SYSTEM_PACKAGES = True

SAMPLE = r"""
set -eu
every=$1 rounds=$2
shift 2
cp -a /configured/. /build/
cmake -S /src/llvm -B /build-clang "$@" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    >/tmp/cmake.log 2>&1 || { tail -n 40 /tmp/cmake.log >&2; exit 1; }
# The sample: every n-th C++ object the tools are built from (the same paths in both trees).
ninja -C /build -t commands $TOOLS | grep -o ' -o [^ ]*\.o ' | awk '{print $2}' | sort -u |
    awk -v n="$every" 'NR % n == 0' >/tmp/sample
echo "llbgen: hostcc: $(wc -l </tmp/sample) objects of $(ninja -C /build -t commands $TOOLS | grep -c ' -o [^ ]*\.o ')"
echo "llbgen: hostcc: $(gcc --version | head -n 1); $(clang --version | head -n 1)"
for tree in /build /build-clang; do
    # what the sample's compiles need first (generated headers: ninja's order-only inputs), untimed
    ninja -C "$tree" -t query $(cat /tmp/sample) | awk '$1 == "||" {print $2}' | sort -u |
        xargs -r ninja -C "$tree" -j"$(nproc)" >/tmp/ninja.log 2>&1 || { tail -n 40 /tmp/ninja.log >&2; exit 1; }
done
: >/out/times.txt
round=1
while [ "$round" -le "$rounds" ]; do
    for tree in /build /build-clang; do
        compiler=gcc; [ "$tree" = /build ] || compiler=clang
        (cd "$tree" && xargs rm -f </tmp/sample)
        start=$(date +%s.%N)
        xargs -a /tmp/sample ninja -C "$tree" -j1 >/tmp/ninja.log 2>&1 || { tail -n 40 /tmp/ninja.log >&2; exit 1; }
        end=$(date +%s.%N)
        echo "round $round $compiler $(echo "$end - $start" | bc) s" | tee -a /out/times.txt |
            sed 's/^/llbgen: hostcc: /'
    done
    round=$((round + 1))
done
"""


def build(ctx: llbgen.BuildContext) -> llbgen.State:
    llvm = ctx.helper("llvm/image")
    debian = ctx.helper("sources/debian")
    platform = ctx.build_platform
    with_clang = ctx.image("compilers-ccache", platform=platform).run(
        ["sh", "-c", "set -eu; apt-get update -q; apt-get install -y -q --no-install-recommends clang bc"],
        mounts=debian.apt_mounts(platform),
        env={"DEBIAN_FRONTEND": "noninteractive"},
        network="host",
        name="install clang and bc",
    ).root
    tools = llvm.builder(ctx)
    src = llvm.source(ctx)
    native = llvm.native_tablegens(ctx, tools, src)
    configured = llvm.configure(ctx, tools, src, native)
    return with_clang.run(
        ["sh", "-c", SAMPLE, "sample", ctx.arg("EVERY") or "40", ctx.arg("ROUNDS") or "2", *llvm.target_options(ctx)],
        mounts=[
            llbgen.bind("/src", src, readonly=True),
            llbgen.bind(llvm.NATIVE_DIR, native, readonly=True),
            llbgen.bind("/configured", configured, readonly=True),
            llbgen.tmpfs("/build"),
            llbgen.tmpfs("/build-clang"),
            llbgen.bind("/out", llbgen.scratch()),
        ],
        env={"TOOLS": " ".join(llvm.TOOLS), "CCACHE_DISABLE": "1"},
        network="none",
        name="compile a sample of llvm's objects with gcc and with clang",
    ).mount("/out")
