"""The API server: the Docker Engine API over HTTP/1.1 on a Unix socket.

It owns the listening socket and the client connections; the endpoints
live in `actors.api.routes`. h11 parses and writes all HTTP. Rules:

- A connection serves one request at a time and is kept alive between
  requests unless either side sends `Connection: close`. A request body
  the handler did not read is drained, up to MAX_DRAIN_BYTES, before the
  next request.
- A JSON body is read whole, up to MAX_JSON_BODY_BYTES (413 past it); an
  image import streams its body, chunked or not, straight to the store.
- Malformed HTTP gets a 400 (or the status h11 suggests) and the
  connection is closed.
- Slow or silent clients are closed, so that they cannot hold the
  server's descriptors: a request head must arrive whole within
  REQUEST_HEAD_TIMEOUT_SECONDS, a keep-alive connection may wait
  IDLE_TIMEOUT_SECONDS for its next request, a request body may pause at
  most BODY_READ_TIMEOUT_SECONDS, and a JSON body must arrive whole
  within JSON_BODY_TIMEOUT_SECONDS. No timeout applies while a
  response streams (events, logs, wait, attach, exec), so those
  connections stay open until either side ends them.
- At most MAX_CONNECTIONS connections are served at once. At the limit
  the server stops accepting, so new clients wait in the listen backlog
  until a connection closes.
- Attach and exec start hijack the connection: the client asks with
  `Connection: Upgrade` and `Upgrade: tcp`, the server replies
  `101 UPGRADED`, and from then on the socket carries raw multiplexed
  frames until the server closes its write side. A client that did not
  ask to upgrade gets the same stream as the body of a 200, and the
  connection then closes.
- A DockyardError becomes its `http_status` with `{"message": ...}`, as
  dockerd answers. Any other exception is a 500 with the message
  "internal error: TYPE: TEXT" and is logged with its traceback. Every
  caught error is logged with the request line.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import urllib.parse
from pathlib import Path
from typing import Any

import h11
import trio

from actors.api import routes
from actors.daemon import Daemon
from messages import api
from messages.errors import DockyardError, InvalidConfig, InvalidRequest

logger = logging.getLogger(__name__)

# The largest JSON request body. A create request from the docker CLI is a
# few kilobytes, even with many environment variables and labels.
MAX_JSON_BODY_BYTES = 1 << 20
# The most of an unread request body (an import rejected before its end)
# that is read and dropped to keep the connection alive. Past it, the
# connection is closed.
MAX_DRAIN_BYTES = 64 << 20
# Bytes a client may send, while a response streams, ahead of its next
# request; past it, the connection is treated as broken.
MAX_PIPELINED_BYTES = 64 * 1024
RECEIVE_BYTES = 64 * 1024
# A client has this long, from connecting or from the first byte of a later
# request, to send the whole request line and headers. The docker CLI sends
# them in one write. The limit closes clients that trickle them in
# (slowloris) and clients that connect and send nothing.
REQUEST_HEAD_TIMEOUT_SECONDS = 30.0
# How long a keep-alive connection may wait for its next request. The
# docker CLI reuses a connection only within one command.
IDLE_TIMEOUT_SECONDS = 60.0
# The maximum pause between two reads of a request body. An import streams
# for as long as its data keeps arriving.
BODY_READ_TIMEOUT_SECONDS = 60.0
# A JSON body, at most MAX_JSON_BODY_BYTES, must arrive whole in this time.
JSON_BODY_TIMEOUT_SECONDS = 30.0
# Each connection uses one descriptor. Python keeps the soft RLIMIT_NOFILE
# it inherits, 1024 by default on Linux, so this leaves half of that for
# container pipes, log files, the image store and runc. A flood of clients
# then cannot make the daemon's own open() or pipe() fail with EMFILE. A
# `docker run` keeps two connections open (attach and wait) while it runs.
MAX_CONNECTIONS = 512
# Owner and group may use the API; others may not, because it runs
# containers as root.
SOCKET_MODE = 0o660
LISTEN_BACKLOG = 128
# accept() errors that mean "out of descriptors or memory for now": the
# server waits this many seconds and accepts again instead of stopping.
ACCEPT_RETRY_SECONDS = 0.1
# A run of accept() failures, or of waits at MAX_CONNECTIONS, is logged
# when it starts and then as a count at most once per this many seconds.
ACCEPT_FAILURE_LOG_SECONDS = 10.0
_ACCEPT_RETRY_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)

_BASE_HEADERS = (
    ("Api-Version", api.API_VERSION),
    ("Docker-Experimental", "false"),
    ("Ostype", "linux"),
    ("Server", f"Dockyard/{routes.DOCKYARD_VERSION} (linux)"),
)
_CLIENT_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class BodyTooLarge(DockyardError):
    http_status = 413


class RequestTimeout(DockyardError):
    http_status = 408


async def serve_api(
    daemon: Daemon,
    path: Path,
    *,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on the Unix socket `path` until cancelled.

    Replaces a stale socket file left by a daemon that died, but raises
    InvalidConfig when `path` is not a socket or another daemon still
    listens on it. Reports started once clients can connect, and removes
    the socket file when it stops. At most `max_connections` clients are
    served at once.
    """
    await trio.to_thread.run_sync(_clear_socket_path, path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        # Before listen(), so no client can connect while the mode is wider.
        os.chmod(path, SOCKET_MODE)
        identity = os.stat(path).st_ino
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    logger.info("API listening on unix://%s", path)
    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            await _accept_forever(daemon, listener, nursery, max_connections)
    finally:
        _remove_socket(path, identity)
        logger.info("API on unix://%s stopped", path)


def _clear_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidConfig(
            f"cannot listen on unix://{path}: the path exists and is not a "
            "socket. Remove it or choose another host."
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            logger.info("removing stale socket %s", path)
            path.unlink()
            return
    raise InvalidConfig(
        f"cannot listen on unix://{path}: another daemon is listening on it. "
        "Stop that daemon or choose another host."
    )


def _remove_socket(path: Path, identity: int) -> None:
    """Remove the socket file unless another daemon has replaced it since."""
    try:
        if os.stat(path).st_ino == identity:
            path.unlink()
    except OSError as error:
        logger.warning("could not remove socket %s: %s", path, error)


class _RepeatedLog:
    """The log of a condition that may recur many times a second.

    It logs the first occurrence of a run, then the count of further ones
    at most once per ACCEPT_FAILURE_LOG_SECONDS, and the total when the
    run ends.
    """

    def __init__(self, level: int, first: str, repeated: str, ended: str) -> None:
        self._level = level
        self._first = first
        self._repeated = repeated
        self._ended = ended
        self._total = 0
        self._unlogged = 0
        self._logged_at = 0.0

    def occurred(self, detail: object) -> None:
        now = trio.current_time()
        self._total += 1
        if self._total == 1:
            logger.log(self._level, self._first, detail)
            self._logged_at = now
            return
        self._unlogged += 1
        if now - self._logged_at >= ACCEPT_FAILURE_LOG_SECONDS:
            logger.log(self._level, self._repeated, self._unlogged, detail)
            self._unlogged = 0
            self._logged_at = now

    def end(self) -> None:
        if self._total:
            logger.info(self._ended, self._total)
        self._total = 0
        self._unlogged = 0


async def _accept_forever(
    daemon: Daemon,
    listener: trio.abc.Listener[trio.SocketStream],
    nursery: trio.Nursery,
    max_connections: int,
) -> None:
    # A token per open connection; its task returns the token when it ends.
    slots = trio.Semaphore(max_connections)
    failures = _RepeatedLog(
        logging.ERROR,
        "accept failed, retrying: %s",
        "accept failed %d more times, still retrying: %s",
        "accept works again after %d failures",
    )
    full = _RepeatedLog(
        logging.WARNING,
        "all %d API connections are in use: new clients wait until one closes",
        "the API connection limit was reached %d more times (limit %d)",
        "API connections fell below the limit again after %d waits",
    )
    while True:
        if slots.value == 0:
            full.occurred(max_connections)
        await slots.acquire()
        try:
            stream = await listener.accept()
        except OSError as error:
            slots.release()
            if error.errno not in _ACCEPT_RETRY_ERRORS:
                raise
            failures.occurred(error)
            await trio.sleep(ACCEPT_RETRY_SECONDS)
            continue
        except BaseException:
            slots.release()
            raise
        failures.end()
        if slots.value > 0:
            full.end()
        nursery.start_soon(_serve_connection, daemon, stream, nursery, slots)


async def _serve_connection(
    daemon: Daemon,
    stream: trio.SocketStream,
    background: trio.Nursery,
    slots: trio.Semaphore,
) -> None:
    try:
        async with stream:
            await _serve_requests(daemon, _Connection(stream), background)
    finally:
        slots.release()


async def _serve_requests(
    daemon: Daemon, connection: _Connection, background: trio.Nursery
) -> None:
    first = True
    try:
        while True:
            event = await connection.receive_request(first=first)
            if event is None:
                return
            first = False
            exchange = _Exchange(connection, event)
            await _handle(daemon, exchange, background)
            if not await connection.finish_cycle(exchange):
                return
    except _CLIENT_GONE:
        logger.debug("client closed the connection")
    except Exception:
        # A bug in one connection must not stop the server with it.
        logger.exception("connection failed; closing it")


class _Connection:
    """One client connection: the h11 state machine and its socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)

    async def next_event(self) -> Any:
        """Return the next h11 event, receiving from the socket as needed."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.h11.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[]))
            self.h11.receive_data(await self.stream.receive_some(RECEIVE_BYTES))

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_body_event(self) -> Any:
        """Return the next event of a request body, or None after a long pause.

        A pause is too long past BODY_READ_TIMEOUT_SECONDS.
        """
        with trio.move_on_after(BODY_READ_TIMEOUT_SECONDS):
            return await self.next_event()
        return None

    async def receive_request(self, *, first: bool) -> h11.Request | None:
        """Wait for the next request head, within the timeouts for a head.

        `first` is True on a new connection, whose head is due within
        REQUEST_HEAD_TIMEOUT_SECONDS. Before a later request the connection
        may be idle for IDLE_TIMEOUT_SECONDS, and then the rest of the head
        is due within REQUEST_HEAD_TIMEOUT_SECONDS of its first byte.
        Returns None when the client closed, sent garbage or timed out.
        """
        # Bytes already buffered are the start of a pipelined request.
        started = first or bool(self.h11.trailing_data[0])
        timeout = REQUEST_HEAD_TIMEOUT_SECONDS if started else IDLE_TIMEOUT_SECONDS
        event: Any = None
        protocol_error: h11.RemoteProtocolError | None = None
        with trio.move_on_after(timeout) as deadline:
            try:
                event = await self._next_head_event(deadline, started)
            except h11.RemoteProtocolError as error:
                protocol_error = error
        if protocol_error is not None:
            await self._reject(protocol_error)
            return None
        if deadline.cancelled_caught:
            if first or self.h11.trailing_data[0]:
                logger.debug(
                    "closing a connection: no complete request head within %ss",
                    REQUEST_HEAD_TIMEOUT_SECONDS,
                )
            else:
                logger.debug(
                    "closing a keep-alive connection idle for %ss",
                    IDLE_TIMEOUT_SECONDS,
                )
            return None
        if isinstance(event, h11.Request):
            return event
        return None

    async def _next_head_event(self, deadline: trio.CancelScope, started: bool) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if data and not started:
                # The idle wait is over, so the head is due from now on.
                started = True
                deadline.deadline = trio.current_time() + REQUEST_HEAD_TIMEOUT_SECONDS
            self.h11.receive_data(data)

    async def _reject(self, error: h11.RemoteProtocolError) -> None:
        logger.info("malformed HTTP request: %s", error)
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = routes.json_line(api.error_json(f"malformed HTTP request: {error}"))
        headers = [
            *_BASE_HEADERS,
            ("Content-Type", routes.JSON),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            await self.send(
                h11.Response(status_code=error.error_status_hint, headers=headers)
            )
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
        except (*_CLIENT_GONE, h11.LocalProtocolError) as send_error:
            logger.debug("could not send the 400: %s", send_error)

    async def finish_cycle(self, exchange: _Exchange) -> bool:
        """Get ready for the next request; False when the connection must close."""
        if exchange.close_after or self.h11.our_state is not h11.DONE:
            return False
        drained = 0
        try:
            while self.h11.their_state is h11.SEND_BODY:
                event = await self.next_body_event()
                if isinstance(event, h11.Data):
                    drained += len(event.data)
                    if drained > MAX_DRAIN_BYTES:
                        return False
                elif not isinstance(event, h11.EndOfMessage):
                    return False
        except h11.RemoteProtocolError:
            return False
        if self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True


class _Body:
    """The request body as an async iterator of chunks, for streaming imports."""

    def __init__(self, connection: _Connection, exchange: _Exchange) -> None:
        self._connection = connection
        self._exchange = exchange

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        while self._connection.h11.their_state is h11.SEND_BODY:
            try:
                event = await self._connection.next_body_event()
            except h11.RemoteProtocolError as error:
                raise InvalidRequest(f"malformed request body: {error}") from None
            if event is None:
                self._exchange.close_after = True
                raise RequestTimeout(
                    "request body timed out: no data arrived for "
                    f"{BODY_READ_TIMEOUT_SECONDS:g} seconds. Send the body "
                    "without pausing."
                )
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif not isinstance(event, h11.EndOfMessage):
                raise InvalidRequest(
                    "the client closed the connection before the request body ended"
                )
        raise StopAsyncIteration


def _parse_target(method: str, target: str) -> routes.Request:
    raw_path, _, raw_query = target.partition("?")
    version, path = api.split_api_version(urllib.parse.unquote(raw_path))
    query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
    return routes.Request(
        method=method, path=path, query=query, api_version=version, target=target
    )


class _Exchange:
    """One request and its response; implements routes.Exchange."""

    def __init__(self, connection: _Connection, event: h11.Request) -> None:
        self._connection = connection
        self._event = event
        self.request = _parse_target(
            event.method.decode("ascii"), event.target.decode("latin-1")
        )
        self.started = False
        self.finished = False
        self.close_after = False
        # Set once the client has closed its end while a response streamed.
        self.client_gone = False
        self._hijacked = False
        self._write_lock = trio.Lock()

    @property
    def request_line(self) -> str:
        return f"{self.request.method} {self.request.target}"

    # Reading.

    def body(self) -> _Body:
        return _Body(self._connection, self)

    async def read_json(self) -> Any:
        length = self._header(b"content-length")
        if (
            length is not None
            and length.isdigit()
            and int(length) > MAX_JSON_BODY_BYTES
        ):
            self.close_after = True
            raise BodyTooLarge(_too_large_message())
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(JSON_BODY_TIMEOUT_SECONDS) as deadline:
            async for chunk in self.body():
                size += len(chunk)
                if size > MAX_JSON_BODY_BYTES:
                    self.close_after = True
                    raise BodyTooLarge(_too_large_message())
                chunks.append(chunk)
        if deadline.cancelled_caught:
            self.close_after = True
            raise RequestTimeout(
                f"request body timed out: a JSON body must arrive within "
                f"{JSON_BODY_TIMEOUT_SECONDS:g} seconds. Send the whole body "
                "without pausing."
            )
        data = b"".join(chunks)
        if not data.strip():
            return None
        try:
            return api.load_json(data)
        except ValueError as error:
            raise InvalidRequest(
                f"invalid JSON in the request body: {error}. Send a JSON object."
            ) from None

    async def wait_for_disconnect(self) -> None:
        async for _chunk in self.body():
            pass
        buffered = 0
        while True:
            try:
                data = await self._connection.stream.receive_some(RECEIVE_BYTES)
            except _CLIENT_GONE:
                data = b""
            if not data:
                break
            buffered += len(data)
            if buffered > MAX_PIPELINED_BYTES:
                break
            # Kept for h11: it may be the start of the client's next request.
            self._connection.h11.receive_data(data)
        self.client_gone = True
        self.close_after = True

    def _header(self, name: bytes) -> str | None:
        for key, value in self._event.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    # Writing.

    def _headers(self, content_type: str | None) -> list[tuple[str, str]]:
        headers = list(_BASE_HEADERS)
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        if self.close_after:
            headers.append(("Connection", "close"))
        return headers

    async def respond(
        self, status: int, body: bytes = b"", content_type: str | None = None
    ) -> None:
        self._start()
        headers = self._headers(content_type)
        has_body = status not in (204, 304)
        if has_body:
            headers.append(("Content-Length", str(len(body))))
        await self._connection.send(h11.Response(status_code=status, headers=headers))
        if has_body and body and self.request.method != "HEAD":
            await self._connection.send(h11.Data(data=body))
        await self._connection.send(h11.EndOfMessage())
        self.finished = True

    async def start_stream(self, status: int, content_type: str) -> None:
        self._start()
        # Without a Content-Length, h11 frames the body as chunked.
        response = h11.Response(status_code=status, headers=self._headers(content_type))
        await self._connection.send(response)

    async def hijack(self, content_type: str) -> None:
        async for _chunk in self.body():
            pass
        # h11 takes any Upgrade header as a proposal to switch protocols.
        if not self._header(b"upgrade"):
            self.close_after = True
            await self.start_stream(200, content_type)
            return
        self._start()
        headers = [
            *self._headers(content_type),
            ("Connection", "Upgrade"),
            ("Upgrade", "tcp"),
        ]
        await self._connection.send(
            h11.InformationalResponse(
                status_code=101, headers=headers, reason=b"UPGRADED"
            )
        )
        self._hijacked = True
        self.close_after = True

    async def write(self, data: bytes) -> None:
        if not data:
            return
        # Writers may run concurrently (an exec's stdout and stderr forwarders).
        async with self._write_lock:
            if self._hijacked:
                await self._connection.stream.send_all(data)
            else:
                await self._connection.send(h11.Data(data=data))

    async def end(self) -> None:
        if self.client_gone:
            self.finished = True
            return
        if self._hijacked:
            await self._connection.stream.send_eof()
        else:
            await self._connection.send(h11.EndOfMessage())
        self.finished = True

    def _start(self) -> None:
        if self.started:
            raise RuntimeError(f"{self.request_line}: the response was already started")
        self.started = True


def _too_large_message() -> str:
    return (
        f"request body too large: the limit for JSON bodies is "
        f"{MAX_JSON_BODY_BYTES} bytes. Send a smaller request."
    )


async def _handle(
    daemon: Daemon, exchange: _Exchange, background: trio.Nursery
) -> None:
    request = exchange.request
    line = exchange.request_line
    logger.debug("request %s", line)
    try:
        if request.api_version is not None:
            api.check_api_version(request.api_version)
        handler, params = routes.find_route(request.method, request.path)
        await handler(routes.Call(daemon, request, params, exchange, background))
    except Exception as caught:
        # Inside the except block, so that logger.exception has the traceback.
        await _respond_error(exchange, caught)
        return
    if exchange.client_gone:
        logger.debug("%s: the client went away", line)
    elif not exchange.finished:
        logger.error("%s: the handler did not finish its response", line)
        exchange.close_after = True


async def _respond_error(exchange: _Exchange, caught: Exception) -> None:
    line = exchange.request_line
    error = _leaf(caught)
    if isinstance(error, _CLIENT_GONE):
        logger.debug("%s: client went away: %r", line, error)
        exchange.close_after = True
        return
    if isinstance(error, DockyardError):
        status, message = error.http_status, str(error)
        level = logging.INFO if status < 500 else logging.ERROR
        logger.log(level, "%s failed with %d: %s", line, status, message)
    else:
        status, message = 500, f"internal error: {type(error).__name__}: {error}"
        logger.exception("%s failed with an internal error", line)
    if exchange.started:
        # The status line is out, so closing is the only way to show the
        # client that the body is incomplete.
        exchange.close_after = True
        return
    body = routes.json_line(api.error_json(message))
    try:
        await exchange.respond(status, body, routes.JSON)
    except _CLIENT_GONE:
        exchange.close_after = True


def _leaf(error: BaseException) -> BaseException:
    """Find the error to report in what may be a (nested) exception group."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    user_errors = error.subgroup(DockyardError)
    if user_errors is not None:
        return _first_leaf(user_errors)
    if error.subgroup(_not_client_gone) is None:
        return _first_leaf(error)
    return routes.single_exception(error)


def _not_client_gone(error: BaseException) -> bool:
    # False for groups, so that subgroup() looks at the leaves inside them.
    return not isinstance(error, (BaseExceptionGroup, *_CLIENT_GONE))


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
