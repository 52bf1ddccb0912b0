"""SSH agent forwarding for the daemon: the session's ``moby.sshforward.v1.SSH`` service.

A ``RUN --mount=type=ssh[,id=ID]`` makes the daemon call ``CheckAgent{ID}`` (an empty ID means
``default``) and then bind a unix socket into the container. Each connection a process in the
container makes to that socket becomes one ``ForwardAgent`` stream, whose ``BytesMessage.data``
chunks are the raw bytes of that connection, split anyhow (the daemon's ``sshforward.Copy``
forwards 32 KiB reads). The agent id of the stream is the request metadata key
``buildkit.ssh.id`` (absent or empty: ``default``). When the container side closes, the daemon
half-closes the stream; when we end the stream, the daemon closes the container's connection.

The ssh-agent protocol (draft-miller-ssh-agent) is framed: ``uint32 length`` then ``length`` bytes
whose first is the message type, one answer per request, in order. Like BuildKit's own client,
which serves the daemon a read-only view of the agent (``sshprovider.readOnlyAgent``), only two
requests reach the real agent: ``REQUEST_IDENTITIES`` (11) and ``SIGN_REQUEST`` (13). Everything
else (adding or removing keys, lock/unlock, extensions, SSH1 requests) is answered
``SSH_AGENT_FAILURE`` (5) without being forwarded, so a build can use the keys but not change,
lock or probe the user's agent.

``--ssh`` specs follow ``buildctl``: ``ID`` (the agent at ``$SSH_AUTH_SOCK``) or ``ID=SOCKET``;
an empty ID means ``default``. Only agent sockets are supported, not private key files (load the
key with ``ssh-add`` instead), and not buildctl's ``raw=true``.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import grpc

from llbgen.pb import ssh_pb2, ssh_pb2_grpc
from llbgen.session.core import HandlerRegistry

DEFAULT_ID = "default"
ID_METADATA_KEY = "buildkit.ssh.id"

SSH_AGENT_FAILURE = 5
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
FORWARDED_REQUESTS = frozenset({SSH_AGENTC_REQUEST_IDENTITIES, SSH_AGENTC_SIGN_REQUEST})
FAILURE_FRAME = (1).to_bytes(4, "big") + bytes([SSH_AGENT_FAILURE])

MAX_REQUEST = 256 * 1024  # OpenSSH's own limit for an agent message
MAX_ANSWER = 16 << 20
_CHUNK = 32 * 1024
_CONNECT_TIMEOUT = 5.0

_METHODS = ["/moby.sshforward.v1.SSH/CheckAgent", "/moby.sshforward.v1.SSH/ForwardAgent"]


def parse_ssh_spec(text: str, environ: Mapping[str, str] | None = None) -> tuple[str, Path]:
    """Parses one ``--ssh`` value into ``(id, socket path)``; ``ValueError`` has a one-line message."""
    env = os.environ if environ is None else environ
    agent_id, sep, value = text.partition("=")
    agent_id = agent_id.strip() or DEFAULT_ID
    if sep and "," in value:
        raise ValueError(f"--ssh {agent_id}: give one agent socket (key files and raw= are not supported)")
    if sep and value:
        where = value
    else:
        where = env.get("SSH_AUTH_SOCK", "")
        if not where:
            raise ValueError(f"--ssh {agent_id}: SSH_AUTH_SOCK is not set; give --ssh {agent_id}=SOCKET")
    path = Path(where).absolute()
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ValueError(f"--ssh {agent_id}: cannot use {where}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ValueError(
            f"--ssh {agent_id}: {where} is not an agent socket (key files are not supported: ssh-add the key)"
        )
    return agent_id, path


def parse_ssh_specs(texts: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Parses several ``--ssh`` values; an id given twice is an error."""
    agents: dict[str, Path] = {}
    for text in texts:
        agent_id, path = parse_ssh_spec(text, environ)
        if agent_id in agents:
            raise ValueError(f"--ssh {agent_id} is given more than once")
        agents[agent_id] = path
    return agents


class AgentProtocolError(Exception):
    pass


class AgentGone(Exception):
    pass


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts = []
    while n:
        part = sock.recv(min(n, 1 << 20))
        if not part:
            raise AgentGone("the ssh agent closed the connection")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


class ReadOnlyAgentRelay:
    """Relays framed agent requests from ``feed`` to the agent on ``sock``, one at a time, and
    returns the answers' bytes; requests that are not forwarded get ``SSH_AGENT_FAILURE``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._pending += data
        while len(self._pending) >= 4:
            length = int.from_bytes(self._pending[:4], "big")
            if length == 0 or length > MAX_REQUEST:
                raise AgentProtocolError(f"invalid ssh-agent request length {length}")
            if len(self._pending) < 4 + length:
                return
            frame = bytes(self._pending[: 4 + length])
            del self._pending[: 4 + length]
            if frame[4] in FORWARDED_REQUESTS:
                yield self._ask(frame)
            else:
                yield FAILURE_FRAME

    def _ask(self, frame: bytes) -> bytes:
        self._sock.sendall(frame)
        header = _recv_exactly(self._sock, 4)
        length = int.from_bytes(header, "big")
        if length == 0 or length > MAX_ANSWER:
            raise AgentProtocolError(f"invalid ssh-agent answer length {length}")
        return header + _recv_exactly(self._sock, length)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class SSHForwarder:
    """The ``SSH`` session service over ``agents`` (id -> agent socket path)."""

    def __init__(self, agents: Mapping[str, Path]) -> None:
        self._agents = {agent_id or DEFAULT_ID: Path(path) for agent_id, path in agents.items()}

    @property
    def ids(self) -> list[str]:
        return sorted(self._agents)

    def register(self, server: HandlerRegistry) -> list[str]:
        ssh_pb2_grpc.add_SSHServicer_to_server(_SSHServicer(self), server)  # type: ignore[no-untyped-call]
        return list(_METHODS)

    def agent(self, agent_id: str) -> Path | None:
        return self._agents.get(agent_id or DEFAULT_ID)

    def connect(self, agent_id: str) -> socket.socket:
        """A connection to the agent of ``agent_id``. Raises ``KeyError`` or ``OSError``."""
        path = self._agents[agent_id or DEFAULT_ID]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_CONNECT_TIMEOUT)
            sock.connect(os.fspath(path))
            # Signing may wait for the user to confirm (ssh-add -c): no timeout from here on.
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        return sock


class _SSHServicer(ssh_pb2_grpc.SSHServicer):
    def __init__(self, forwarder: SSHForwarder) -> None:
        self._forwarder = forwarder

    def CheckAgent(
        self, request: ssh_pb2.CheckAgentRequest, context: grpc.ServicerContext
    ) -> ssh_pb2.CheckAgentResponse:
        agent_id = request.ID or DEFAULT_ID
        if self._forwarder.agent(agent_id) is None:
            context.abort(grpc.StatusCode.NOT_FOUND, _not_forwarded(agent_id))
        return ssh_pb2.CheckAgentResponse()

    def ForwardAgent(
        self, request_iterator: Iterator[ssh_pb2.BytesMessage], context: grpc.ServicerContext
    ) -> Iterator[ssh_pb2.BytesMessage]:
        agent_id = DEFAULT_ID
        for key, value in context.invocation_metadata():
            if key == ID_METADATA_KEY and value:
                agent_id = value if isinstance(value, str) else value.decode()
                break
        path = self._forwarder.agent(agent_id)
        if path is None:
            context.abort(grpc.StatusCode.NOT_FOUND, _not_forwarded(agent_id))
        try:
            sock = self._forwarder.connect(agent_id)
        except OSError as exc:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot connect to ssh agent {agent_id} at {path}: {exc.strerror or type(exc).__name__}",
            )
        # Ending the call (cancellation included) unblocks a thread waiting on the agent.
        context.add_callback(lambda: _close(sock))
        relay = ReadOnlyAgentRelay(sock)
        try:
            for message in request_iterator:
                for answer in relay.feed(message.data):
                    for start in range(0, len(answer), _CHUNK):
                        yield ssh_pb2.BytesMessage(data=answer[start : start + _CHUNK])
        except AgentProtocolError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ssh agent {agent_id}: {exc}")
        except (AgentGone, OSError) as exc:
            if context.is_active():
                context.abort(grpc.StatusCode.UNAVAILABLE, f"ssh agent {agent_id}: {exc}")
        finally:
            _close(sock)


def _not_forwarded(agent_id: str) -> str:
    return f"no SSH agent {agent_id!r} forwarded by llbgen (use --ssh {agent_id}[=SOCKET])"
