"""File transfer services of the session (llbgen.session.filesync).

The daemon is played by gRPC clients in this process, talking to a real ``grpc.server`` on a unix
socket: one pulls a directory like BuildKit's local source does, one pushes a tree like the local
exporter does, and a relay connects our sender to our receiver for round trips.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import grpc
import pytest

from llbgen.pb import filesync_pb2, fsutil_stat_pb2, fsutil_wire_pb2
from llbgen.session.bridge import Bridge
from llbgen.session.core import ServiceServer
from llbgen.session.filesync import (
    MODE_CHAR_DEVICE,
    MODE_DEVICE,
    MODE_DIR,
    MODE_NAMED_PIPE,
    MODE_SETGID,
    MODE_SETUID,
    MODE_STICKY,
    MODE_SYMLINK,
    DirectoryTarget,
    FileSend,
    FileSync,
    FileSyncError,
    StreamTarget,
    decode_metadata,
    go_file_mode,
    posix_mode,
    resolve_follow_paths,
    walk,
)
from tests.conftest import ROOT

Packet = fsutil_wire_pb2.Packet
Stat = fsutil_stat_pb2.Stat
IS_ROOT = os.geteuid() == 0
OPTIONS = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]


# -- harness ------------------------------------------------------------------------------------


class _SocketOut:
    """The bridge's bytes for the client, written to the client's socket."""

    size = 0

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def data_received(self, data: bytes) -> None:
        self.writer.write(data)


async def _front(server: ServiceServer, path: Path) -> asyncio.AbstractServer:
    """A socket whose connections end in a Bridge to ``server``, as the session stream does."""

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bridge = Bridge(server.direct, server.path, _SocketOut(writer))
        await bridge.start()
        try:
            while data := await reader.read(1 << 16):
                bridge.receive(data)
        finally:
            bridge.close()
            writer.close()

    return await asyncio.start_unix_server(connected, path=str(path))


async def _close(front: asyncio.AbstractServer) -> None:
    front.close()


@pytest.fixture(params=["server", "bridge"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., grpc.Channel]]:
    """Serves the given services as a session does: on the session's server (ServiceServer) on a
    private unix socket, or through the Bridge that ends the session's connection."""
    servers: list[ServiceServer] = []
    fronts: list[asyncio.AbstractServer] = []
    dirs: list[str] = []

    def start(*services: Any) -> grpc.Channel:
        sock_dir = tempfile.mkdtemp(prefix="fs-test-", dir="/tmp")  # short: unix socket paths are limited
        dirs.append(sock_dir)
        server = ServiceServer(services, Path(sock_dir) / "s.sock")
        servers.append(server)
        path = server.path
        if request.param == "bridge":
            path = Path(sock_dir) / "front.sock"
            fronts.append(server.run(_front(server, path)))
        return grpc.insecure_channel(f"unix:{path}", options=OPTIONS)

    yield start
    for server, front in zip(servers, fronts):
        server.run(_close(front))
    for server in servers:
        server.close()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ran_unprivileged(request: pytest.FixtureRequest) -> bool:
    """For a test of permission errors, which root never gets: as root, runs the test again in
    pytest as the user nobody (setpriv) and returns True once it passed there, so that the caller
    returns; as any other user, returns False and the caller runs its checks itself."""
    if not IS_ROOT:
        return False
    base = Path(tempfile.mkdtemp(prefix="llbgen-nobody-"))
    try:
        os.chown(base, 65534, 65534)  # nobody, nogroup
        run = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
             f"--basetemp={base}/pytest",
             request.node.nodeid],
            cwd=ROOT, env={**os.environ, "HOME": str(base)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    return True


def metadata(**values: str | Sequence[str]) -> list[tuple[str, str]]:
    """Request metadata as BuildKit sends it: keys with "-", values URL-encoded when not ASCII."""
    md: list[tuple[str, str]] = []
    for key, value in values.items():
        key = key.replace("_", "-")
        items = [value] if isinstance(value, str) else list(value)
        if any(not v.isascii() for v in items):
            items = [quote_plus(v) for v in items]
            md.append((key + "-encoded", "1"))
        md.extend((key, v) for v in items)
    return md


def diff_copy_sync(channel: grpc.Channel) -> Any:
    return channel.stream_stream(
        "/moby.filesync.v1.FileSync/DiffCopy",
        request_serializer=Packet.SerializeToString,
        response_deserializer=Packet.FromString,
    )


def diff_copy_send(channel: grpc.Channel) -> Any:
    return channel.stream_stream("/moby.filesync.v1.FileSend/DiffCopy")  # raw bytes both ways


def pull_stats(channel: grpc.Channel, name: str = "context", **md: str | Sequence[str]) -> list[Any]:
    """Plays the daemon's receiver: reads every STAT, requests nothing, says FIN."""
    requests: queue.Queue[Any] = queue.Queue()
    call = diff_copy_sync(channel)(iter(requests.get, None), metadata=metadata(dir_name=name, **md))
    stats = []
    got_fin = False
    for packet in call:
        if packet.type == Packet.PACKET_STAT:
            if not packet.HasField("stat"):
                requests.put(Packet(type=Packet.PACKET_FIN))
                continue
            stats.append(packet.stat)
        elif packet.type == Packet.PACKET_FIN:
            got_fin = True
            requests.put(None)
    assert got_fin
    return stats


def relay(
    channel: grpc.Channel, name: str = "context", exporter_id: int = 0, **md: str | Sequence[str]
) -> None:
    """Connects FileSync (our sender) to FileSend (our receiver), as the daemon would."""
    to_sender: queue.Queue[Any] = queue.Queue()
    to_receiver: queue.Queue[Any] = queue.Queue()
    send_call = channel.stream_stream("/moby.filesync.v1.FileSync/DiffCopy")(
        iter(to_sender.get, None), metadata=metadata(dir_name=name, **md)
    )
    recv_call = diff_copy_send(channel)(
        iter(to_receiver.get, None), metadata=[("buildkit-attachable-exporter-id", str(exporter_id))]
    )

    def pump(source: Iterator[bytes], sink: queue.Queue[Any]) -> None:
        try:
            for message in source:
                sink.put(message)
        finally:
            sink.put(None)

    threads = [
        threading.Thread(target=pump, args=(send_call, to_receiver)),
        threading.Thread(target=pump, args=(recv_call, to_sender)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def push(
    channel: grpc.Channel,
    stats: Sequence[Any],
    contents: dict[int, bytes] | None = None,
    *,
    exporter_id: int | None = 0,
    extra_md: Sequence[tuple[str, str]] = (),
    on_fin: str = "reply",
) -> list[Any]:
    """Plays the daemon's local exporter: sends ``stats``, answers REQs from ``contents`` (by ID,
    empty when missing), and at our FIN replies FIN (or cancels). Returns the packets we sent."""
    contents = contents or {}
    requests: queue.Queue[Any] = queue.Queue()
    md = list(extra_md)
    if exporter_id is not None:
        md.append(("buildkit-attachable-exporter-id", str(exporter_id)))
    for st in stats:
        requests.put(Packet(type=Packet.PACKET_STAT, stat=st).SerializeToString())
    requests.put(Packet(type=Packet.PACKET_STAT).SerializeToString())
    call = diff_copy_send(channel)(iter(requests.get, None), metadata=md)
    received = []
    try:
        for raw in call:
            packet = Packet.FromString(raw)
            received.append(packet)
            if packet.type == Packet.PACKET_REQ:
                data = contents.get(packet.ID, b"")
                for i in range(0, len(data), 7):
                    requests.put(
                        Packet(
                            type=Packet.PACKET_DATA, ID=packet.ID, data=data[i : i + 7]
                        ).SerializeToString()
                    )
                requests.put(Packet(type=Packet.PACKET_DATA, ID=packet.ID).SerializeToString())
            elif packet.type == Packet.PACKET_FIN:
                if on_fin == "cancel":
                    call.cancel()
                    break
                requests.put(Packet(type=Packet.PACKET_FIN).SerializeToString())
                requests.put(None)
            elif packet.type == Packet.PACKET_ERR:
                requests.put(None)
    except grpc.RpcError:
        pass
    finally:
        requests.put(None)
    return received


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything that should survive a transfer: type, mode, mtime, contents or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes())
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def file_stat(path: str, data: bytes = b"", mode: int = 0o644, mtime: int = 1_500_000_000_123_456_789) -> Any:
    return Stat(path=path, mode=mode, size=len(data), modTime=mtime)


def dir_stat(path: str, mode: int = 0o755) -> Any:
    return Stat(path=path, mode=MODE_DIR | mode, modTime=1_400_000_000_000_000_000)


def make_tree(root: Path) -> None:
    """Spaces, non-ASCII, empty files and directories, modes, links inside and out, nested dirs."""
    (root / "dir with spaces" / "sub").mkdir(parents=True)
    (root / "ünïcødé").mkdir()
    (root / "empty dir").mkdir()
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "dir with spaces" / "file one.txt").write_text("one\n")
    (root / "ünïcødé" / "naïve – файл.txt").write_text("unicode\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "private.key").write_text("secret\n")
    os.chmod(root / "private.key", 0o600)
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "data.bin").write_bytes(bytes(range(256)) * 1500)  # several chunks
    os.chmod(root / "data.bin", 0o644)
    (root / "docs" / "keep.md").write_text("keep\n")
    (root / "docs" / "drop.md").write_text("drop\n")
    (root / "docs" / "deep" / "keep.md").write_text("deep keep\n")
    (root / "docs" / "deep" / "drop.txt").write_text("deep drop\n")
    os.symlink("dir with spaces/file one.txt", root / "link-inside")
    os.symlink("/etc/passwd", root / "link-outside")
    os.symlink("../../../..", root / "ünïcødé" / "link-up")
    os.link(root / "run.sh", root / "run-hardlink.sh")
    os.mkfifo(root / "fifo")
    os.utime(root / "dir with spaces" / "file one.txt", ns=(1_000_000_123, 1_000_000_123))


# -- modes and metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("st_mode", "go_mode"),
    [
        (stat.S_IFREG | 0o644, 0o644),
        (stat.S_IFREG | 0o4755, MODE_SETUID | 0o755),
        (stat.S_IFREG | 0o2755, MODE_SETGID | 0o755),
        (stat.S_IFDIR | 0o1777, MODE_DIR | MODE_STICKY | 0o777),
        (stat.S_IFDIR | 0o755, MODE_DIR | 0o755),
        (stat.S_IFLNK | 0o777, MODE_SYMLINK | 0o777),
        (stat.S_IFIFO | 0o644, MODE_NAMED_PIPE | 0o644),
        (stat.S_IFCHR | 0o666, MODE_DEVICE | MODE_CHAR_DEVICE | 0o666),
        (stat.S_IFBLK | 0o660, MODE_DEVICE | 0o660),
    ],
)
def test_go_file_mode(st_mode: int, go_mode: int) -> None:
    assert go_file_mode(st_mode) == go_mode
    assert posix_mode(go_mode) == stat.S_IMODE(st_mode)


def test_go_mode_bits_are_os_filemode() -> None:
    assert (MODE_DIR, MODE_SYMLINK, MODE_DEVICE, MODE_NAMED_PIPE) == (1 << 31, 1 << 27, 1 << 26, 1 << 25)
    assert (MODE_SETUID, MODE_SETGID, MODE_CHAR_DEVICE, MODE_STICKY) == (1 << 23, 1 << 22, 1 << 21, 1 << 20)


def test_decode_metadata_unquotes_encoded_keys() -> None:
    md = decode_metadata(
        [
            ("dir-name", "context"),
            ("include-patterns", "%C3%BC%2F%2A.txt"),
            ("include-patterns", "a+b"),
            ("include-patterns-encoded", "1"),
            ("exclude-patterns", "a+b"),
            ("Followpaths", "x"),
            ("grpc-trace-bin", b"\x00"),
        ]
    )
    assert md["dir-name"] == ["context"]
    assert md["include-patterns"] == ["ü/*.txt", "a b"]
    assert md["exclude-patterns"] == ["a+b"]  # not marked as encoded: left alone
    assert md["followpaths"] == ["x"]
    assert "grpc-trace-bin" not in md


# -- walking ------------------------------------------------------------------------------------


def paths(root: Path, **kwargs: Any) -> list[str]:
    return [entry.stat.path for entry in walk(root, **kwargs)]


def test_walk_is_depth_first_and_sorted_bytewise(tmp_path: Path) -> None:
    for name in ["b", "a-b", "A", "Z", "é", "ü", "a b"]:
        (tmp_path / name).write_text(name)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("x")
    (tmp_path / "a" / "B").mkdir()
    assert paths(tmp_path) == ["A", "Z", "a", "a/B", "a/x", "a b", "a-b", "b", "é", "ü"]


def test_walk_stats_are_faithful(tmp_path: Path) -> None:
    make_tree(tmp_path)
    os.chmod(tmp_path / "ünïcødé", 0o1777)
    os.chmod(tmp_path / "run.sh", 0o4755)
    stats = {entry.stat.path: entry for entry in walk(tmp_path)}
    key = stats["private.key"].stat
    st = os.lstat(tmp_path / "private.key")
    assert (key.mode, key.size, key.modTime, key.uid, key.gid) == (0o600, 7, st.st_mtime_ns, 0, 0)
    assert stats["private.key"].source == str(tmp_path / "private.key")
    assert stats["run.sh"].stat.mode == MODE_SETUID | 0o755
    assert stats["dir with spaces"].stat.mode == MODE_DIR | 0o755
    assert stats["dir with spaces"].stat.size == 0
    assert stats["ünïcødé"].stat.mode == MODE_DIR | MODE_STICKY | 0o777
    assert stats["dir with spaces/file one.txt"].stat.modTime == 1_000_000_123
    link = stats["link-outside"].stat
    assert (link.mode & MODE_SYMLINK, link.linkname, link.size) == (MODE_SYMLINK, "/etc/passwd", 11)
    assert stats["link-outside"].source is None
    assert stats["ünïcødé/link-up"].stat.linkname == "../../../.."
    # The second name of an inode points at the first one sent ("-" sorts before ".").
    assert stats["run.sh"].stat.linkname == "run-hardlink.sh"
    assert stats["run.sh"].stat.size == stats["run-hardlink.sh"].stat.size
    assert stats["run-hardlink.sh"].stat.linkname == ""
    assert stats["fifo"].stat.mode == MODE_NAMED_PIPE | (os.lstat(tmp_path / "fifo").st_mode & 0o777)
    assert stats["fifo"].source is None
    assert stats["empty dir"].stat.mode & MODE_DIR


def test_walk_sends_an_excluded_hardlink_source_as_a_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    os.link(tmp_path / "a.txt", tmp_path / "b.txt")
    stats = {e.stat.path: e.stat for e in walk(tmp_path, exclude_patterns=["a.txt"])}
    assert list(stats) == ["b.txt"]
    assert stats["b.txt"].linkname == ""


@pytest.fixture
def filter_tree(tmp_path: Path) -> Path:
    for name in [
        "Dockerfile",
        "README.md",
        "main.go",
        "src/app.py",
        "src/util.py",
        "src/data.json",
        "src/sub/deep.py",
        "docs/keep.md",
        "docs/drop.md",
        "docs/deep/keep.md",
        "docs/deep/drop.txt",
        "build/out.o",
        "build/logs/run.log",
        "build/logs/keep.txt",
        "node_modules/x/index.js",
        "real/target.txt",
    ]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    (tmp_path / "empty").mkdir()
    os.symlink("real/target.txt", tmp_path / "link.txt")
    os.symlink("/real", tmp_path / "abs-link")
    return tmp_path


# Expected results checked against fsutil's Walk with the same FilterOpt.
FILTER_CASES: list[tuple[dict[str, Any], list[str]]] = [
    (
        {"exclude_patterns": ["docs", "!docs/keep.md"]},
        [
            "Dockerfile",
            "README.md",
            "abs-link",
            "build",
            "build/logs",
            "build/logs/keep.txt",
            "build/logs/run.log",
            "build/out.o",
            "docs",
            "docs/keep.md",
            "empty",
            "link.txt",
            "main.go",
            "node_modules",
            "node_modules/x",
            "node_modules/x/index.js",
            "real",
            "real/target.txt",
            "src",
            "src/app.py",
            "src/data.json",
            "src/sub",
            "src/sub/deep.py",
            "src/util.py",
        ],
    ),
    (
        {"exclude_patterns": ["**", "!**/keep.*"]},
        [
            "build",
            "build/logs",
            "build/logs/keep.txt",
            "docs",
            "docs/deep",
            "docs/deep/keep.md",
            "docs/keep.md",
        ],
    ),
    (
        {"exclude_patterns": ["build/**", "!build/logs/keep.txt", "node_modules", "*.md"]},
        [
            "Dockerfile",
            "abs-link",
            "build",
            "build/logs",
            "build/logs/keep.txt",
            "docs",
            "docs/deep",
            "docs/deep/drop.txt",
            "docs/deep/keep.md",
            "docs/drop.md",
            "docs/keep.md",
            "empty",
            "link.txt",
            "main.go",
            "real",
            "real/target.txt",
            "src",
            "src/app.py",
            "src/data.json",
            "src/sub",
            "src/sub/deep.py",
            "src/util.py",
        ],
    ),
    ({"include_patterns": ["src/*.py"]}, ["src", "src/app.py", "src/util.py"]),
    (
        {"include_patterns": ["src"], "exclude_patterns": ["**/*.json", "src/sub"]},
        ["src", "src/app.py", "src/util.py"],
    ),
    ({"include_patterns": ["**/keep.md"]}, ["docs", "docs/deep", "docs/deep/keep.md", "docs/keep.md"]),
    ({"include_patterns": ["Dockerfile", "/README.md"]}, ["Dockerfile", "README.md"]),  # leading "/" ignored
    (
        {"include_patterns": ["link.txt"], "follow_paths": ["link.txt"]},
        ["link.txt", "real", "real/target.txt"],
    ),
    (
        {"include_patterns": ["Dockerfile"], "follow_paths": ["abs-link/target.txt"]},
        ["Dockerfile", "abs-link", "real", "real/target.txt"],
    ),
    ({"include_patterns": ["empty"]}, ["empty"]),
    ({"exclude_patterns": ["*"]}, []),
]


@pytest.mark.parametrize(("options", "expected"), FILTER_CASES)
def test_walk_filters_like_fsutil(filter_tree: Path, options: dict[str, Any], expected: list[str]) -> None:
    assert paths(filter_tree, **options) == expected


def test_follow_paths_never_leave_the_root(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink("../secret.txt", tmp_path / "ctx" / "up")
    os.symlink("/etc", tmp_path / "ctx" / "etc-link")
    root = tmp_path / "ctx"
    assert resolve_follow_paths(root, ["up"]) == ["secret.txt", "up"]
    assert resolve_follow_paths(root, ["etc-link/passwd"]) == ["etc-link", "etc/passwd"]
    assert resolve_follow_paths(root, ["."]) is None
    sent = paths(root, include_patterns=["nothing"], follow_paths=["up", "etc-link/passwd"])
    assert sent == ["etc-link", "up"]  # the targets would be inside the root, and are not there


def test_follow_paths_with_a_symlink_loop(tmp_path: Path) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    assert resolve_follow_paths(tmp_path, ["a"]) == ["a", "b"]


def test_walk_rejects_bad_patterns(tmp_path: Path) -> None:
    with pytest.raises(FileSyncError, match="pattern"):
        list(walk(tmp_path, exclude_patterns=["["]))


def test_walk_of_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileSyncError, match="not a directory"):
        list(walk(tmp_path / "missing"))


def test_unreadable_directory_is_an_error_unless_excluded(tmp_path: Path, ran_unprivileged: bool) -> None:
    if ran_unprivileged:
        return
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "f").write_text("x")
    os.chmod(tmp_path / "locked", 0)
    try:
        with pytest.raises(FileSyncError, match="cannot read directory locked"):
            list(walk(tmp_path))
        assert paths(tmp_path, exclude_patterns=["locked"]) == []
    finally:
        os.chmod(tmp_path / "locked", 0o755)


# -- FileSync over gRPC -------------------------------------------------------------------------


def test_register_returns_the_method_names() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    assert FileSync({}).register(server) == [
        "/moby.filesync.v1.FileSync/DiffCopy",
        "/moby.filesync.v1.FileSync/TarStream",
    ]
    assert FileSend({}).register(server) == ["/moby.filesync.v1.FileSend/DiffCopy"]


def test_stats_over_grpc_with_encoded_patterns(filter_tree: Path, serve: Callable[..., grpc.Channel]) -> None:
    (filter_tree / "ü").mkdir()
    (filter_tree / "ü" / "ß.txt").write_text("x")
    channel = serve(FileSync({"context": filter_tree}))
    stats = pull_stats(channel, include_patterns=["ü/*.txt", "src/sub"], exclude_patterns=["**/*.json"])
    assert [s.path for s in stats] == ["src", "src/sub", "src/sub/deep.py", "ü", "ü/ß.txt"]
    assert all(s.uid == 0 and s.gid == 0 for s in stats)


def test_unknown_dir_name_is_not_found(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    channel = serve(FileSync({"context": tmp_path}))
    with pytest.raises(grpc.RpcError) as info:
        pull_stats(channel, name="dockerfile")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "dockerfile" in (info.value.details() or "")


def test_tarstream_is_unimplemented(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    channel = serve(FileSync({"context": tmp_path}))
    call = channel.stream_stream("/moby.filesync.v1.FileSync/TarStream")(
        iter([]), metadata=[("dir-name", "context")]
    )
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _request_file(
    channel: grpc.Channel, root: Path, name: str, before_request: Callable[[], None]
) -> tuple[list[Any], Any]:
    requests: queue.Queue[Any] = queue.Queue()
    call = diff_copy_sync(channel)(iter(requests.get, None), metadata=metadata(dir_name="context"))
    received: list[Any] = []
    index = 0
    with pytest.raises(grpc.RpcError) as info:
        for packet in call:
            received.append(packet)
            if packet.type == Packet.PACKET_STAT and packet.HasField("stat"):
                if packet.stat.path == name:
                    before_request()
                    requests.put(Packet(type=Packet.PACKET_REQ, ID=index))
                index += 1
    requests.put(None)
    return received, info.value


def test_a_file_that_cannot_be_read_is_a_clear_error(
    tmp_path: Path, serve: Callable[..., grpc.Channel]
) -> None:
    (tmp_path / "gone.txt").write_text("x")
    fs = FileSync({"context": tmp_path})
    channel = serve(fs)
    received, error = _request_file(channel, tmp_path, "gone.txt", lambda: os.unlink(tmp_path / "gone.txt"))
    errors = [p.data.decode() for p in received if p.type == Packet.PACKET_ERR]
    assert errors and "cannot read gone.txt" in errors[0]
    assert "cannot read gone.txt" in (error.details() or "")
    assert not fs.status["context"].completed
    assert "cannot read gone.txt" in fs.status["context"].errors[0]


def test_a_file_without_read_permission_is_a_clear_error(
    tmp_path: Path, serve: Callable[..., grpc.Channel], ran_unprivileged: bool
) -> None:
    if ran_unprivileged:
        return
    (tmp_path / "locked.txt").write_text("x")
    os.chmod(tmp_path / "locked.txt", 0)
    channel = serve(FileSync({"context": tmp_path}))
    _, error = _request_file(channel, tmp_path, "locked.txt", lambda: None)
    assert "cannot read locked.txt: Permission denied" in (error.details() or "")


# -- round trips: our sender to our receiver ----------------------------------------------------


def test_round_trip_preserves_the_tree(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    make_tree(src)
    fs, target = FileSync({"context": src}, chunk_size=1000), DirectoryTarget(out)
    channel = serve(fs, FileSend({0: target}))
    relay(channel)
    assert snapshot(out) == snapshot(src)
    assert os.stat(out / "run.sh").st_ino == os.stat(out / "run-hardlink.sh").st_ino
    assert os.readlink(out / "link-outside") == "/etc/passwd"
    assert target.status.completed and fs.status["context"].completed
    assert target.status.files == 11  # 10 regular files + the hard link
    inodes = {
        p.lstat().st_ino: p.lstat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()
    }
    assert target.status.bytes == fs.status["context"].bytes == sum(inodes.values())
    assert target.status.entries == fs.status["context"].entries == len(snapshot(src))


def test_round_trip_with_nested_excludes_and_reincludes(
    tmp_path: Path, serve: Callable[..., grpc.Channel]
) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    make_tree(src)
    channel = serve(FileSync({"context": src}), FileSend({0: DirectoryTarget(out)}))
    relay(channel, exclude_patterns=["docs", "!docs/**/keep.md", "*.bin", "ünïcødé/*.txt", "fifo"])
    expected = {
        k: v
        for k, v in snapshot(src).items()
        if k not in ("docs/drop.md", "docs/deep/drop.txt", "data.bin", "ünïcødé/naïve – файл.txt", "fifo")
    }
    have = snapshot(out)
    # Parent directories of re-included files are sent; their mtimes change as the files arrive on
    # the source side only, so compare them without mtimes.
    assert set(have) == set(expected)
    assert {k: v for k, v in have.items() if v[0] != "dir"} == {
        k: v for k, v in expected.items() if v[0] != "dir"
    }


def test_round_trip_of_many_files(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (src / f"d{d}" / f"f{f}").write_bytes(os.urandom(f * 10))
    fs, target = FileSync({"context": src}), DirectoryTarget(out)
    relay(serve(fs, FileSend({0: target})))
    assert snapshot(out) == snapshot(src)
    assert target.status.files == fs.status["context"].files == 1000


# -- FileSend -----------------------------------------------------------------------------------


def test_exporter_id_selects_the_target(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    first, second = DirectoryTarget(tmp_path / "first"), DirectoryTarget(tmp_path / "second")
    channel = serve(FileSend({0: first, 1: second}))
    push(channel, [file_stat("a.txt", b"one")], {0: b"one"}, exporter_id=1)
    assert (tmp_path / "second" / "a.txt").read_bytes() == b"one"
    assert not (tmp_path / "first").exists()
    push(channel, [file_stat("b.txt", b"two")], {0: b"two"}, exporter_id=None)  # no header: exporter 0
    assert (tmp_path / "first" / "b.txt").read_bytes() == b"two"
    assert first.status.completed and second.status.completed


def test_unknown_exporter_is_not_found(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    channel = serve(FileSend({0: DirectoryTarget(tmp_path)}))
    call = diff_copy_send(channel)(iter([]), metadata=[("buildkit-attachable-exporter-id", "3")])
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "exporter 3 not found" in (info.value.details() or "")


def test_directory_target_writes_modes_and_mtimes(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    target = DirectoryTarget(tmp_path / "out" / "nested")
    channel = serve(FileSend({0: target}))
    stats = [
        dir_stat("bin", 0o755),
        file_stat("bin/tool", b"#!/bin/sh\n", 0o755),
        file_stat("empty", b"", 0o600),
        dir_stat("ro", 0o555),
        file_stat("ro/file", b"data", 0o444),
        Stat(
            path="ro/link",
            mode=MODE_SYMLINK | 0o777,
            linkname="../../../../etc/passwd",
            modTime=1_300_000_000_000_000_000,
        ),
        file_stat("setuid", b"x", MODE_SETUID | 0o755),
        Stat(path="setuid-link", mode=MODE_SETUID | 0o755, linkname="setuid", size=1),
    ]
    contents = {1: b"#!/bin/sh\n", 4: b"data", 6: b"x"}
    push(channel, stats, contents)
    out = tmp_path / "out" / "nested"
    assert stat.S_IMODE(os.stat(out / "bin" / "tool").st_mode) == 0o755
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(os.stat(out / "empty").st_mode) == 0o600
    assert (out / "empty").read_bytes() == b""
    assert stat.S_IMODE(os.stat(out / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(out / "ro" / "file").st_mode) == 0o444
    assert os.stat(out / "ro" / "file").st_mtime_ns == 1_500_000_000_123_456_789
    assert os.stat(out / "ro").st_mtime_ns == 1_400_000_000_000_000_000
    assert os.readlink(out / "ro" / "link") == "../../../../etc/passwd"
    assert os.lstat(out / "ro" / "link").st_mtime_ns == 1_300_000_000_000_000_000
    assert stat.S_IMODE(os.stat(out / "setuid").st_mode) == 0o4755
    assert os.stat(out / "setuid-link").st_ino == os.stat(out / "setuid").st_ino
    assert target.status.completed
    assert (target.status.entries, target.status.files, target.status.bytes) == (8, 5, 15)
    os.chmod(out / "ro", 0o755)


@pytest.mark.parametrize(
    ("stats", "message"),
    [
        ([file_stat("../evil")], "outside the output directory"),
        ([file_stat("/etc/evil")], "not a clean relative path"),
        ([file_stat("a/../../evil")], "not a clean relative path"),
        ([file_stat("..")], "outside the output directory"),
        ([file_stat("b"), file_stat("a")], "out of order"),
        ([file_stat("a/b")], "was not sent before it"),
        (
            [Stat(path="d", mode=MODE_SYMLINK | 0o777, linkname="/tmp"), file_stat("d/evil")],
            "was not sent before it",
        ),
        ([Stat(path="h", mode=0o644, linkname="../../etc/passwd")], "invalid hard link"),
    ],
)
def test_directory_target_refuses_paths_outside(
    tmp_path: Path, serve: Callable[..., grpc.Channel], stats: list[Any], message: str
) -> None:
    out = tmp_path / "a" / "out"
    target = DirectoryTarget(out)
    received = push(serve(FileSend({0: target})), stats)
    errors = [p.data.decode() for p in received if p.type == Packet.PACKET_ERR]
    assert errors and message in errors[0]
    assert not target.status.completed and message in target.status.errors[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["a", "out"] + [p.name for p in out.rglob("*")]
    )
    assert not list((tmp_path / "a").glob("evil*"))


def test_directory_target_merges_and_replaces_symlinks(
    tmp_path: Path, serve: Callable[..., grpc.Channel]
) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "kept.txt").write_text("kept")
    (out / "replaced.txt").write_text("old contents")
    os.symlink(elsewhere, out / "dir")  # the export has a real directory here
    os.link(out / "replaced.txt", elsewhere / "other-name")
    channel = serve(FileSend({0: DirectoryTarget(out)}))
    push(
        channel,
        [dir_stat("dir"), file_stat("dir/f", b"new"), file_stat("replaced.txt", b"new")],
        {1: b"new", 2: b"new"},
    )
    assert (out / "kept.txt").read_text() == "kept"
    assert not (out / "dir").is_symlink() and (out / "dir" / "f").read_bytes() == b"new"
    assert list(elsewhere.iterdir()) == [elsewhere / "other-name"]
    assert (elsewhere / "other-name").read_text() == "old contents"  # replaced, not written through
    assert (out / "replaced.txt").read_bytes() == b"new"


def test_directory_target_delete_mode(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    out = tmp_path / "out"
    (out / "stale" / "deep").mkdir(parents=True)
    (out / "stale.txt").write_text("x")
    (out / "keep").mkdir()
    (out / "keep" / "stale.txt").write_text("x")
    target = DirectoryTarget(out, delete=True)
    channel = serve(FileSend({0: target}))
    # The daemon says it can do it (mode=delete exporter attribute); without that, refuse.
    received = push(channel, [dir_stat("keep"), file_stat("keep/new.txt", b"n")], {1: b"n"})
    assert not received and (out / "stale.txt").exists()
    push(
        channel,
        [dir_stat("keep"), file_stat("keep/new.txt", b"n")],
        {1: b"n"},
        extra_md=[("buildkit-exporter-multi-platform", "1")],
    )
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["keep", "keep/new.txt"]
    assert target.status.completed_streams == 1


def test_cancel_after_fin_is_success(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    target = DirectoryTarget(tmp_path / "out")
    channel = serve(FileSend({0: target}))
    received = push(channel, [file_stat("a", b"abc")], {0: b"abc"}, on_fin="cancel")
    assert [p.type for p in received] == [Packet.PACKET_REQ, Packet.PACKET_FIN]
    assert (tmp_path / "out" / "a").read_bytes() == b"abc"
    assert target.status.completed and not target.status.errors


def test_cancel_before_fin_is_a_failure(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    target = DirectoryTarget(tmp_path / "out")
    channel = serve(FileSend({0: target}))
    requests: queue.Queue[Any] = queue.Queue()
    requests.put(Packet(type=Packet.PACKET_STAT, stat=file_stat("a", b"abc")).SerializeToString())
    call = diff_copy_send(channel)(
        iter(requests.get, None), metadata=[("buildkit-attachable-exporter-id", "0")]
    )
    assert Packet.FromString(next(call)).type == Packet.PACKET_REQ
    call.cancel()
    for _ in range(100):
        if target.status.errors:
            break
        threading.Event().wait(0.05)
    assert not target.status.completed
    assert "cancelled" in target.status.errors[0]


def test_concurrent_platform_streams_into_one_directory(
    tmp_path: Path, serve: Callable[..., grpc.Channel]
) -> None:
    target = DirectoryTarget(tmp_path / "out")
    channel = serve(FileSend({0: target}))
    threads = [
        threading.Thread(
            target=push,
            args=(
                channel,
                [
                    dir_stat(platform),
                    dir_stat(f"{platform}/bin"),
                    file_stat(f"{platform}/bin/app", b"x" * 100),
                ],
            ),
            kwargs={"contents": {2: b"x" * 100}},
        )
        for platform in ("linux_amd64", "linux_arm64")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(os.listdir(tmp_path / "out")) == ["linux_amd64", "linux_arm64"]
    assert (tmp_path / "out" / "linux_arm64" / "bin" / "app").read_bytes() == b"x" * 100
    assert target.status.streams == 2 and target.status.completed
    assert target.status.files == 2 and target.status.bytes == 200


def _stream_chunks(
    channel: grpc.Channel, chunks: list[bytes], exporter_id: int = 0, cancel: bool = False
) -> None:
    requests: queue.Queue[Any] = queue.Queue()
    for chunk in chunks:
        requests.put(filesync_pb2.BytesMessage(data=chunk).SerializeToString())
    md = [("buildkit-attachable-exporter-id", str(exporter_id)), ("exporter-md-image.name", "example")]
    call = diff_copy_send(channel)(iter(requests.get, None), metadata=md)
    if cancel:
        threading.Event().wait(0.3)
        call.cancel()
        return
    requests.put(None)
    assert list(call) == []


def test_stream_target_writes_the_chunks(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    out = tmp_path / "image.tar"
    target = StreamTarget(lambda: open(out, "wb"))
    channel = serve(FileSend({1: target}))
    chunks = [os.urandom(1000) for _ in range(20)] + [b""]
    _stream_chunks(channel, chunks, exporter_id=1)
    assert out.read_bytes() == b"".join(chunks)
    assert target.status.completed and target.status.bytes == 20_000
    assert target.status.metadata == {"image.name": "example"}


def test_stream_target_close(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    streams: list[Any] = []

    def opener() -> Any:
        streams.append(open(tmp_path / "out", "wb"))
        return streams[-1]

    channel = serve(FileSend({0: StreamTarget(opener), 1: StreamTarget(opener, close=False)}))
    _stream_chunks(channel, [b"abc"], exporter_id=0)
    _stream_chunks(channel, [b"def"], exporter_id=1)
    assert streams[0].closed and not streams[1].closed
    streams[1].close()


def test_stream_target_cancelled_midway(tmp_path: Path, serve: Callable[..., grpc.Channel]) -> None:
    target = StreamTarget(lambda: open(tmp_path / "out", "wb"))
    channel = serve(FileSend({0: target}))
    _stream_chunks(channel, [b"abc"], cancel=True)
    for _ in range(100):
        if target.status.errors:
            break
        threading.Event().wait(0.05)
    assert not target.status.completed
    assert "cancelled" in target.status.errors[0]
