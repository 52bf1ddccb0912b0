"""The Auth session service: the docker-credential-env variables, docker's config.json, real
credential helper programs, and the UNIMPLEMENTED token methods, called through the generated
client stub over a unix socket as the daemon would."""

from __future__ import annotations

import base64
import json
import logging
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from llbgen.pb import auth_pb2, auth_pb2_grpc
from llbgen.session.auth import Auth, RegistryCredentials, config_key, env_prefix

HUB_KEY = "https://index.docker.io/v1/"
HELPER = "llbgentest"


def _socket_dir(tmp_path: Path) -> Path:
    # A unix socket path must fit in 108 bytes; pytest's tmp_path may not leave room.
    return tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="llbgen-t"))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []

    def start(service: Auth) -> auth_pb2_grpc.AuthStub:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        assert service.register(server) == [
            "/moby.filesync.v1.Auth/Credentials",
            "/moby.filesync.v1.Auth/FetchToken",
            "/moby.filesync.v1.Auth/GetTokenAuthority",
            "/moby.filesync.v1.Auth/VerifyTokenAuthority",
        ]
        address = f"unix:{_socket_dir(tmp_path) / f'auth{len(servers)}.sock'}"
        server.add_insecure_port(address)
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return auth_pb2_grpc.AuthStub(channel)

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(grace=None)


def _ask(stub: auth_pb2_grpc.AuthStub, host: str) -> tuple[str, str]:
    response = stub.Credentials(auth_pb2.CredentialsRequest(Host=host), timeout=30)
    return response.Username, response.Secret


def _write_config(directory: Path, config: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeHelper:
    """``docker-credential-llbgentest``: a real executable on a private PATH. It answers ``get``
    from ``answers`` (server URL -> {"Username", "Secret"} | "notfound" | "fail" | "hang") and
    records every server URL it was asked about."""

    def __init__(self, directory: Path) -> None:
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        self.answers_file = directory / "answers.json"
        self.asked_file = directory / "asked.txt"
        self.answers: dict[str, object] = {}
        script = self.bin / f"docker-credential-{HELPER}"
        script.write_text(
            f"#!{sys.executable}\n"
            + textwrap.dedent(
                f"""\
                import json, sys, time
                assert sys.argv[1:] == ["get"], sys.argv
                url = sys.stdin.read().strip()
                with open({str(self.asked_file)!r}, "a") as f:
                    f.write(url + "\\n")
                answer = json.load(open({str(self.answers_file)!r})).get(url, "notfound")
                if answer == "notfound":
                    print("credentials not found in native keychain")
                    sys.exit(1)
                if isinstance(answer, dict) and answer.get("fail"):
                    # A broken helper that prints the secret it holds on both streams.
                    print("oops " + answer["fail"])
                    print("stderr " + answer["fail"], file=sys.stderr)
                    sys.exit(3)
                if answer == "hang":
                    time.sleep(30)
                if answer == "garbage":
                    print("this is not json")
                    sys.exit(0)
                json.dump(dict(answer, ServerURL=url), sys.stdout)
                """
            )
        )
        script.chmod(0o755)
        self.save()

    def save(self) -> None:
        self.answers_file.write_text(json.dumps(self.answers))

    def asked(self) -> list[str]:
        return self.asked_file.read_text().split() if self.asked_file.exists() else []

    def environ(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{self.bin}:/usr/bin:/bin", **extra}


# -- the docker-credential-env scheme -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "prefix"),
    [
        ("registry-1.docker.io", "DOCKER_HUB"),
        ("docker.io", "DOCKER_HUB"),
        ("index.docker.io", "DOCKER_HUB"),
        ("Registry-1.Docker.IO:443", "DOCKER_HUB"),
        ("quay.io", "QUAY"),
        ("cdn02.quay.io", "QUAY"),
        ("ghcr.io", "ANY_REGISTRY"),
        ("gcr.io", "ANY_REGISTRY"),
        ("europe-docker.pkg.dev", "ANY_REGISTRY"),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "ANY_REGISTRY"),
        ("myregistry.azurecr.io", "ANY_REGISTRY"),
        ("127.0.0.1:5000", "ANY_REGISTRY"),
        ("[::1]:5000", "ANY_REGISTRY"),
        ("notdocker.io", "ANY_REGISTRY"),
        ("quay.io.evil.example", "ANY_REGISTRY"),
    ],
)
def test_env_prefix_table(host: str, prefix: str) -> None:
    assert env_prefix(host) == prefix


ENV = {
    "DOCKER_HUB_USERNAME": "hubuser",
    "DOCKER_HUB_PASSWORD": "hubpass",
    "QUAY_USERNAME": "quayuser",
    "QUAY_PASSWORD": "quaypass",
    "ANY_REGISTRY_USERNAME": "anyuser",
    "ANY_REGISTRY_PASSWORD": "anypass",
}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("registry-1.docker.io", ("hubuser", "hubpass")),
        ("docker.io", ("hubuser", "hubpass")),
        ("quay.io", ("quayuser", "quaypass")),
        ("ghcr.io", ("anyuser", "anypass")),
        ("127.0.0.1:5000", ("anyuser", "anypass")),
    ],
)
def test_env_credentials_by_host(serve, tmp_path: Path, host: str, expected: tuple[str, str]) -> None:
    stub = serve(Auth(tmp_path / "no-docker-config", ENV))
    assert _ask(stub, host) == expected


def test_host_prefix_never_falls_back_to_any_registry(serve, tmp_path: Path) -> None:
    only_any = {"ANY_REGISTRY_USERNAME": "anyuser", "ANY_REGISTRY_PASSWORD": "anypass"}
    stub = serve(Auth(tmp_path / "no-docker-config", only_any))
    assert _ask(stub, "registry-1.docker.io") == ("", "")
    assert _ask(stub, "quay.io") == ("", "")
    assert _ask(stub, "ghcr.io") == ("anyuser", "anypass")


def test_env_beats_docker_config_and_public_access_only_beats_both(serve, tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "docker",
        {"auths": {HUB_KEY: {"auth": _b64("fileuser:filepass")}, "ghcr.io": {"auth": _b64("g:h")}}},
    )
    stub = serve(Auth(config, {"DOCKER_HUB_USERNAME": "envuser", "DOCKER_HUB_PASSWORD": "envpass"}))
    assert _ask(stub, "registry-1.docker.io") == ("envuser", "envpass")
    assert _ask(stub, "ghcr.io") == ("g", "h")  # no ANY_REGISTRY variables: config.json

    for value in ("true", "TRUE", "1"):
        stub = serve(Auth(config, {**ENV, "DOCKER_HUB_PUBLIC_ACCESS_ONLY": value}))
        assert _ask(stub, "registry-1.docker.io") == ("", "")
        assert _ask(stub, "ghcr.io") == ("anyuser", "anypass")
    stub = serve(Auth(config, {"DOCKER_HUB_PUBLIC_ACCESS_ONLY": "false"}))
    assert _ask(stub, "registry-1.docker.io") == ("fileuser", "filepass")
    stub = serve(Auth(config, {"ANY_REGISTRY_PUBLIC_ACCESS_ONLY": "true"}))
    assert _ask(stub, "ghcr.io") == ("", "")
    assert _ask(stub, "docker.io") == ("fileuser", "filepass")


def test_half_configured_env_is_an_error_naming_the_variable(serve, tmp_path: Path) -> None:
    stub = serve(Auth(tmp_path, {"QUAY_USERNAME": "quayuser"}))
    with pytest.raises(grpc.RpcError) as info:
        _ask(stub, "quay.io")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "QUAY_PASSWORD" in info.value.details()
    assert "quayuser" not in info.value.details()

    stub = serve(Auth(tmp_path, {"ANY_REGISTRY_PASSWORD": "anypass"}))
    with pytest.raises(grpc.RpcError) as info:
        _ask(stub, "ghcr.io")
    assert "ANY_REGISTRY_USERNAME" in info.value.details()
    assert "anypass" not in info.value.details()


# -- config.json --------------------------------------------------------------------------------


def test_config_key_mapping() -> None:
    assert config_key("registry-1.docker.io") == HUB_KEY
    assert config_key("docker.io") == HUB_KEY
    assert config_key("index.docker.io") == HUB_KEY
    assert config_key("127.0.0.1:5000") == "127.0.0.1:5000"
    assert config_key("ghcr.io") == "ghcr.io"


def test_auths_decoding(serve, tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "docker",
        {
            "auths": {
                HUB_KEY: {"auth": _b64("hub:pa:ss:word")},
                "127.0.0.1:5000": {"auth": _b64("local:localpass")},
                "plain.example": {"username": "plainuser", "password": "plainpass"},
                "both.example": {"auth": _b64("fromauth:x"), "username": "ignored", "password": "ignored"},
                "token.example": {"auth": _b64("user:pass"), "identitytoken": "refresh-token"},
                "https://legacy.example:5001/v2/": {"auth": _b64("old:oldpass")},
                "empty.example": {},
            },
            "credHelpers": {"elsewhere.example": HELPER},
        },
    )
    stub = serve(Auth(config, {}))
    assert _ask(stub, "registry-1.docker.io") == ("hub", "pa:ss:word")
    assert _ask(stub, "docker.io") == ("hub", "pa:ss:word")
    assert _ask(stub, "127.0.0.1:5000") == ("local", "localpass")
    assert _ask(stub, "127.0.0.1:5001") == ("", "")
    assert _ask(stub, "plain.example") == ("plainuser", "plainpass")
    assert _ask(stub, "both.example") == ("fromauth", "x")
    assert _ask(stub, "token.example") == ("", "refresh-token")
    assert _ask(stub, "legacy.example:5001") == ("old", "oldpass")
    assert _ask(stub, "empty.example") == ("", "")
    assert _ask(stub, "unknown.example") == ("", "")


def test_docker_config_env_var_and_missing_file(serve, tmp_path: Path) -> None:
    config = _write_config(tmp_path / "elsewhere", {"auths": {"ghcr.io": {"auth": _b64("u:p")}}})
    assert _ask(serve(Auth(None, {"DOCKER_CONFIG": str(config)})), "ghcr.io") == ("u", "p")
    home = tmp_path / "home"
    _write_config(home / ".docker", {"auths": {"ghcr.io": {"auth": _b64("h:q")}}})
    assert _ask(serve(Auth(None, {"HOME": str(home)})), "ghcr.io") == ("h", "q")
    assert _ask(serve(Auth(tmp_path / "nothing-here", {})), "ghcr.io") == ("", "")


def test_broken_config_errors_do_not_quote_it(serve, tmp_path: Path) -> None:
    bad_b64 = _write_config(tmp_path / "b64", {"auths": {"ghcr.io": {"auth": "c2VjcmV0LXdpdGhvdXQtY29sb24="}}})
    with pytest.raises(grpc.RpcError) as info:
        _ask(serve(Auth(bad_b64, {})), "ghcr.io")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "auths['ghcr.io'].auth" in info.value.details()
    assert "c2VjcmV0" not in info.value.details() and "secret" not in info.value.details()

    not_json = tmp_path / "notjson"
    not_json.mkdir()
    (not_json / "config.json").write_text('{"auths": {"ghcr.io": {"auth": hunter2}}}')
    with pytest.raises(grpc.RpcError) as info:
        _ask(serve(Auth(not_json, {})), "ghcr.io")
    assert "not valid JSON" in info.value.details()
    assert "hunter2" not in info.value.details()


# -- credential helpers -------------------------------------------------------------------------


def test_cred_helpers_and_creds_store(serve, tmp_path: Path) -> None:
    helper = FakeHelper(tmp_path / "helper")
    helper.answers = {
        HUB_KEY: {"Username": "hubuser", "Secret": "hubsecret"},
        "127.0.0.1:5000": {"Username": "<token>", "Secret": "identity-token"},
        "ghcr.io": {"username": "lower", "secret": "case"},
    }
    helper.save()
    config = _write_config(
        tmp_path / "docker",
        {
            "credHelpers": {HUB_KEY: HELPER, "127.0.0.1:5000": HELPER},
            "credsStore": HELPER,
            # A helper is configured for every host, so inline auths are not used (as in docker).
            "auths": {HUB_KEY: {"auth": _b64("inline:inline")}, "nothere.example": {"auth": _b64("a:b")}},
        },
    )
    stub = serve(Auth(config, helper.environ()))
    assert _ask(stub, "registry-1.docker.io") == ("hubuser", "hubsecret")
    assert _ask(stub, "127.0.0.1:5000") == ("", "identity-token")
    assert _ask(stub, "ghcr.io") == ("lower", "case")  # via credsStore
    assert _ask(stub, "nothere.example") == ("", "")  # "credentials not found": anonymous
    assert helper.asked() == [HUB_KEY, "127.0.0.1:5000", "ghcr.io", "nothere.example"]
    # Answers are kept in memory for a while: asking again does not run the helper again.
    assert _ask(stub, "registry-1.docker.io") == ("hubuser", "hubsecret")
    assert helper.asked().count(HUB_KEY) == 1


def test_cred_helper_for_one_host_only(serve, tmp_path: Path) -> None:
    helper = FakeHelper(tmp_path / "helper")
    helper.answers = {"ghcr.io": {"Username": "helperuser", "Secret": "helpersecret"}}
    helper.save()
    config = _write_config(
        tmp_path / "docker",
        {"credHelpers": {"ghcr.io": HELPER}, "auths": {"quay.io": {"auth": _b64("q:r")}}},
    )
    stub = serve(Auth(config, helper.environ()))
    assert _ask(stub, "ghcr.io") == ("helperuser", "helpersecret")
    assert _ask(stub, "quay.io") == ("q", "r")
    assert helper.asked() == ["ghcr.io"]


def test_env_beats_helpers(serve, tmp_path: Path) -> None:
    helper = FakeHelper(tmp_path / "helper")
    helper.answers = {"ghcr.io": {"Username": "helperuser", "Secret": "helpersecret"}}
    helper.save()
    config = _write_config(tmp_path / "docker", {"credsStore": HELPER})
    environ = helper.environ(ANY_REGISTRY_USERNAME="envuser", ANY_REGISTRY_PASSWORD="envpass")
    assert _ask(serve(Auth(config, environ)), "ghcr.io") == ("envuser", "envpass")
    assert helper.asked() == []


def test_failing_helper_leaks_nothing(serve, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "SUPERSECRET-2f9c1e"
    helper = FakeHelper(tmp_path / "helper")
    helper.answers = {"ghcr.io": {"fail": secret}, "good.example": {"Username": "u", "Secret": secret}}
    helper.save()
    config = _write_config(tmp_path / "docker", {"credsStore": HELPER})
    caplog.set_level(logging.DEBUG)
    stub = serve(Auth(config, helper.environ()))
    with pytest.raises(grpc.RpcError) as info:
        _ask(stub, "ghcr.io")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details()
    assert f"docker-credential-{HELPER}" in details and "ghcr.io" in details
    assert secret not in details and secret not in str(info.value) and secret not in repr(info.value)
    # A good answer is not logged either.
    assert _ask(stub, "good.example") == ("u", secret)
    assert caplog.records, "the lookups log which source they used"
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in record.getMessage()
    assert secret not in repr(Auth(config, helper.environ()).credentials("good.example"))


def test_helper_direct_errors_hold_no_secret(tmp_path: Path) -> None:
    secret = "SUPERSECRET-77aa"
    helper = FakeHelper(tmp_path / "helper")
    helper.answers = {"ghcr.io": {"fail": secret}}
    helper.save()
    config = _write_config(tmp_path / "docker", {"credsStore": HELPER})
    auth = Auth(config, helper.environ())
    with pytest.raises(Exception) as info:
        auth.credentials("ghcr.io")
    assert secret not in str(info.value)
    chained = info.value.__cause__ or info.value.__context__
    assert chained is None or secret not in repr(chained)


def test_helper_problems_are_clear_errors(serve, tmp_path: Path) -> None:
    helper = FakeHelper(tmp_path / "helper")
    helper.answers = {"hang.example": "hang", "garbage.example": "garbage"}
    helper.save()
    config = _write_config(tmp_path / "docker", {"credsStore": HELPER, "credHelpers": {"gone.example": "absent"}})
    stub = serve(Auth(config, helper.environ(), helper_timeout=1.0))
    cases = {
        "hang.example": (grpc.StatusCode.DEADLINE_EXCEEDED, "did not answer"),
        "garbage.example": (grpc.StatusCode.FAILED_PRECONDITION, "malformed output"),
        "gone.example": (grpc.StatusCode.FAILED_PRECONDITION, "docker-credential-absent"),
    }
    for host, (code, words) in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            _ask(stub, host)
        assert info.value.code() == code, host
        assert words in info.value.details() and host in info.value.details()


def test_registry_credentials_repr_hides_secret() -> None:
    assert "hidden" not in repr(RegistryCredentials("user", "hidden"))


# -- the token methods --------------------------------------------------------------------------


def test_token_methods_are_unimplemented(serve, tmp_path: Path) -> None:
    stub = serve(Auth(tmp_path, {}))
    calls = [
        lambda: stub.FetchToken(auth_pb2.FetchTokenRequest(Host="ghcr.io", Scopes=["repository:a:pull"])),
        lambda: stub.GetTokenAuthority(auth_pb2.GetTokenAuthorityRequest(Host="ghcr.io", Salt=b"s")),
        lambda: stub.VerifyTokenAuthority(
            auth_pb2.VerifyTokenAuthorityRequest(Host="ghcr.io", Payload=b"p", Salt=b"s")
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
