"""The Secrets session service, served by a real grpc server on a unix socket and called through
the generated client stub, as the daemon would."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from llbgen.pb import secrets_pb2, secrets_pb2_grpc
from llbgen.session.secrets import (
    MAX_SECRET_SIZE,
    Secrets,
    SecretSource,
    parse_secret_spec,
    parse_secret_specs,
)


def _socket_dir(tmp_path: Path) -> Path:
    # A unix socket path must fit in 108 bytes; pytest's tmp_path may not leave room.
    return tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="llbgen-t"))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []

    def start(service: Secrets) -> secrets_pb2_grpc.SecretsStub:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        methods = service.register(server)
        assert methods == ["/moby.buildkit.secrets.v1.Secrets/GetSecret"]
        address = f"unix:{_socket_dir(tmp_path) / f'secrets{len(servers)}.sock'}"
        server.add_insecure_port(address)
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(address)
        channels.append(channel)
        return secrets_pb2_grpc.SecretsStub(channel)

    yield start
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(grace=None)


def _get(stub: secrets_pb2_grpc.SecretsStub, secret_id: str) -> bytes:
    response = stub.GetSecret(
        secrets_pb2.GetSecretRequest(ID=secret_id, annotations={"x": "y"}), timeout=10
    )
    return bytes(response.data)


def _code(stub: secrets_pb2_grpc.SecretsStub, secret_id: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        _get(stub, secret_id)
    return info.value.code()


# -- serving ------------------------------------------------------------------------------------


def test_file_secret_is_read_at_request_time(serve, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"first\x00\xff")
    stub = serve(Secrets({"tok": SecretSource.from_file(token)}))
    assert _get(stub, "tok") == b"first\x00\xff"
    token.write_bytes(b"second")
    assert _get(stub, "tok") == b"second"


def test_env_secret_is_read_at_request_time(serve) -> None:
    environ = {"API_KEY": "s3cr3t"}
    stub = serve(Secrets({"api": SecretSource.from_env("API_KEY")}, environ=environ))
    assert _get(stub, "api") == b"s3cr3t"
    environ["API_KEY"] = "rotated"
    assert _get(stub, "api") == b"rotated"


def test_env_secret_from_process_environment(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLBGEN_TEST_SECRET", "from-os-environ")
    stub = serve(Secrets({"s": SecretSource.from_env("LLBGEN_TEST_SECRET")}))
    assert _get(stub, "s") == b"from-os-environ"


def test_unknown_id_is_not_found(serve, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    stub = serve(Secrets({"tok": SecretSource.from_file(token)}))
    assert _code(stub, "other") == grpc.StatusCode.NOT_FOUND
    assert _code(stub, "") == grpc.StatusCode.NOT_FOUND


def test_vanished_sources_are_not_found(serve, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    environ: dict[str, str] = {}
    stub = serve(
        Secrets({"f": SecretSource.from_file(token), "e": SecretSource.from_env("GONE")}, environ=environ)
    )
    token.unlink()
    assert _code(stub, "f") == grpc.StatusCode.NOT_FOUND
    assert _code(stub, "e") == grpc.StatusCode.NOT_FOUND


def test_oversized_secret_is_refused_without_its_value(serve, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"Q" * (MAX_SECRET_SIZE + 1))
    stub = serve(Secrets({"big": SecretSource.from_file(big)}))
    with pytest.raises(grpc.RpcError) as info:
        _get(stub, "big")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "QQQQ" not in (info.value.details() or "")


def test_unreadable_file_names_the_file(serve, tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    stub = serve(Secrets({"d": SecretSource.from_file(directory)}))
    with pytest.raises(grpc.RpcError) as info:
        _get(stub, "d")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "a-directory" in (info.value.details() or "")


# -- --secret parsing ---------------------------------------------------------------------------


def test_parse_file_and_env_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "token.txt").write_text("t")
    assert parse_secret_spec("id=tok,src=token.txt", {}) == ("tok", SecretSource.from_file(tmp_path / "token.txt"))
    assert parse_secret_spec("id=tok,source=token.txt", {}) == (
        "tok",
        SecretSource.from_file(tmp_path / "token.txt"),
    )
    assert parse_secret_spec("ID=tok,Type=file,SRC=token.txt", {})[1].kind == "file"
    assert parse_secret_spec("id=api,env=API_KEY", {}) == ("api", SecretSource.from_env("API_KEY"))
    # type=env reads src= as the variable name, as buildctl does.
    assert parse_secret_spec("type=env,id=api,src=API_KEY", {}) == ("api", SecretSource.from_env("API_KEY"))
    # type=env alone: the variable named like the id, set or not.
    assert parse_secret_spec("type=env,id=API_KEY", {}) == ("API_KEY", SecretSource.from_env("API_KEY"))


def test_parse_id_alone_prefers_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_secret_spec("id=TOKEN", {"TOKEN": "v"}) == ("TOKEN", SecretSource.from_env("TOKEN"))
    (tmp_path / "TOKEN").write_text("f")
    assert parse_secret_spec("id=TOKEN", {}) == ("TOKEN", SecretSource.from_file(tmp_path / "TOKEN"))
    with pytest.raises(ValueError, match="cannot read NOPE"):
        parse_secret_spec("id=NOPE", {})


def test_parse_quoted_csv_field(tmp_path: Path) -> None:
    odd = tmp_path / "a,b.txt"
    odd.write_text("x")
    assert parse_secret_spec(f'id=odd,"src={odd}"', {}) == ("odd", SecretSource.from_file(odd))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty --secret"),
        ("src=/etc/hostname", "has no id="),
        ("id=,env=X", "has no id="),
        ("id=a,bogus=1", "unknown key 'bogus'"),
        ("id=a,type=ssh", "unsupported secret type 'ssh'"),
        ("id=a,env", "expected key=value"),
        ("id=a,src=/etc/hostname,env=X", "not both"),
        ("id=a,type=file,env=X", "type=file takes src=FILE"),
        ("id=a,src=/definitely/not/here", "No such file or directory"),
        ('id=a,"src=x', "invalid --secret"),
    ],
)
def test_parse_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_secret_spec(spec, {})
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_parse_rejects_oversized_and_non_regular_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_SIZE + 1))
    with pytest.raises(ValueError, match="over the 512000-byte limit"):
        parse_secret_spec(f"id=big,src={big}", {})
    with pytest.raises(ValueError, match="not a regular file"):
        parse_secret_spec(f"id=dir,src={tmp_path}", {})


def test_parse_many_rejects_duplicates(tmp_path: Path) -> None:
    assert parse_secret_specs(["id=a,env=A", "id=b,env=B"], {}) == {
        "a": SecretSource.from_env("A"),
        "b": SecretSource.from_env("B"),
    }
    with pytest.raises(ValueError, match="more than once"):
        parse_secret_specs(["id=a,env=A", "id=a,env=B"], {})


def test_parsed_specs_serve_end_to_end(serve, tmp_path: Path) -> None:
    (tmp_path / "npmrc").write_text("//registry/:_authToken=abc\n")
    environ = {"GH_TOKEN": "ghp_example"}
    sources = parse_secret_specs([f"id=npmrc,src={tmp_path / 'npmrc'}", "id=GH_TOKEN"], environ)
    stub = serve(Secrets(sources, environ=environ))
    assert _get(stub, "npmrc") == b"//registry/:_authToken=abc\n"
    assert _get(stub, "GH_TOKEN") == b"ghp_example"
