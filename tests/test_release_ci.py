"""CI recipes: llbgen against a remote BuildKit over tcp:// with TLS and client certificates
(the stack's second daemon, scripts/stack-tls)."""

from __future__ import annotations

import pytest

from tests.test_release_publish import Project, registry
from tests.test_release_publish import repo as repo  # noqa: F401 - the fixture

pytestmark = pytest.mark.buildkit


def tls_flags(stack: dict[str, str], *, client: bool = True) -> list[str]:
    if "BUILDKIT_TLS_HOST" not in stack:
        pytest.fail("the stack has no TLS daemon: run scripts/stack-up (it runs scripts/stack-tls)")
    flags = ["--addr", stack["BUILDKIT_TLS_HOST"], "--tlscacert", stack["BUILDKIT_TLS_CACERT"]]
    if client:
        flags += ["--tlscert", stack["BUILDKIT_TLS_CERT"], "--tlskey", stack["BUILDKIT_TLS_KEY"]]
    return flags


def test_publish_on_a_remote_buildkit_over_tls(repo: Project, stack: dict[str, str]) -> None:  # noqa: F811
    reg = registry()
    repo.env.pop("BUILDKIT_HOST")
    tag = repo.llbgen("tag", "motd").stdout.strip()
    refused = repo.llbgen("publish", "--registry", reg, *tls_flags(stack, client=False), "--progress", "plain")
    assert refused.returncode == 1
    assert refused.stdout.startswith(f"motd {tag}: failed"), refused.stdout
    run = repo.llbgen("publish", "--registry", reg, *tls_flags(stack), "--progress", "plain")
    assert run.returncode == 0, run.stderr
    assert f"motd {tag}: built and pushed (2 checks passed; sha256:" in run.stdout
    assert repo.llbgen("plan", "--registry", reg).stdout.startswith(f"motd {tag}: skip")
