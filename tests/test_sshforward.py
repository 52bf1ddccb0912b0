"""SSH agent forwarding against a real ``ssh-agent``: the forwarder is served by a grpc server on a
unix socket, and the daemon's side (a unix socket whose connections become ``ForwardAgent``
streams) is played by a pump in this file, so real OpenSSH tools can talk through it."""

from __future__ import annotations

import base64
import os
import queue
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llbgen.pb import ssh_pb2, ssh_pb2_grpc
from llbgen.session.core import ServiceServer
from llbgen.session.sshforward import ID_METADATA_KEY, SSHForwarder, parse_ssh_spec, parse_ssh_specs


@pytest.fixture(autouse=True)
def openssh_client() -> None:
    """The real ssh-agent is what these tests forward: without it they fail, never skip."""
    missing = [tool for tool in ("ssh-agent", "ssh-add", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install openssh-client (scripts/setup-dev does)")


REQUEST_IDENTITIES = bytes([0, 0, 0, 1, 11])
REMOVE_ALL_IDENTITIES = bytes([0, 0, 0, 1, 19])
FAILURE = bytes([0, 0, 0, 1, 5])


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket paths must fit in 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="llbgen-ssh-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Agent:
    """A real ssh-agent on its own socket, holding one freshly generated key."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / f"{name}.sock"
        self.proc = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(self.socket)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.02)
        key = directory / f"{name}_key"
        self.comment = f"llbgen-test-{name}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.comment, "-f", str(key)],
            check=True,
        )
        subprocess.run(["ssh-add", "-q", str(key)], env=self.env(), check=True, capture_output=True)
        key.unlink()  # from now on only the agent can sign with it
        self.public_key_file = key.with_suffix(".pub")
        kind, blob, _ = self.public_key_file.read_text().split(" ", 2)
        self.public_key = f"{kind} {blob}"
        self.blob = base64.b64decode(blob)

    def env(self, sock: Path | None = None) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SSH_AUTH_SOCK": str(sock or self.socket)}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def agents(short_dir: Path) -> Iterator[dict[str, Agent]]:
    started: dict[str, Agent] = {}
    try:
        started["default"] = Agent(short_dir / "a", "default")
        started["work"] = Agent(short_dir / "b", "work")
        yield started
    finally:
        for agent in started.values():
            agent.stop()


@pytest.fixture
def stub(short_dir: Path, agents: dict[str, Agent]) -> Iterator[ssh_pb2_grpc.SSHStub]:
    """The forwarder served as a session serves it (ServiceServer)."""
    forwarder = SSHForwarder({name: agent.socket for name, agent in agents.items()})
    server = ServiceServer([forwarder], short_dir / "session.sock")
    assert server.methods[1:] == [
        "/moby.sshforward.v1.SSH/CheckAgent",
        "/moby.sshforward.v1.SSH/ForwardAgent",
    ]
    channel = grpc.insecure_channel(f"unix:{server.path}")
    yield ssh_pb2_grpc.SSHStub(channel)
    channel.close()
    server.close()


class DaemonSide:
    """What the daemon does for an ssh mount: a unix socket where each connection becomes a
    ForwardAgent stream with the agent id in the metadata, bytes pumped both ways."""

    def __init__(self, stub: ssh_pb2_grpc.SSHStub, path: Path, agent_id: str | None) -> None:
        self.stub = stub
        self.path = path
        self.agent_id = agent_id
        self.errors: list[grpc.RpcError] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        def outgoing() -> Iterator[ssh_pb2.BytesMessage]:
            while True:
                try:
                    data = conn.recv(32 * 1024)
                except OSError:
                    return
                if not data:
                    return
                yield ssh_pb2.BytesMessage(data=data)

        metadata = [(ID_METADATA_KEY, self.agent_id)] if self.agent_id is not None else []
        try:
            for message in self.stub.ForwardAgent(outgoing(), metadata=metadata):
                conn.sendall(message.data)
        except grpc.RpcError as exc:
            self.errors.append(exc)
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def daemon_side(stub: ssh_pb2_grpc.SSHStub, short_dir: Path) -> Iterator[object]:
    made: list[DaemonSide] = []

    def make(agent_id: str | None) -> DaemonSide:
        side = DaemonSide(stub, short_dir / f"container{len(made)}.sock", agent_id)
        made.append(side)
        return side

    yield make
    for side in made:
        side.close()


class Stream:
    """One ForwardAgent call driven by hand: ``send`` chunks, ``recv`` exact byte counts."""

    def __init__(self, stub: ssh_pb2_grpc.SSHStub, metadata: list[tuple[str, str]]) -> None:
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self._call = stub.ForwardAgent(self._requests(), metadata=metadata, timeout=30)
        self._buffer = b""

    def _requests(self) -> Iterator[ssh_pb2.BytesMessage]:
        while (data := self._out.get()) is not None:
            yield ssh_pb2.BytesMessage(data=data)

    def send(self, data: bytes) -> None:
        self._out.put(data)

    def recv(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += next(self._call).data
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def recv_frame(self) -> bytes:
        (length,) = struct.unpack(">I", self.recv(4))
        return self.recv(length)

    def close(self) -> list[bytes]:
        """Half-closes our side and returns whatever else arrives before the stream ends."""
        self._out.put(None)
        return [message.data for message in self._call]


def _parse_identities(frame: bytes) -> list[tuple[bytes, str]]:
    assert frame[0] == 12, f"expected SSH_AGENT_IDENTITIES_ANSWER, got type {frame[0]}"
    (count,) = struct.unpack(">I", frame[1:5])
    at, found = 5, []
    for _ in range(count):
        fields = []
        for _ in range(2):
            (size,) = struct.unpack(">I", frame[at : at + 4])
            fields.append(frame[at + 4 : at + 4 + size])
            at += 4 + size
        found.append((fields[0], fields[1].decode()))
    assert at == len(frame)
    return found


# -- CheckAgent ---------------------------------------------------------------------------------


def test_check_agent(stub: ssh_pb2_grpc.SSHStub) -> None:
    stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID="default"), timeout=10)
    stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID=""), timeout=10)  # empty means default
    stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID="work"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        stub.CheckAgent(ssh_pb2.CheckAgentRequest(ID="nope"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in info.value.details()


# -- ForwardAgent on the wire -------------------------------------------------------------------


def test_raw_agent_protocol_both_ways(stub: ssh_pb2_grpc.SSHStub, agents: dict[str, Agent]) -> None:
    stream = Stream(stub, [(ID_METADATA_KEY, "default")])
    # One request split across two messages.
    stream.send(REQUEST_IDENTITIES[:2])
    stream.send(REQUEST_IDENTITIES[2:])
    assert _parse_identities(stream.recv_frame()) == [(agents["default"].blob, "llbgen-test-default")]
    # Two requests in one message: the second is refused without reaching the agent.
    stream.send(REQUEST_IDENTITIES + REMOVE_ALL_IDENTITIES)
    assert _parse_identities(stream.recv_frame())[0][1] == "llbgen-test-default"
    assert stream.recv(5) == FAILURE
    assert stream.close() == []
    # The refused request did not reach the agent: the key is still there.
    listed = subprocess.run(["ssh-add", "-L"], env=agents["default"].env(), capture_output=True, text=True)
    assert listed.returncode == 0 and agents["default"].public_key in listed.stdout, listed.stderr


def test_agent_id_comes_from_metadata(stub: ssh_pb2_grpc.SSHStub, agents: dict[str, Agent]) -> None:
    for metadata, comment in (([(ID_METADATA_KEY, "work")], "llbgen-test-work"), ([], "llbgen-test-default")):
        stream = Stream(stub, metadata)
        stream.send(REQUEST_IDENTITIES)
        assert _parse_identities(stream.recv_frame()) == [(agents[comment.rsplit("-", 1)[1]].blob, comment)]
        assert stream.close() == []


def test_unknown_agent_id_is_not_found(stub: ssh_pb2_grpc.SSHStub) -> None:
    stream = Stream(stub, [(ID_METADATA_KEY, "nope")])
    stream.send(REQUEST_IDENTITIES)
    with pytest.raises(grpc.RpcError) as info:
        stream.recv_frame()
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_agent_gone_is_unavailable(stub: ssh_pb2_grpc.SSHStub, agents: dict[str, Agent]) -> None:
    agents["work"].stop()
    agents["work"].socket.unlink(missing_ok=True)
    stream = Stream(stub, [(ID_METADATA_KEY, "work")])
    stream.send(REQUEST_IDENTITIES)
    with pytest.raises(grpc.RpcError) as info:
        stream.recv_frame()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    agents["work"].proc.poll()


def test_malformed_request_ends_the_stream(stub: ssh_pb2_grpc.SSHStub) -> None:
    stream = Stream(stub, [(ID_METADATA_KEY, "default")])
    stream.send(b"\xff\xff\xff\xff")
    with pytest.raises(grpc.RpcError) as info:
        stream.recv_frame()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- real OpenSSH clients through the forwarder -------------------------------------------------


def test_ssh_add_lists_keys_through_forwarder(daemon_side, agents: dict[str, Agent]) -> None:
    for agent_id in ("default", "work"):
        side = daemon_side(agent_id)
        listed = subprocess.run(
            ["ssh-add", "-L"], env=agents[agent_id].env(side.path), capture_output=True, text=True, timeout=30
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == [*agents[agent_id].public_key.split(), f"llbgen-test-{agent_id}"]
        assert side.errors == []


def test_signing_through_forwarder(daemon_side, agents: dict[str, Agent], short_dir: Path) -> None:
    side = daemon_side("default")
    agent = agents["default"]
    data = short_dir / "data.txt"
    data.write_text("signed through llbgen's ssh forwarder\n")
    signed = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-n", "llbgen-test", "-f", str(agent.public_key_file), str(data)],
        env=agent.env(side.path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert signed.returncode == 0, signed.stderr
    signers = short_dir / "allowed_signers"
    signers.write_text(f"tester {agent.public_key}\n")
    with data.open("rb") as stdin:
        verified = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-n", "llbgen-test", "-f", str(signers), "-I", "tester",
             "-s", f"{data}.sig"],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_forwarded_agent_is_read_only(daemon_side, agents: dict[str, Agent], short_dir: Path) -> None:
    side = daemon_side("default")
    agent = agents["default"]
    removed = subprocess.run(["ssh-add", "-D"], env=agent.env(side.path), capture_output=True, timeout=30)
    assert removed.returncode != 0
    extra = short_dir / "extra_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(extra)], check=True)
    added = subprocess.run(["ssh-add", str(extra)], env=agent.env(side.path), capture_output=True, timeout=30)
    assert added.returncode != 0
    locked = subprocess.run(
        ["ssh-add", "-x"], env=agent.env(side.path), input=b"pw\npw\n", capture_output=True, timeout=30
    )
    assert locked.returncode != 0
    listed = subprocess.run(["ssh-add", "-L"], env=agent.env(), capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[:2] == agent.public_key.split()
    assert len(listed.stdout.splitlines()) == 1


# -- --ssh parsing ------------------------------------------------------------------------------


def test_parse_ssh_specs(agents: dict[str, Agent], short_dir: Path) -> None:
    default, work = agents["default"].socket, agents["work"].socket
    environ = {"SSH_AUTH_SOCK": str(default)}
    assert parse_ssh_spec("default", environ) == ("default", default)
    assert parse_ssh_spec("", environ) == ("default", default)
    assert parse_ssh_spec(f"work={work}", environ) == ("work", work)
    assert parse_ssh_spec(f"={work}", environ) == ("default", work)
    assert parse_ssh_spec("github=", environ) == ("github", default)
    assert parse_ssh_specs(["default", f"work={work}"], environ) == {"default": default, "work": work}
    with pytest.raises(ValueError, match="more than once"):
        parse_ssh_specs(["default", f"default={work}"], environ)


@pytest.mark.parametrize(
    ("spec", "environ", "message"),
    [
        ("default", {}, "SSH_AUTH_SOCK is not set"),
        ("default=/no/such/agent.sock", {}, "No such file or directory"),
        ("default=/etc/hostname", {}, "is not an agent socket"),
        ("default=/a.sock,/b.sock", {}, "give one agent socket"),
        ("default=/a.sock,raw=true", {}, "raw= are not supported"),
    ],
)
def test_parse_ssh_spec_errors(spec: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_ssh_spec(spec, environ)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
