# Opt-in end-to-end builds that are too long for CI (scripts/test, .ci/run).
#
#   make e2e-llvm      the full llvm image (clang, llc, llvm-objcopy, llvm-strip; BPF only, static)
#                      for linux/amd64 and linux/arm64 (cross-compiled), then its structure tests
#                      on both platforms (arm64 under QEMU). About two hours per platform on a
#                      2-core machine with ccache cold (README: amd64 alone 123 minutes, both
#                      131.5 minutes with one platform partly warm); CI runs only STAGE=configure
#                      (tests/test_llvm.py).
#   make e2e-maker     the maker image's structure tests on linux/amd64 and linux/arm64 (arm64's
#                      Debian packages install under QEMU, 16 minutes cold beside the compiles: both
#                      platforms 19.6 minutes cold on this loaded 2-core machine, linux/amd64
#                      alone 6.7); CI tests linux/amd64 (tests/test_maker.py).
#                      MAKER_ARGS: more llbgen options (the machine's CA bundle is passed as the
#                      optional ca-certificates secret when it exists).
#
# Variables: LLVM_PLATFORMS, LLVM_ARGS (more llbgen options, e.g. --arg JOBS=4 or
# --arg COMPILERS=REF@sha256:...), LLVM_OUTPUT (an -o spec for the build, e.g.
# type=oci,dest=llvm.tar; default: the image stays in the build cache, where the tests take it).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

LLVM_PLATFORMS ?= linux/amd64,linux/arm64
LLVM_ARGS ?=
LLVM_OUTPUT ?=

MAKER_ARGS ?= $(if $(wildcard /etc/ssl/certs/ca-certificates.crt),--secret id=ca-certificates$(comma)src=/etc/ssl/certs/ca-certificates.crt)
comma := ,

.PHONY: e2e-llvm e2e-maker
e2e-llvm:
	scripts/stack-up
	time scripts/llbgen build llvm --platform $(LLVM_PLATFORMS) --progress plain $(LLVM_ARGS) $(if $(LLVM_OUTPUT),-o $(LLVM_OUTPUT))
	time scripts/llbgen test llvm --platform $(LLVM_PLATFORMS) -v --progress plain $(LLVM_ARGS)

e2e-maker:
	scripts/stack-up
	time scripts/llbgen test maker --platform linux/amd64,linux/arm64 -v --progress plain $(MAKER_ARGS)
