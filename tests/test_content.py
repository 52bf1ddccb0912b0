"""The content store service for local cache directories (llbgen.session.content).

The daemon is played by the generated ``Content`` client stub, talking to a real ``grpc.server`` on
a unix socket, with the ``buildkit-attachable-store-id`` header the daemon sends.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from llbgen.client.outputs import CacheOption
from llbgen.llb.errors import UsageError
from llbgen.pb import content_pb2, content_pb2_grpc
from llbgen.session.content import (
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_REF_NAME,
    CONTENT_METHODS,
    ContentStores,
    LocalCacheError,
    LocalCaches,
    OCIStore,
    find_in_index,
    put_in_index,
    read_index,
)
from llbgen.session.content.times import format_time as _format_time
from llbgen.session.content.times import parse_time as _parse_time

STORE_ID = "local:cache"
MD = [("buildkit-attachable-store-id", STORE_ID)]
W = content_pb2.WriteContentRequest


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _socket_dir(tmp_path: Path) -> Path:
    # A unix socket path must fit in 108 bytes; pytest's tmp_path may not leave room.
    return tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="llbgen-t"))


@pytest.fixture
def store(tmp_path: Path) -> OCIStore:
    return OCIStore(tmp_path / "cache")


@pytest.fixture
def stub(tmp_path: Path, store: OCIStore) -> Iterator[content_pb2_grpc.ContentStub]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    methods = ContentStores({STORE_ID: store}).register(server)
    assert methods == CONTENT_METHODS
    assert "/containerd.services.content.v1.Content/Write" in methods and len(methods) == 9
    address = f"unix:{_socket_dir(tmp_path) / 'content.sock'}"
    server.add_insecure_port(address)
    server.start()
    channel = grpc.insecure_channel(address)
    yield content_pb2_grpc.ContentStub(channel)
    channel.close()
    server.stop(grace=None)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if not isinstance(result, (content_pb2.InfoResponse, content_pb2.StatusResponse)):
            list(result)  # drain a stream
    return info.value.code()


def write(stub: content_pb2_grpc.ContentStub, messages: list[content_pb2.WriteContentRequest]) -> list[content_pb2.WriteContentResponse]:
    return list(stub.Write(iter(messages), metadata=MD, timeout=10))


class Conversation:
    """A Write stream driven one message at a time, as containerd's client does (send, then read
    the answer)."""

    def __init__(self, stub: content_pb2_grpc.ContentStub) -> None:
        self._outbox: list[content_pb2.WriteContentRequest | None] = []
        self._cond = threading.Condition()
        self._call = stub.Write(self._requests(), metadata=MD, timeout=10)

    def _requests(self) -> Iterator[content_pb2.WriteContentRequest]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._outbox))
                message = self._outbox.pop(0)
            if message is None:
                return
            yield message

    def send(self, message: content_pb2.WriteContentRequest) -> content_pb2.WriteContentResponse:
        with self._cond:
            self._outbox.append(message)
            self._cond.notify()
        return next(self._call)  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._call.cancel()
        with self._cond:  # lets the request generator end
            self._outbox.append(None)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._outbox.append(None)
            self._cond.notify()
        for _ in self._call:
            pass


def read(stub: content_pb2_grpc.ContentStub, digest: str, offset: int = 0, size: int = 0) -> bytes:
    request = content_pb2.ReadContentRequest(digest=digest, offset=offset, size=size)
    return b"".join(r.data for r in stub.Read(request, metadata=MD, timeout=10))


# -- writing and reading ------------------------------------------------------------------------


def test_write_commit_and_read_back(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one Read chunk
    digest = sha256(data)
    half = len(data) // 2
    conv = Conversation(stub)
    stat0 = conv.send(W(action=content_pb2.STAT, ref="layer-1", total=len(data), expected=digest))
    assert stat0.action == content_pb2.STAT and stat0.offset == 0 and stat0.total == len(data)
    assert stat0.started_at.seconds > 0 and stat0.digest == sha256(b"")
    first = conv.send(W(action=content_pb2.WRITE, offset=0, data=data[:half]))
    assert first.offset == half and first.digest == sha256(data[:half])
    commit = conv.send(W(action=content_pb2.COMMIT, offset=half, data=data[half:], total=len(data), expected=digest))
    assert commit.action == content_pb2.COMMIT and commit.offset == len(data) and commit.digest == digest
    conv.close()

    blob = store.root / "blobs" / "sha256" / digest.split(":")[1]
    assert blob.read_bytes() == data
    assert stat.S_IMODE(blob.stat().st_mode) & 0o222 == 0, "blobs are stored read-only"
    assert not any((store.root / "ingest").iterdir()), "the ingest is gone after the commit"
    info = stub.Info(content_pb2.InfoRequest(digest=digest), metadata=MD, timeout=10).info
    assert info.digest == digest and info.size == len(data) and info.created_at.seconds > 0
    assert read(stub, digest) == data
    assert read(stub, digest, offset=1000, size=5000) == data[1000:6000]
    assert read(stub, digest, offset=len(data) - 3, size=100) == data[-3:]
    assert read(stub, digest, offset=len(data)) == b""
    offsets = [r.offset for r in stub.Read(content_pb2.ReadContentRequest(digest=digest), metadata=MD)]
    assert offsets[0] == 0 and offsets[1] == 1 << 20
    assert code_of(lambda: stub.Read(content_pb2.ReadContentRequest(digest=digest, offset=len(data) + 1), metadata=MD)) == grpc.StatusCode.OUT_OF_RANGE


def test_single_message_commit_and_already_exists(stub: content_pb2_grpc.ContentStub) -> None:
    data = b"config"
    [response] = write(stub, [W(action=content_pb2.COMMIT, ref="one", data=data, total=6, expected=sha256(data))])
    assert response.digest == sha256(data) and response.offset == 6
    # The daemon opens writers with the expected digest: a blob that is there is ALREADY_EXISTS,
    # which its WriteBlob takes as done.
    again = [W(action=content_pb2.STAT, ref="two", total=6, expected=sha256(data))]
    assert code_of(lambda: stub.Write(iter(again), metadata=MD)) == grpc.StatusCode.ALREADY_EXISTS


def test_commit_of_a_blob_committed_meanwhile_is_already_exists(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    data = b"same blob, two refs"
    conv = Conversation(stub)
    conv.send(W(action=content_pb2.WRITE, ref="a", data=data))
    write(stub, [W(action=content_pb2.COMMIT, ref="b", data=data, expected=sha256(data))])
    with pytest.raises(grpc.RpcError) as info:
        conv.send(W(action=content_pb2.COMMIT, offset=len(data)))
    conv.cancel()
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert store.info(sha256(data)).size == len(data)
    assert code_of(lambda: stub.Status(content_pb2.StatusRequest(ref="a"), metadata=MD)) == grpc.StatusCode.NOT_FOUND


def test_resume_from_offset_after_stat(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    data = os.urandom(200_000)
    digest = sha256(data)
    # A first stream writes part of the blob and ends without a commit: the ingest stays.
    conv = Conversation(stub)
    conv.send(W(action=content_pb2.STAT, ref="resumable", total=len(data), expected=digest))
    conv.send(W(action=content_pb2.WRITE, offset=0, data=data[:70_000]))
    conv.close()
    status = stub.Status(content_pb2.StatusRequest(ref="resumable"), metadata=MD, timeout=10).status
    assert status.ref == "resumable" and status.offset == 70_000 and status.total == len(data)
    listed = stub.ListStatuses(content_pb2.ListStatusesRequest(filters=['ref=="resumable"']), metadata=MD).statuses
    assert [s.ref for s in listed] == ["resumable"]
    assert stub.ListStatuses(content_pb2.ListStatusesRequest(filters=["ref==other"]), metadata=MD).statuses == []

    # A second one asks where it is and goes on from there.
    conv = Conversation(stub)
    stat_ = conv.send(W(action=content_pb2.STAT, ref="resumable", total=len(data), expected=digest))
    assert stat_.offset == 70_000 and stat_.digest == sha256(data[:70_000])
    assert stat_.started_at == status.started_at
    conv.send(W(action=content_pb2.WRITE, offset=70_000, data=data[70_000:150_000]))
    done = conv.send(W(action=content_pb2.COMMIT, offset=150_000, data=data[150_000:], total=len(data), expected=digest))
    conv.close()
    assert done.digest == digest
    assert store.blob_path(digest).read_bytes() == data


def test_write_at_a_wrong_offset_is_out_of_range_and_zero_starts_over(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    conv = Conversation(stub)
    conv.send(W(action=content_pb2.WRITE, ref="r", offset=0, data=b"hello "))
    restarted = conv.send(W(action=content_pb2.WRITE, offset=0, data=b"good"))  # offset 0: truncate
    assert restarted.offset == 4
    done = conv.send(W(action=content_pb2.COMMIT, offset=4, data=b"bye", expected=sha256(b"goodbye")))
    conv.close()
    assert done.digest == sha256(b"goodbye")
    messages = [W(action=content_pb2.WRITE, ref="s", data=b"abc"), W(action=content_pb2.WRITE, offset=7, data=b"x")]
    assert code_of(lambda: stub.Write(iter(messages), metadata=MD)) == grpc.StatusCode.OUT_OF_RANGE


def test_wrong_expected_digest_or_size_is_rejected(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    data = b"the real contents"
    wrong = sha256(b"something else")
    bad_digest = [W(action=content_pb2.WRITE, ref="d", data=data), W(action=content_pb2.COMMIT, offset=len(data), expected=wrong)]
    assert code_of(lambda: stub.Write(iter(bad_digest), metadata=MD)) == grpc.StatusCode.FAILED_PRECONDITION
    bad_size = [W(action=content_pb2.COMMIT, ref="e", data=data, total=len(data) + 1, expected=sha256(data))]
    assert code_of(lambda: stub.Write(iter(bad_size), metadata=MD)) == grpc.StatusCode.FAILED_PRECONDITION
    assert list(store.walk()) == []
    assert not store.blob_path(wrong).exists() and not store.blob_path(sha256(data)).exists()
    # A malformed digest is refused up front.
    malformed = [W(action=content_pb2.STAT, ref="f", expected="sha256:nothex")]
    assert code_of(lambda: stub.Write(iter(malformed), metadata=MD)) == grpc.StatusCode.INVALID_ARGUMENT
    no_ref = [W(action=content_pb2.STAT)]
    assert code_of(lambda: stub.Write(iter(no_ref), metadata=MD)) == grpc.StatusCode.INVALID_ARGUMENT


def test_other_digest_algorithms_are_verified(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    data = b"sha512 content"
    expected = "sha512:" + hashlib.sha512(data).hexdigest()
    [done] = write(stub, [W(action=content_pb2.COMMIT, ref="x", data=data, expected=expected)])
    assert done.digest == expected
    assert (store.root / "blobs" / "sha512" / hashlib.sha512(data).hexdigest()).read_bytes() == data


def test_one_writer_per_ref(stub: content_pb2_grpc.ContentStub) -> None:
    holder = Conversation(stub)
    holder.send(W(action=content_pb2.STAT, ref="busy"))
    second = [W(action=content_pb2.STAT, ref="busy")]
    # UNAVAILABLE makes the daemon's OpenWriter retry until the ref is free.
    assert code_of(lambda: stub.Write(iter(second), metadata=MD)) == grpc.StatusCode.UNAVAILABLE
    holder.close()
    [response] = write(stub, second)
    assert response.action == content_pb2.STAT


def test_a_cancelled_stream_frees_its_ref_and_keeps_the_ingest(stub: content_pb2_grpc.ContentStub) -> None:
    conv = Conversation(stub)
    conv.send(W(action=content_pb2.WRITE, ref="cancelled", data=b"abc"))
    conv.cancel()
    deadline = time.monotonic() + 10
    while True:
        try:
            [response] = write(stub, [W(action=content_pb2.STAT, ref="cancelled")])
            break
        except grpc.RpcError as exc:  # the server has not seen the cancellation yet
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
            time.sleep(0.05)
    assert response.offset == 3 and response.digest == sha256(b"abc")


def test_abort(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    write(stub, [W(action=content_pb2.WRITE, ref="doomed", data=b"partial")])
    assert stub.Status(content_pb2.StatusRequest(ref="doomed"), metadata=MD).status.offset == 7
    stub.Abort(content_pb2.AbortRequest(ref="doomed"), metadata=MD, timeout=10)
    assert code_of(lambda: stub.Status(content_pb2.StatusRequest(ref="doomed"), metadata=MD)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.Abort(content_pb2.AbortRequest(ref="doomed"), metadata=MD)) == grpc.StatusCode.NOT_FOUND
    assert not any((store.root / "ingest").iterdir())
    # A new write of the ref starts from nothing.
    [response] = write(stub, [W(action=content_pb2.STAT, ref="doomed")])
    assert response.offset == 0


# -- committed blobs ----------------------------------------------------------------------------


def test_info_of_a_missing_digest_is_not_found(stub: content_pb2_grpc.ContentStub) -> None:
    missing = sha256(b"never written")
    assert code_of(lambda: stub.Info(content_pb2.InfoRequest(digest=missing), metadata=MD)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.Read(content_pb2.ReadContentRequest(digest=missing), metadata=MD)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.Delete(content_pb2.DeleteContentRequest(digest=missing), metadata=MD)) == grpc.StatusCode.NOT_FOUND
    for bad in ("", "sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64, "sha256:../../etc/passwd"):
        assert code_of(lambda: stub.Info(content_pb2.InfoRequest(digest=bad), metadata=MD)) == grpc.StatusCode.INVALID_ARGUMENT


def test_store_is_chosen_by_the_store_id_header(stub: content_pb2_grpc.ContentStub) -> None:
    request = content_pb2.InfoRequest(digest=sha256(b""))
    assert code_of(lambda: stub.Info(request)) == grpc.StatusCode.INVALID_ARGUMENT
    other = [("buildkit-attachable-store-id", "local:elsewhere")]
    assert code_of(lambda: stub.Info(request, metadata=other)) == grpc.StatusCode.NOT_FOUND


def test_list_delete_and_labels(stub: content_pb2_grpc.ContentStub, store: OCIStore) -> None:
    blobs = [b"one", b"two", b"three"]
    for n, data in enumerate(blobs):
        labels = {"kind": "layer"} if n else {}
        write(stub, [W(action=content_pb2.COMMIT, ref=f"r{n}", data=data, expected=sha256(data), labels=labels)])

    def listed(*filters: str) -> set[str]:
        request = content_pb2.ListContentRequest(filters=list(filters))
        return {i.digest for r in stub.List(request, metadata=MD, timeout=10) for i in r.info}

    assert listed() == {sha256(b) for b in blobs}
    assert listed(f"digest=={sha256(b'two')}") == {sha256(b"two")}
    assert listed("labels.kind==layer") == {sha256(b"two"), sha256(b"three")}
    assert listed("labels.kind") == {sha256(b"two"), sha256(b"three")}
    assert listed("labels.kind!=layer") == {sha256(b"one")}
    assert listed(f"digest~=/{sha256(b'one')[7:15]}/", f"digest=={sha256(b'three')}") == {sha256(b"one"), sha256(b"three")}
    assert listed(f'labels.kind==layer,digest=="{sha256(b"two")}"') == {sha256(b"two")}
    assert code_of(lambda: stub.List(content_pb2.ListContentRequest(filters=["digest=="]), metadata=MD)) == grpc.StatusCode.INVALID_ARGUMENT

    digest = sha256(b"one")
    update = content_pb2.UpdateRequest(info=content_pb2.Info(digest=digest, labels={"a": "1", "b": "2"}))
    assert dict(stub.Update(update, metadata=MD).info.labels) == {"a": "1", "b": "2"}
    one_key = content_pb2.UpdateRequest(info=content_pb2.Info(digest=digest, labels={"b": "", "c": "3"}))
    one_key.update_mask.paths.extend(["labels.b", "labels.c"])
    assert dict(stub.Update(one_key, metadata=MD).info.labels) == {"a": "1", "c": "3"}
    assert dict(stub.Info(content_pb2.InfoRequest(digest=digest), metadata=MD).info.labels) == {"a": "1", "c": "3"}
    immutable = content_pb2.UpdateRequest(info=content_pb2.Info(digest=digest, size=1))
    immutable.update_mask.paths.append("size")
    assert code_of(lambda: stub.Update(immutable, metadata=MD)) == grpc.StatusCode.INVALID_ARGUMENT

    stub.Delete(content_pb2.DeleteContentRequest(digest=digest), metadata=MD)
    assert listed() == {sha256(b"two"), sha256(b"three")}
    assert code_of(lambda: stub.Info(content_pb2.InfoRequest(digest=digest), metadata=MD)) == grpc.StatusCode.NOT_FOUND


def test_timestamps_in_go_text_form() -> None:
    assert _format_time(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert _format_time(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert _parse_time("2023-11-14T22:13:20.123456789Z") == 1_700_000_000_123_456_789
    assert _parse_time("2023-11-15T00:13:20.5+02:00") == 1_700_000_000_500_000_000


# -- index.json ---------------------------------------------------------------------------------


def descriptor(data: bytes, media_type: str = "application/vnd.oci.image.manifest.v1+json") -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def test_index_tag_update_keeps_other_entries(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    root.mkdir()
    image = {**descriptor(b"image"), "annotations": {ANNOTATION_IMAGE_NAME: "latest", ANNOTATION_REF_NAME: "latest"}}
    other = {**descriptor(b"other"), "annotations": {ANNOTATION_REF_NAME: "v1"}}
    old = {**descriptor(b"old cache"), "annotations": {ANNOTATION_REF_NAME: "latest", "x": "y"}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [image, other, old], "annotations": {"keep": "me"}}))

    new = {**descriptor(b"new cache"), "annotations": {"from": "daemon"}}
    put_in_index(root, new, "latest")
    index = read_index(root)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json" and index["schemaVersion"] == 2
    assert index["annotations"] == {"keep": "me"}
    assert [m["digest"] for m in index["manifests"]] == [sha256(b"image"), sha256(b"other"), sha256(b"new cache")]
    assert index["manifests"][2]["annotations"] == {"from": "daemon", ANNOTATION_REF_NAME: "latest"}
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert not (root / "index.json.lock").exists()
    assert list(root.glob(".index.json*")) == []
    # Tags are looked up by image name first, then by ref name.
    assert find_in_index(index, "latest") == image
    assert find_in_index(index, "v1") == other
    assert find_in_index(index, "nope") is None

    put_in_index(root, descriptor(b"second tag"), "other-tag")
    assert [m["annotations"][ANNOTATION_REF_NAME] for m in read_index(root)["manifests"]] == ["latest", "v1", "latest", "other-tag"]


def test_index_is_created_with_the_layout(tmp_path: Path) -> None:
    put_in_index(tmp_path / "fresh", descriptor(b"m"), "latest")
    assert json.loads((tmp_path / "fresh" / "index.json").read_text()) == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{**descriptor(b"m"), "annotations": {ANNOTATION_REF_NAME: "latest"}}],
    }


def commit_blob(store: OCIStore, data: bytes) -> str:
    if store.exists(sha256(data)):
        return sha256(data)
    writer = store.writer(f"ref-{sha256(data)}", len(data), sha256(data))
    writer.write(data)
    return writer.commit(len(data), sha256(data))


def cache_manifest(store: OCIStore, layers: list[bytes]) -> dict[str, Any]:
    config = json.dumps({"layers": [], "records": []}).encode()
    commit_blob(store, config)
    for layer in layers:
        commit_blob(store, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {**descriptor(config, "application/vnd.buildkit.cacheconfig.v0")},
            "layers": [descriptor(layer, "application/vnd.oci.image.layer.v1.tar+gzip") for layer in layers],
        }
    ).encode()
    commit_blob(store, manifest)
    return descriptor(manifest)


def test_local_caches_export_and_import(tmp_path: Path) -> None:
    dest = tmp_path / "exported"
    caches = LocalCaches()
    caches.add_export({"dest": str(dest), "mode": "max"})
    assert dest.is_dir() and list(caches.stores) == [f"local:{dest}"]
    store = caches.stores[f"local:{dest}"]
    manifest = cache_manifest(store, [b"layer one", b"layer two"])
    caches.finish({"cache.manifest": json.dumps(manifest), "containerimage.digest": "x"})
    assert caches.warnings == []
    assert find_in_index(read_index(dest), "latest") == {**manifest, "annotations": {ANNOTATION_REF_NAME: "latest"}}

    imports = LocalCaches()
    resolved = imports.add_import({"src": str(dest)})
    assert resolved == {"src": str(dest), "digest": manifest["digest"]}
    assert list(imports.stores) == [f"local:{dest}"]
    explicit = LocalCaches().add_import({"src": str(dest), "digest": manifest["digest"], "tag": "ignored"})
    assert explicit is not None and explicit["digest"] == manifest["digest"]


def test_local_cache_import_skips_with_a_warning(tmp_path: Path) -> None:
    caches = LocalCaches()
    assert caches.add_import({"src": str(tmp_path / "missing")}) is None
    assert not (tmp_path / "missing").exists(), "a missing source is not created"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert caches.add_import({"src": str(empty)}) is None
    put_in_index(empty, descriptor(b"not stored"), "latest")
    assert caches.add_import({"src": str(empty), "tag": "other"}) is None
    assert caches.add_import({"src": str(empty)}) is None
    assert caches.stores == {}
    assert len(caches.warnings) == 4
    assert all(w.startswith("local cache import at ") and "skipped" in w for w in caches.warnings)
    assert "does not exist" in caches.warnings[0]
    assert "index.json" in caches.warnings[1]
    assert "no digest found for tag other" in caches.warnings[2]
    assert "unavailable" in caches.warnings[3]
    with pytest.raises(LocalCacheError):
        caches.add_import({"src": str(empty), "tag": ""})


def test_local_cache_export_reset_and_missing_manifest(tmp_path: Path) -> None:
    dest = tmp_path / "c"
    first = LocalCaches()
    first.add_export({"dest": str(dest)})
    store = first.stores[f"local:{dest}"]
    old = cache_manifest(store, [b"old layer", b"shared layer"])
    first.finish({"cache.manifest": json.dumps(old)})

    second = LocalCaches()
    second.add_export({"dest": str(dest), "reset": "true"})
    store = second.stores[f"local:{dest}"]
    new = cache_manifest(store, [b"shared layer", b"new layer"])
    second.finish({"cache.manifest": json.dumps(new)})
    kept = {info.digest for info in store.walk()}
    assert sha256(b"old layer") not in kept and old["digest"] not in kept
    assert {sha256(b"shared layer"), sha256(b"new layer"), new["digest"]} <= kept

    third = LocalCaches()
    third.add_export({"dest": str(dest), "tag": "t2"})
    third.finish({})
    third.finish({"cache.manifest": json.dumps(descriptor(b"elsewhere"))})
    assert len(third.warnings) == 2 and all("index.json was not updated" in w for w in third.warnings)
    assert find_in_index(read_index(dest), "t2") is None


def test_cache_option_parse_local() -> None:
    to = CacheOption.parse("type=local,dest=/tmp/c,mode=max", "--cache-to")
    assert to.type == "local" and dict(to.attrs) == {"dest": "/tmp/c", "mode": "max"}
    src = CacheOption.parse("type=local,src=/tmp/c,tag=v2", "--cache-from")
    assert dict(src.attrs) == {"src": "/tmp/c", "tag": "v2"}
    for text, flag in [
        ("type=local,src=/tmp/c", "--cache-to"),
        ("type=local,dest=/tmp/c", "--cache-from"),
        ("type=local,src=/tmp/c,tag=", "--cache-from"),
        ("type=local,dest=/tmp/c,reset=maybe", "--cache-to"),
    ]:
        with pytest.raises(UsageError):
            CacheOption.parse(text, flag)
