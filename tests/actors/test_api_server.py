"""The API server over a real Unix socket, in front of a real daemon.

The daemon is `open_daemon` on temporary directories. These endpoints need
no runc: ping, version, info, images, create, list, inspect, wait, events
and reload. The client is raw h11, so the tests see exactly what went over
the socket.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import io
import json
import logging
import lzma
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import h11
import pytest
import trio
import trio.testing

from actors.api import server
from actors.api.server import (
    ACCEPT_FAILURE_LOG_SECONDS,
    ACCEPT_RETRY_SECONDS,
    BODY_READ_TIMEOUT_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    JSON_BODY_TIMEOUT_SECONDS,
    MAX_JSON_BODY_BYTES,
    REQUEST_HEAD_TIMEOUT_SECONDS,
    SOCKET_MODE,
    serve_api,
)
from actors.daemon import Daemon, open_daemon
from messages.api import MAX_STOP_TIMEOUT
from messages.config import DaemonFlags
from messages.errors import InvalidConfig

# --- A raw h11 client -----------------------------------------------------------------


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive connection, one request at a time."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(65536))

    async def send_request(
        self,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        chunks: Iterable[bytes] | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        all_headers = [("Host", "localhost"), *headers]
        if body is not None:
            all_headers.append(("Content-Length", str(len(body))))
        elif chunks is not None:
            all_headers.append(("Transfer-Encoding", "chunked"))
        await self.send(h11.Request(method=method, target=target, headers=all_headers))
        for chunk in [body] if body else chunks or ():
            await self.send(h11.Data(data=chunk))
        await self.send(h11.EndOfMessage())

    async def response_head(self) -> h11.Response:
        event = await self.next_event()
        assert isinstance(event, h11.Response), event
        return event

    async def read_body(self) -> bytes:
        parts: list[bytes] = []
        while True:
            event = await self.next_event()
            if isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            assert isinstance(event, h11.Data), event
            parts.append(bytes(event.data))

    async def next_chunk(self) -> bytes:
        event = await self.next_event()
        assert isinstance(event, h11.Data), event
        return bytes(event.data)

    async def request(self, method: str, target: str, **kwargs: Any) -> Reply:
        await self.send_request(method, target, **kwargs)
        head = await self.response_head()
        body = await self.read_body()
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = {k.decode().lower(): v.decode() for k, v in head.headers}
        return Reply(head.status_code, headers, body)


@attrs.define
class Api:
    socket_path: Path
    daemon: Daemon
    config_file: Path

    async def connect(self) -> Client:
        return Client(await trio.open_unix_socket(str(self.socket_path)))

    async def request(self, method: str, target: str, **kwargs: Any) -> Reply:
        client = await self.connect()
        async with client.stream:
            return await client.request(method, target, **kwargs)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes, so not under tmp_path.
    directory = Path(tempfile.mkdtemp(prefix="dyapi-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def served(tmp_path: Path, short_dir: Path) -> AsyncIterator[Api]:
    socket_path = short_dir / "d.sock"
    config_file = tmp_path / "daemon.json"
    config_file.write_text("{}")
    flags = DaemonFlags(
        data_root=str(tmp_path / "data"),
        exec_root=str(tmp_path / "exec"),
        hosts=(f"unix://{socket_path}",),
    )
    async with (
        open_daemon(config_file, flags=flags) as daemon,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(serve_api, daemon, socket_path)
        yield Api(socket_path, daemon, config_file)
        nursery.cancel_scope.cancel()


def make_tar(files: dict[str, bytes], *, hostile: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
        if hostile is not None:
            info = tarfile.TarInfo(hostile)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buffer.getvalue()


TINY_TAR = make_tar({"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", "bin/true": b""})


def split(data: bytes, size: int) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


async def import_tiny(api: Api, repo: str = "tiny", tag: str = "1") -> str:
    reply = await api.request(
        "POST",
        f"/v1.43/images/create?fromSrc=-&repo={repo}&tag={tag}",
        chunks=split(TINY_TAR, 1000),
    )
    assert reply.status == 200, reply
    status: str = reply.json()["status"]
    return status


async def create(api: Api, body: dict[str, Any], name: str = "") -> Reply:
    target = "/v1.43/containers/create" + (f"?name={name}" if name else "")
    return await api.request("POST", target, body=json.dumps(body).encode())


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Read until the server closes the connection; a reset counts as closed."""
    received = b""
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            received += chunk
    return received


UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "tcp")]
# Longer than every timeout of an idle or slow connection.
PAST_ALL_TIMEOUTS = 3 * max(REQUEST_HEAD_TIMEOUT_SECONDS, IDLE_TIMEOUT_SECONDS)


# --- Connections and HTTP -------------------------------------------------------------


async def test_ping_headers(served: Api) -> None:
    reply = await served.request("GET", "/_ping")
    assert reply.status == 200
    assert reply.body == b"OK"
    assert reply.headers["api-version"] == "1.43"
    assert reply.headers["ostype"] == "linux"


async def test_head_ping_has_no_body(served: Api) -> None:
    reply = await served.request("HEAD", "/_ping")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["api-version"] == "1.43"


async def test_version_prefix_accepted(served: Api) -> None:
    for prefix in ("", "/v1.24", "/v1.41", "/v1.43"):
        reply = await served.request("GET", f"{prefix}/version")
        assert reply.status == 200, prefix
        assert reply.json()["ApiVersion"] == "1.43"


async def test_too_new_version_rejected(served: Api) -> None:
    reply = await served.request("GET", "/v1.99/version")
    assert reply.status == 400
    assert "too new" in reply.json()["message"]


async def test_keep_alive_serves_requests(served: Api) -> None:
    client = await served.connect()
    async with client.stream:
        first = await client.request("GET", "/_ping")
        second = await client.request("GET", "/v1.43/images/json")
        third = await client.request("GET", "/v1.43/nope")
    assert first.status == 200
    assert second.status == 200
    assert second.json() == []
    assert third.status == 404


async def test_malformed_http_gets_400(served: Api) -> None:
    stream = await trio.open_unix_socket(str(served.socket_path))
    async with stream:
        await stream.send_all(b"THIS IS NOT HTTP\r\n\r\n")
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"malformed HTTP request" in received


async def test_unknown_route_404(served: Api) -> None:
    reply = await served.request("GET", "/v1.43/networks")
    assert reply.status == 404
    assert "page not found" in reply.json()["message"]


async def test_wrong_method_405(served: Api) -> None:
    reply = await served.request("PUT", "/v1.43/images/json")
    assert reply.status == 405
    assert "PUT" in reply.json()["message"]


async def test_bad_json_names_problem(served: Api) -> None:
    reply = await served.request("POST", "/v1.43/containers/create", body=b"{nope")
    assert reply.status == 400
    assert "invalid JSON" in reply.json()["message"]


async def test_wrong_field_type_names_field(served: Api) -> None:
    await import_tiny(served)
    reply = await create(served, {"Image": "tiny:1", "Cmd": "true"})
    assert reply.status == 400
    assert "Cmd:" in reply.json()["message"]


async def test_oversized_declared_body_413(served: Api) -> None:
    client = await served.connect()
    async with client.stream:
        headers = [
            ("Host", "localhost"),
            ("Content-Length", str(MAX_JSON_BODY_BYTES + 1)),
        ]
        await client.send(
            h11.Request(method="POST", target="/containers/create", headers=headers)
        )
        head = await client.response_head()
        body = await client.read_body()
    assert head.status_code == 413
    assert "too large" in json.loads(body)["message"]


async def test_oversized_chunked_body_413(served: Api) -> None:
    client = await served.connect()
    chunk = b" " * 65536
    count = MAX_JSON_BODY_BYTES // len(chunk) + 2

    async def send_body() -> None:
        # The server stops reading and closes after its 413.
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send_request(
                "POST", "/containers/create", chunks=[chunk] * count
            )

    async with client.stream, trio.open_nursery() as nursery:
        nursery.start_soon(send_body)
        head = await client.response_head()
        body = await client.read_body()
    assert head.status_code == 413
    assert "too large" in json.loads(body)["message"]


# --- Slow, idle and many clients (virtual time) ---------------------------------------


async def test_silent_client_closed(
    served: Api, autojump_clock: trio.testing.MockClock
) -> None:
    stream = await trio.open_unix_socket(str(served.socket_path))
    async with stream:
        start = trio.current_time()
        received = await read_until_closed(stream)
        elapsed = trio.current_time() - start
    assert received == b""
    assert elapsed >= REQUEST_HEAD_TIMEOUT_SECONDS
    assert elapsed < REQUEST_HEAD_TIMEOUT_SECONDS + 1


async def test_trickled_head_closed(
    served: Api, autojump_clock: trio.testing.MockClock
) -> None:
    stream = await trio.open_unix_socket(str(served.socket_path))
    # Each header line arrives before the previous one could time out, so
    # only a deadline for the whole head ends the connection.
    interval = REQUEST_HEAD_TIMEOUT_SECONDS * 0.3

    async def trickle() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\n")
            while True:
                await trio.sleep(interval)
                await stream.send_all(b"X-Slow: 1\r\n")

    async with stream, trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(trickle)
        received = await read_until_closed(stream)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert received == b""
    assert elapsed >= REQUEST_HEAD_TIMEOUT_SECONDS
    assert elapsed < REQUEST_HEAD_TIMEOUT_SECONDS + 1


async def test_idle_keep_alive_closed(
    served: Api, autojump_clock: trio.testing.MockClock
) -> None:
    client = await served.connect()
    async with client.stream:
        first = await client.request("GET", "/_ping")
        await trio.sleep(IDLE_TIMEOUT_SECONDS * 0.9)
        second = await client.request("GET", "/_ping")
        start = trio.current_time()
        received = await read_until_closed(client.stream)
        elapsed = trio.current_time() - start
    assert first.status == 200
    assert second.status == 200
    assert received == b""
    assert elapsed >= IDLE_TIMEOUT_SECONDS
    assert elapsed < IDLE_TIMEOUT_SECONDS + 1


async def test_trickled_json_body_408(
    served: Api, autojump_clock: trio.testing.MockClock
) -> None:
    body = json.dumps({"Image": "tiny:1", "Cmd": ["true"]}).encode()
    client = await served.connect()

    async def trickle() -> None:
        headers = [("Host", "localhost"), ("Content-Length", str(len(body)))]
        await client.send(
            h11.Request(method="POST", target="/containers/create", headers=headers)
        )
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for index in range(len(body)):
                await client.send(h11.Data(data=body[index : index + 1]))
                await trio.sleep(JSON_BODY_TIMEOUT_SECONDS / 10 + 0.5)

    async with client.stream, trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(trickle)
        head = await client.response_head()
        elapsed = trio.current_time() - start
        message = json.loads(await client.read_body())["message"]
        nursery.cancel_scope.cancel()
    assert head.status_code == 408
    assert (b"connection", b"close") in head.headers
    assert "request body timed out" in message
    assert elapsed >= JSON_BODY_TIMEOUT_SECONDS
    assert elapsed < JSON_BODY_TIMEOUT_SECONDS + 1


async def test_stalled_import_body_408(
    served: Api, autojump_clock: trio.testing.MockClock
) -> None:
    client = await served.connect()
    async with client.stream:
        headers = [("Host", "localhost"), ("Transfer-Encoding", "chunked")]
        await client.send(
            h11.Request(
                method="POST",
                target="/images/create?fromSrc=-&repo=stalled",
                headers=headers,
            )
        )
        await client.send(h11.Data(data=TINY_TAR[:1000]))
        start = trio.current_time()
        head = await client.response_head()
        elapsed = trio.current_time() - start
        message = json.loads(await client.read_body())["message"]
    assert head.status_code == 408
    assert f"no data arrived for {BODY_READ_TIMEOUT_SECONDS:g} seconds" in message
    assert elapsed >= BODY_READ_TIMEOUT_SECONDS
    assert (await served.request("GET", "/images/json")).json() == []


async def test_attach_outlives_timeouts(
    served: Api, autojump_clock: trio.testing.MockClock
) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "listener")
    client = await served.connect()
    async with client.stream:
        await client.send_request(
            "POST",
            "/v1.43/containers/listener/attach?stream=1&stdout=1",
            headers=UPGRADE,
        )
        event = await client.next_event()
        assert isinstance(event, h11.InformationalResponse)
        assert event.status_code == 101
        with trio.move_on_after(PAST_ALL_TIMEOUTS) as waited:
            data = await client.stream.receive_some(65536)
            pytest.fail(f"the attach stream ended or sent {data!r}")
    assert waited.cancelled_caught


async def test_events_outlive_timeouts(
    served: Api, autojump_clock: trio.testing.MockClock
) -> None:
    client = await served.connect()
    async with client.stream:
        await client.send_request("GET", "/v1.43/events")
        head = await client.response_head()
        assert head.status_code == 200
        await trio.sleep(PAST_ALL_TIMEOUTS)
        await import_tiny(served)
        event = json.loads(await client.next_chunk())
    assert event["Type"] == "image"
    assert event["Action"] == "import"


async def test_connection_limit_queues_clients(
    served: Api, short_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = short_dir / "small.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(serve_api, served.daemon, path, max_connections=2)
        )
        silent = [await trio.open_unix_socket(str(path)) for _ in range(2)]
        client = Client(await trio.open_unix_socket(str(path)))
        start = trio.current_time()
        await client.send_request("GET", "/_ping")
        with trio.move_on_after(REQUEST_HEAD_TIMEOUT_SECONDS / 2) as waited:
            await client.response_head()
        assert waited.cancelled_caught
        head = await client.response_head()
        elapsed = trio.current_time() - start
        body = await client.read_body()
        leftovers = [await read_until_closed(stream) for stream in silent]
        for stream in [client.stream, *silent]:
            await stream.aclose()
        nursery.cancel_scope.cancel()
    assert head.status_code == 200
    assert body == b"OK"
    # The third client was accepted only once a silent one timed out.
    assert elapsed >= REQUEST_HEAD_TIMEOUT_SECONDS
    assert leftovers == [b"", b""]


class FailingListener:
    """A listener whose accept() fails with EMFILE `failures` times, then succeeds."""

    def __init__(self, failures: int, streams: list[trio.SocketStream]) -> None:
        self.failures = failures
        self.streams = streams

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        if self.streams:
            return self.streams.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_accept_failures_rate_limited(
    served: Api,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="actors.api.server")
    server_end, client_end = socket.socketpair()
    client = Client(trio.SocketStream(trio.socket.from_stdlib_socket(client_end)))
    failures = 447
    listener = FailingListener(
        failures, [trio.SocketStream(trio.socket.from_stdlib_socket(server_end))]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._accept_forever, served.daemon, listener, nursery, 8)
        async with client.stream:
            reply = await client.request("GET", "/_ping")
        nursery.cancel_scope.cancel()
    assert reply.status == 200
    logged = [
        record.getMessage()
        for record in caplog.records
        if record.name == "actors.api.server" and "accept" in record.getMessage()
    ]
    duration = failures * ACCEPT_RETRY_SECONDS
    assert len(logged) >= 2
    assert len(logged) <= 2 + duration / ACCEPT_FAILURE_LOG_SECONDS
    assert os.strerror(errno.EMFILE) in logged[0]
    assert f"after {failures} failures" in logged[-1]


# --- System endpoints -----------------------------------------------------------------


async def test_info_lists_runtimes(served: Api) -> None:
    reply = await served.request("GET", "/v1.43/info")
    assert reply.status == 200
    info = reply.json()
    assert "runc" in info["Runtimes"]
    assert info["DefaultRuntime"] == "runc"
    assert info["Images"] == 0
    assert info["Containers"] == 0


async def test_reload_reports_generation(served: Api) -> None:
    reply = await served.request("POST", "/dockyard/reload")
    assert reply.status == 200
    outcome = reply.json()
    assert outcome["Generation"] == 2
    assert outcome["Changed"] == []
    assert outcome["RestartRequired"] == []


async def test_reload_bad_config_400(served: Api) -> None:
    served.config_file.write_text("{not json")
    reply = await served.request("POST", "/dockyard/reload")
    assert reply.status == 400
    assert str(served.config_file) in reply.json()["message"]
    assert served.daemon.snapshot().generation == 1


# --- Images ---------------------------------------------------------------------------


async def test_chunked_import_then_list(served: Api) -> None:
    image_id = await import_tiny(served)
    assert image_id.startswith("sha256:")
    listed = (await served.request("GET", "/v1.43/images/json")).json()
    assert [image["Id"] for image in listed] == [image_id]
    assert listed[0]["RepoTags"] == ["tiny:1"]
    inspected = await served.request("GET", "/v1.43/images/tiny:1/json")
    assert inspected.status == 200
    assert inspected.json()["Id"] == image_id


async def test_import_with_length_and_changes(served: Api) -> None:
    reply = await served.request(
        "POST",
        "/images/create?fromSrc=-&repo=example.com/team/app:2&changes=CMD%20%5B%22true%22%5D",
        body=TINY_TAR,
    )
    assert reply.status == 200
    inspected = await served.request("GET", "/images/example.com/team/app:2/json")
    assert inspected.status == 200
    assert inspected.json()["Config"]["Cmd"] == ["true"]


async def test_hostile_tar_rejected(served: Api) -> None:
    hostile = make_tar({"etc/passwd": b""}, hostile="../escape")
    reply = await served.request(
        "POST", "/images/create?fromSrc=-&repo=evil", chunks=split(hostile, 512)
    )
    assert reply.status == 400
    assert "../escape" in reply.json()["message"]
    assert (await served.request("GET", "/images/json")).json() == []


async def test_pull_rejected_with_import_hint(served: Api) -> None:
    reply = await served.request("POST", "/images/create?fromImage=busybox&tag=latest")
    assert reply.status == 404
    assert "docker import" in reply.json()["message"]


async def test_unknown_image_inspect_404(served: Api) -> None:
    reply = await served.request("GET", "/images/nothing:here/json")
    assert reply.status == 404


# --- Containers without runc ----------------------------------------------------------


async def test_create_list_inspect(served: Api) -> None:
    image_id = await import_tiny(served)
    reply = await create(
        served, {"Image": "tiny:1", "Cmd": ["/bin/true"], "Labels": {"a": "b"}}, "web"
    )
    assert reply.status == 201
    container_id = reply.json()["Id"]
    assert reply.json()["Warnings"] == []

    running = await served.request("GET", "/v1.43/containers/json")
    assert running.json() == []
    listed = (await served.request("GET", "/v1.43/containers/json?all=1")).json()
    assert [entry["Id"] for entry in listed] == [container_id]
    assert listed[0]["Names"] == ["/web"]
    assert listed[0]["State"] == "created"
    assert listed[0]["Status"] == "Created"
    assert listed[0]["ImageID"] == image_id

    inspected = (await served.request("GET", "/v1.43/containers/web/json")).json()
    assert inspected["Id"] == container_id
    assert inspected["Name"] == "/web"
    assert inspected["Config"]["Cmd"] == ["/bin/true"]
    assert inspected["Config"]["Labels"] == {"a": "b"}
    assert inspected["State"]["Status"] == "created"
    assert inspected["Dockyard"] is None


async def test_list_filters(served: Api) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["/bin/true"]}, "alpha")
    await create(served, {"Image": "tiny:1", "Cmd": ["/bin/true"]}, "beta")
    filters = quote(json.dumps({"name": {"alpha": True}}))
    reply = await served.request("GET", f"/containers/json?all=1&filters={filters}")
    assert [entry["Names"] for entry in reply.json()] == [["/alpha"]]
    reply = await served.request(
        "GET", "/containers/json?filters=%7B%22x%22%3A%5B%5D%7D"
    )
    assert reply.status == 400


async def test_create_unknown_image_404(served: Api) -> None:
    reply = await create(served, {"Image": "missing:1", "Cmd": ["true"]})
    assert reply.status == 404
    assert reply.json()["message"] == "No such image: missing:1"


async def test_create_duplicate_name_409(served: Api) -> None:
    await import_tiny(served)
    first = await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "twin")
    second = await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "twin")
    assert first.status == 201
    assert second.status == 409
    assert "already in use" in second.json()["message"]


async def test_create_unknown_runtime_lists_runtimes(served: Api) -> None:
    await import_tiny(served)
    body = {"Image": "tiny:1", "Cmd": ["true"], "HostConfig": {"Runtime": "nope"}}
    reply = await create(served, body)
    assert reply.status == 400
    assert "'nope'" in reply.json()["message"]
    assert "runc" in reply.json()["message"]


async def test_unknown_container_404(served: Api) -> None:
    for method, target in [
        ("GET", "/containers/nosuch/json"),
        ("POST", "/containers/nosuch/start"),
        ("POST", "/containers/nosuch/wait"),
        ("DELETE", "/containers/nosuch"),
        ("GET", "/containers/nosuch/logs?stdout=1"),
    ]:
        reply = await served.request(method, target)
        assert reply.status == 404, target
        assert reply.json()["message"] == "No such container: nosuch"


async def test_exec_in_created_container_409(served: Api) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "idle")
    body = json.dumps({"Cmd": ["true"], "AttachStdout": True}).encode()
    reply = await served.request("POST", "/containers/idle/exec", body=body)
    assert reply.status == 409
    assert "not running" in reply.json()["message"]


async def test_logs_of_never_started_container(served: Api) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "quiet")
    reply = await served.request("GET", "/v1.43/containers/quiet/logs?stdout=1")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["content-type"] == "application/vnd.docker.multiplexed-stream"
    reply = await served.request("GET", "/v1.43/containers/quiet/logs")
    assert reply.status == 400


async def test_attach_upgrade_switches_protocol(served: Api) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "hijacked")
    client = await served.connect()
    async with client.stream:
        await client.send_request(
            "POST",
            "/v1.43/containers/hijacked/attach?logs=1&stream=0&stdout=1",
            headers=[("Connection", "Upgrade"), ("Upgrade", "tcp")],
        )
        event = await client.next_event()
        assert isinstance(event, h11.InformationalResponse)
        assert event.status_code == 101
        assert event.reason == b"UPGRADED"
        headers = {k.decode(): v.decode() for k, v in event.headers}
        assert headers["upgrade"] == "tcp"
        assert headers["content-type"] == "application/vnd.docker.multiplexed-stream"
        assert client.h11.our_state is h11.SWITCHED_PROTOCOL
        raw, _closed = client.h11.trailing_data
        while chunk := await client.stream.receive_some(65536):
            raw += chunk
    assert raw == b""


async def test_attach_without_upgrade_is_200(served: Api) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "plain")
    reply = await served.request(
        "POST", "/v1.41/containers/plain/attach?logs=1&stream=0&stdout=1"
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/vnd.docker.raw-stream"
    assert reply.headers["connection"] == "close"
    assert reply.body == b""


async def test_wait_sends_status_before_exit(served: Api) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "waited")
    client = await served.connect()
    async with client.stream:
        await client.send_request("POST", "/containers/waited/wait?condition=removed")
        head = await client.response_head()
        assert head.status_code == 200
        removed = await served.request("DELETE", "/containers/waited")
        assert removed.status == 204
        body = json.loads(await client.read_body())
    assert body == {"StatusCode": 0, "Error": None}


async def test_events_stream_filtered(served: Api) -> None:
    client = await served.connect()
    async with client.stream:
        filters = quote(json.dumps({"type": {"image": True}}))
        await client.send_request("GET", f"/v1.43/events?filters={filters}")
        head = await client.response_head()
        assert head.status_code == 200
        await import_tiny(served)
        await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "evented")
        await import_tiny(served, repo="tiny", tag="2")
        first = json.loads(await client.next_chunk())
        second = json.loads(await client.next_chunk())
    assert first["Type"] == "image"
    assert first["Action"] == "import"
    assert first["Actor"]["Attributes"]["name"] == "tiny:1"
    assert second["Actor"]["Attributes"]["name"] == "tiny:2"


async def test_events_until_past_ends(served: Api) -> None:
    reply = await served.request("GET", "/events?until=1")
    assert reply.status == 200
    assert reply.body == b""


# --- Hostile inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than"),
        (b'{"Image": ' + b"[" * 200 + b"]" * 200 + b"}", "nested deeper than"),
        (b'{"Image": "b", "StopTimeout": ' + b"1" * 5000 + b"}", "5000 characters"),
        (b'{"Image": "b", "StopTimeout": 1e400}', "1e400"),
        (b'{"Image": "b", "StopTimeout": NaN}', "NaN"),
        (b'{"Image": "b", "StopTimeout": -Infinity}', "-Infinity"),
    ],
)
async def test_hostile_json_body_400(served: Api, body: bytes, phrase: str) -> None:
    reply = await served.request("POST", "/containers/create", body=body)
    assert reply.status == 400
    message = reply.json()["message"]
    assert "invalid JSON in the request body" in message
    assert phrase in message


async def test_hostile_filters_400(served: Api) -> None:
    deep = quote("[" * 5000 + "]" * 5000)
    reply = await served.request("GET", f"/containers/json?filters={deep}")
    assert reply.status == 400
    assert "nested deeper than" in reply.json()["message"]


async def test_long_version_prefix_400(served: Api) -> None:
    reply = await served.request("GET", "/v" + "1" * 5000 + ".1/info")
    assert reply.status == 400
    message = reply.json()["message"]
    assert "invalid API version" in message
    assert "(5002 characters)" in message


@pytest.mark.parametrize(
    "query",
    [
        "since=inf",
        "since=nan",
        "since=-inf",
        "since=1e400",
        "since=" + "9" * 400,
        "since=-5",
        "since=0x10",
        "until=inf",
        "until=nan",
        "until=1e400",
    ],
)
async def test_events_absurd_time_400(served: Api, query: str) -> None:
    reply = await served.request("GET", f"/events?{query}")
    assert reply.status == 400
    name = query.partition("=")[0]
    assert f"invalid query parameter {name}=" in reply.json()["message"]


@pytest.mark.parametrize(
    "signal", ["SIGRTMIN", "RTMAX", "SIGRTMIN+1", "SIGIOT", "0", "65", "1" * 5000]
)
async def test_kill_invalid_signal_400(served: Api, signal: str) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "target")
    reply = await served.request("POST", f"/containers/target/kill?signal={signal}")
    assert reply.status == 400
    assert "invalid signal" in reply.json()["message"]


@pytest.mark.parametrize(
    ("seconds", "status"),
    [(-5, 400), (-2, 400), (MAX_STOP_TIMEOUT + 1, 400), (-1, 201), (0, 201)],
)
async def test_create_stop_timeout_range(
    served: Api, seconds: int, status: int
) -> None:
    await import_tiny(served)
    body = {"Image": "tiny:1", "Cmd": ["true"], "StopTimeout": seconds}
    reply = await create(served, body)
    assert reply.status == status
    if status == 400:
        assert f"StopTimeout {seconds}" in reply.json()["message"]


@pytest.mark.parametrize("signal", ["SIGRTMIN", "NOPE", "65"])
async def test_create_invalid_stop_signal_400(served: Api, signal: str) -> None:
    await import_tiny(served)
    body = {"Image": "tiny:1", "Cmd": ["true"], "StopSignal": signal}
    reply = await create(served, body)
    assert reply.status == 400
    message = reply.json()["message"]
    assert "StopSignal" in message
    assert repr(signal) in message


async def test_create_stop_signal_normalized(served: Api) -> None:
    await import_tiny(served)
    reply = await create(
        served, {"Image": "tiny:1", "Cmd": ["true"], "StopSignal": "int"}, "calm"
    )
    assert reply.status == 201
    inspected = (await served.request("GET", "/containers/calm/json")).json()
    assert inspected["Config"]["StopSignal"] == "SIGINT"


@pytest.mark.parametrize("value", ["-2", "-5", str(MAX_STOP_TIMEOUT + 1), "9" * 5000])
async def test_stop_invalid_timeout_400(served: Api, value: str) -> None:
    await import_tiny(served)
    await create(served, {"Image": "tiny:1", "Cmd": ["true"]}, "stoppable")
    for action in ("stop", "restart"):
        reply = await served.request(
            "POST", f"/containers/stoppable/{action}?t={value}"
        )
        assert reply.status == 400, action
        assert "invalid query parameter t=" in reply.json()["message"]


async def test_stop_minus_one_passed_through(
    served: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    graces: list[float | None] = []

    async def record_stop(
        self: Daemon, reference: str, grace: float | None = None
    ) -> bool:
        graces.append(grace)
        return False

    monkeypatch.setattr(Daemon, "stop_container", record_stop)
    reply = await served.request("POST", "/containers/any/stop?t=-1")
    assert reply.status == 304
    assert graces == [-1]


def truncated(archive: bytes) -> bytes:
    return archive[: len(archive) // 2]


def corrupted(archive: bytes) -> bytes:
    middle = len(archive) // 2
    flipped = bytes(byte ^ 0x5A for byte in archive[middle : middle + 500])
    return archive[:middle] + flipped + archive[middle + 500 :]


@pytest.mark.parametrize(
    "damage",
    [
        lambda tar: truncated(gzip.compress(tar)),
        lambda tar: truncated(lzma.compress(tar)),
        lambda tar: corrupted(lzma.compress(tar)),
    ],
    ids=["gzip-truncated", "xz-truncated", "xz-corrupted"],
)
async def test_damaged_compressed_import_400(served: Api, damage: Any) -> None:
    tar = make_tar({f"file{index}": os.urandom(50_000) for index in range(3)})
    reply = await served.request(
        "POST", "/images/create?fromSrc=-&repo=damaged", body=damage(tar)
    )
    assert reply.status == 400
    assert "archive" in reply.json()["message"]
    assert (await served.request("GET", "/images/json")).json() == []


@pytest.mark.parametrize(
    "error",
    [
        EOFError("Compressed file ended before the end-of-stream marker was reached"),
        zlib.error("Error -3 while decompressing data: invalid block type"),
        gzip.BadGzipFile("CRC check failed"),
        lzma.LZMAError("Corrupt input data"),
        OSError("Invalid data stream"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_import_decompression_error_400(
    served: Api, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # The image store may let a decompressor's error through, and the route
    # must still respond with a 400.
    async def failing_import(self: Daemon, source: Any, **options: Any) -> None:
        async for _chunk in source:
            pass
        raise error

    monkeypatch.setattr(Daemon, "import_image", failing_import)
    reply = await served.request(
        "POST", "/images/create?fromSrc=-&repo=damaged", body=TINY_TAR
    )
    assert reply.status == 400
    assert reply.json()["message"].startswith(
        f"invalid image archive: {type(error).__name__}: {error}"
    )


async def test_import_system_error_stays_500(
    served: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_import(self: Daemon, source: Any, **options: Any) -> None:
        async for _chunk in source:
            pass
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Daemon, "import_image", failing_import)
    reply = await served.request(
        "POST", "/images/create?fromSrc=-&repo=full", body=TINY_TAR
    )
    assert reply.status == 500
    assert reply.json()["message"].startswith("internal error: OSError:")


# --- Internal errors ------------------------------------------------------------------


async def test_internal_error_logged_500(
    served: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_images(self: Daemon) -> None:
        raise ValueError("the image index is unreadable")

    monkeypatch.setattr(Daemon, "images", broken_images)
    reply = await served.request("GET", "/v1.43/images/json")
    assert reply.status == 500
    assert reply.json() == {
        "message": "internal error: ValueError: the image index is unreadable"
    }
    logged = [
        record
        for record in caplog.records
        if "GET /v1.43/images/json" in record.getMessage()
    ]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[0] is ValueError


# --- The socket -----------------------------------------------------------------------


async def test_socket_mode(served: Api) -> None:
    assert stat.S_IMODE(os.stat(served.socket_path).st_mode) == SOCKET_MODE


async def test_stale_socket_replaced(served: Api, short_dir: Path) -> None:
    stale = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(stale))
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_api, served.daemon, stale)
        client = Client(await trio.open_unix_socket(str(stale)))
        async with client.stream:
            reply = await client.request("GET", "/_ping")
        assert reply.status == 200
        nursery.cancel_scope.cancel()
    assert not stale.exists()


async def test_live_socket_not_taken(served: Api) -> None:
    with pytest.raises(InvalidConfig, match="another daemon is listening"):
        await serve_api(served.daemon, served.socket_path)


async def test_regular_file_not_replaced(served: Api, short_dir: Path) -> None:
    regular = short_dir / "file"
    regular.write_text("keep me")
    with pytest.raises(InvalidConfig, match="not a socket"):
        await serve_api(served.daemon, regular)
    assert regular.read_text() == "keep me"
