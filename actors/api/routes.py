"""The Engine API endpoints: a table of (method, path pattern) to handler.

Each handler translates one request into calls of the Daemon's methods
and writes the response through the Exchange that the server gives it.
The JSON shapes come from `messages.api`. A handler raises DockyardError
for a failed request and the server turns it into the error response, so
handlers only write successful responses themselves. An error after a
streaming response has started cannot change its status, so the handlers
that stream report it inside the stream where Docker's format has room
for it (a wait's Error, an exec's stderr).
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
import re
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, Protocol, TypeVar

import attrs
import trio

from actors.container_actor import WAIT_CONDITIONS, WAIT_NOT_RUNNING
from actors.daemon import Daemon
from messages import api
from messages.errors import Conflict, DockyardError, InvalidRequest, NotFound
from messages.events import event_to_docker_json
from messages.stream import STDERR, encode_frame

logger = logging.getLogger(__name__)

JSON = "application/json"
RAW_STREAM = "application/vnd.docker.raw-stream"
MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream"
# dockerd labels a stream without a TTY as multiplexed from API 1.42 on.
MULTIPLEXED_SINCE = "1.42"

try:
    DOCKYARD_VERSION = metadata.version("dockyard")
except metadata.PackageNotFoundError:
    DOCKYARD_VERSION = "0.0.0"

# Go's names for the machine types that os.uname() reports.
GO_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}
# Exceptions that Python's decompressors raise for a damaged or cut archive.
DECOMPRESSION_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)
# The bz2 module raises a plain OSError, without an errno, with this message.
BZ2_DATA_ERROR = "Invalid data stream"
PULL_UNSUPPORTED = (
    "pulling images is not supported by Dockyard: build a root filesystem "
    "tarball and import it with `docker import FILE.tar NAME`, or run "
    "`dockyard import-busybox` for busybox"
)

T = TypeVar("T")


@attrs.frozen
class Request:
    """A parsed request line; `path` has no version prefix and is unquoted."""

    method: str
    path: str
    query: Mapping[str, Sequence[str]]
    api_version: str | None
    target: str


class Exchange(Protocol):
    """The interface through which a handler reads its body and responds.

    A response is written once: `respond` for a complete one, or
    `start_stream` or `hijack` followed by `write` calls and one `end`.
    """

    async def read_json(self) -> Any:
        """Read the whole body, up to the JSON body limit; None when it is empty."""

    def body(self) -> AsyncIterator[bytes]:
        """Iterate over the request body as it arrives."""

    async def respond(
        self, status: int, body: bytes = b"", content_type: str | None = None
    ) -> None: ...

    async def start_stream(self, status: int, content_type: str) -> None:
        """Send the status and headers now; the body follows in `write` calls."""

    async def hijack(self, content_type: str) -> None:
        """Switch to a raw stream: 101 when the client asked to upgrade, else 200."""

    async def write(self, data: bytes) -> None: ...

    async def end(self) -> None:
        """Finish the body; for a hijacked stream, close the write side."""

    async def wait_for_disconnect(self) -> None:
        """Return when the client has closed the connection."""


@attrs.frozen
class Call:
    """One request, with the daemon and the exchange its handler uses."""

    daemon: Daemon
    request: Request
    params: Mapping[str, str]
    exchange: Exchange
    # Tasks that outlive their request, such as detached execs.
    background: trio.Nursery

    def query(self, name: str) -> str | None:
        return api.query_value(self.request.query, name)

    def flag(self, name: str, default: bool = False) -> bool:
        return api.query_bool(self.request.query, name, default)

    def stream_type(self) -> str:
        if api.version_at_least(self.request.api_version, MULTIPLEXED_SINCE):
            return MULTIPLEXED_STREAM
        return RAW_STREAM


Handler = Callable[[Call], Awaitable[None]]


class MethodNotAllowed(DockyardError):
    http_status = 405


async def respond_json(call: Call, status: int, document: Any) -> None:
    await call.exchange.respond(status, json_line(document), JSON)


def json_line(document: Any) -> bytes:
    """Encode one JSON document followed by a newline, as Go's json.Encoder does."""
    return json.dumps(document).encode() + b"\n"


async def until_disconnect(
    exchange: Exchange, work: Callable[[], Awaitable[T]]
) -> T | None:
    """Run `work` until it returns, or return None once the client goes away."""
    result: T | None = None

    async def watch(cancel_scope: trio.CancelScope) -> None:
        await exchange.wait_for_disconnect()
        cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            result = await work()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise single_exception(group) from None
    return result


def single_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Unwrap a group of one exception (nested or not), else return the group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


# --- System ---------------------------------------------------------------------------


async def ping(call: Call) -> None:
    await call.exchange.respond(200, b"OK", "text/plain; charset=utf-8")


async def version(call: Call) -> None:
    uname = os.uname()
    arch = GO_ARCHITECTURES.get(uname.machine, uname.machine)
    details = {
        "ApiVersion": api.API_VERSION,
        "MinAPIVersion": api.MIN_API_VERSION,
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": uname.release,
        "Experimental": "false",
    }
    await respond_json(
        call,
        200,
        {
            "Platform": {"Name": "Dockyard"},
            "Components": [
                {"Name": "Engine", "Version": DOCKYARD_VERSION, "Details": details}
            ],
            "Version": DOCKYARD_VERSION,
            "ApiVersion": api.API_VERSION,
            "MinAPIVersion": api.MIN_API_VERSION,
            "Os": "linux",
            "Arch": arch,
            "KernelVersion": uname.release,
            "GitCommit": "",
            "GoVersion": "",
            "BuildTime": "",
        },
    )


async def info(call: Call) -> None:
    daemon = call.daemon
    snapshot = daemon.snapshot()
    config = snapshot.config
    containers = daemon.containers(all=True)
    running = sum(1 for record in containers if record.running)
    uname = os.uname()
    runtimes = {
        name: {"path": runtime.path, "runtimeArgs": list(runtime.config.runtime_args)}
        for name, runtime in sorted(snapshot.runtimes.items())
    }
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    await respond_json(
        call,
        200,
        {
            "ID": "",
            "Name": socket.gethostname(),
            "ServerVersion": DOCKYARD_VERSION,
            "Containers": len(containers),
            "ContainersRunning": running,
            "ContainersPaused": 0,
            "ContainersStopped": len(containers) - running,
            "Images": len(daemon.images()),
            "Driver": "overlay",
            "DockerRootDir": config.data_root,
            "Debug": config.debug,
            "Labels": list(config.labels),
            "Runtimes": runtimes,
            "DefaultRuntime": config.default_runtime,
            "OSType": "linux",
            "OperatingSystem": "Dockyard",
            "KernelVersion": uname.release,
            "Architecture": uname.machine,
            "NCPU": os.cpu_count() or 1,
            "MemTotal": memory,
            "LoggingDriver": "multiplexed-file",
            "CgroupDriver": "cgroupfs",
            "SecurityOptions": [],
            "Warnings": [],
            "Plugins": {"Volume": [], "Network": [], "Authorization": None, "Log": []},
            "Swarm": {"LocalNodeState": "inactive"},
        },
    )


async def reload(call: Call) -> None:
    outcome = await call.daemon.reload()
    if outcome.ok:
        await respond_json(call, 200, api.reload_outcome_json(outcome))
        return
    # The configuration file is the user's input, so a failed reload is a 400.
    await respond_json(call, 400, api.error_json(outcome.error or "reload failed"))


async def events(call: Call) -> None:
    filters = api.parse_filters(call.query("filters"), api.EVENT_FILTERS)
    since = call.query("since")
    # parse_timestamp bounds the time, so the conversion cannot overflow.
    since_nano = int(api.parse_timestamp(since, "since") * 1e9) if since else 0
    until = call.query("until")
    deadline = float("inf")
    if until:
        remaining = api.parse_timestamp(until, "until") - time.time()
        deadline = trio.current_time() + max(remaining, 0.0)
    # The daemon keeps no event history, so `since` only drops older events
    # and never replays past ones.
    with call.daemon.events() as channel:
        await call.exchange.start_stream(200, JSON)

        async def forward() -> None:
            with trio.move_on_at(deadline):
                async for event in channel:
                    if event.time_nano < since_nano:
                        continue
                    if api.event_matches(event, filters):
                        await call.exchange.write(
                            json_line(event_to_docker_json(event))
                        )

        await until_disconnect(call.exchange, forward)
    await call.exchange.end()


# --- Containers -----------------------------------------------------------------------


async def list_containers(call: Call) -> None:
    filters = api.parse_filters(call.query("filters"), api.CONTAINER_FILTERS)
    show_all = call.flag("all") or "status" in filters
    now = time.time()
    summaries = [
        api.container_summary(record, now=now)
        for record in call.daemon.containers(all=show_all)
        if api.container_matches(record, filters)
    ]
    limit = api.query_int(call.request.query, "limit")
    if limit is not None and limit > 0:
        summaries = summaries[:limit]
    await respond_json(call, 200, summaries)


async def create_container(call: Call) -> None:
    request = api.decode_create_container(
        await call.exchange.read_json(), name=call.query("name") or ""
    )
    try:
        call.daemon.image(request.image)
    except NotFound:
        # The docker CLI pulls the image on a 404 from create, and its pull
        # then fails with PULL_UNSUPPORTED.
        raise NotFound(f"No such image: {request.image}") from None
    record = await call.daemon.create_container(request)
    await respond_json(call, 201, {"Id": record.id, "Warnings": []})


async def inspect_container(call: Call) -> None:
    record = call.daemon.container(call.params["id"])
    await respond_json(call, 200, api.container_inspect(record))


async def start_container(call: Call) -> None:
    started = await call.daemon.start_container(call.params["id"])
    await call.exchange.respond(204 if started else 304)


async def stop_container(call: Call) -> None:
    if call.query("signal"):
        raise InvalidRequest(
            "stop with a custom signal is not supported; set the container's "
            "stop signal at create (--stop-signal) or use docker kill"
        )
    grace = api.query_stop_timeout(call.request.query, "t")
    stopped = await call.daemon.stop_container(call.params["id"], grace)
    await call.exchange.respond(204 if stopped else 304)


async def restart_container(call: Call) -> None:
    grace = api.query_stop_timeout(call.request.query, "t")
    await call.daemon.stop_container(call.params["id"], grace)
    await call.daemon.start_container(call.params["id"])
    await call.exchange.respond(204)


async def kill_container(call: Call) -> None:
    signal = api.parse_signal(call.query("signal") or "SIGKILL")
    await call.daemon.kill_container(call.params["id"], signal)
    await call.exchange.respond(204)


async def remove_container(call: Call) -> None:
    await call.daemon.remove_container(call.params["id"], force=call.flag("force"))
    await call.exchange.respond(204)


async def wait_container(call: Call) -> None:
    condition = call.query("condition") or WAIT_NOT_RUNNING
    if condition not in WAIT_CONDITIONS:
        raise InvalidRequest(
            f"invalid wait condition {api.quote_value(condition)}; use one of "
            f"{', '.join(WAIT_CONDITIONS)}"
        )
    reference = call.params["id"]
    call.daemon.container(reference)
    # As dockerd does, the status line goes out at once: `docker run` waits
    # for it before it starts the container, and the body follows at exit.
    await call.exchange.start_stream(200, JSON)
    try:
        code = await until_disconnect(
            call.exchange, lambda: call.daemon.wait_container(reference, condition)
        )
    except DockyardError as error:
        logger.warning("wait for container %s failed: %s", reference, error)
        body: dict[str, Any] = {"StatusCode": -1, "Error": {"Message": str(error)}}
    else:
        if code is None:
            return
        body = {"StatusCode": code, "Error": None}
    await call.exchange.write(json_line(body))
    await call.exchange.end()


async def container_logs(call: Call) -> None:
    stdout, stderr = call.flag("stdout"), call.flag("stderr")
    if not (stdout or stderr):
        raise InvalidRequest(
            "Bad parameters: you must choose at least one stream (stdout=1 or stderr=1)"
        )
    if call.flag("timestamps"):
        raise InvalidRequest(
            "log timestamps are not stored by Dockyard; run docker logs without -t"
        )
    for name in ("since", "until"):
        if call.query(name) not in (None, "", "0"):
            raise InvalidRequest(
                f"docker logs --{name} is not supported: Dockyard stores no "
                "timestamps; use --tail instead"
            )
    tail = api.parse_tail(call.query("tail"))
    reference = call.params["id"]
    daemon = call.daemon
    record = daemon.container(reference)
    if not call.flag("follow") or not record.running:
        stored = await daemon.container_logs(reference)
        selected = api.select_log_frames(
            stored, stdout=stdout, stderr=stderr, tail=tail
        )
        await call.exchange.respond(200, selected, call.stream_type())
        return
    with daemon.attach_container(reference) as frames:
        # NOTE: a frame written while the stored log is read can be sent
        # twice, once from the file and once live.
        stored = await daemon.container_logs(reference)
        await call.exchange.start_stream(200, call.stream_type())
        await call.exchange.write(
            api.select_log_frames(stored, stdout=stdout, stderr=stderr, tail=tail)
        )

        async def forward() -> None:
            async for frame in frames:
                await call.exchange.write(
                    api.select_log_frames(frame, stdout=stdout, stderr=stderr)
                )

        await until_disconnect(call.exchange, forward)
    await call.exchange.end()


async def attach_container(call: Call) -> None:
    stdout, stderr = call.flag("stdout"), call.flag("stderr")
    reference = call.params["id"]
    daemon = call.daemon
    daemon.container(reference)
    # NOTE: stdin is never forwarded; `stdin=1` is accepted and ignored.
    # The channel opens before the 101 goes out, so `docker run`, which
    # starts the container only after the upgrade, misses no output.
    with daemon.attach_container(reference) as frames:
        await call.exchange.hijack(call.stream_type())
        if call.flag("logs"):
            stored = await daemon.container_logs(reference)
            await call.exchange.write(
                api.select_log_frames(stored, stdout=stdout, stderr=stderr)
            )
        if call.flag("stream"):
            async for frame in frames:
                await call.exchange.write(
                    api.select_log_frames(frame, stdout=stdout, stderr=stderr)
                )
    await call.exchange.end()


# --- Exec -----------------------------------------------------------------------------


async def create_exec(call: Call) -> None:
    options = api.decode_exec_options(await call.exchange.read_json())
    instance = call.daemon.create_exec(call.params["id"], options)
    await respond_json(call, 201, {"Id": instance.id})


async def start_exec(call: Call) -> None:
    start = api.decode_exec_start(await call.exchange.read_json())
    exec_id = call.params["id"]
    instance = call.daemon.exec_instance(exec_id)
    if instance.running or instance.exit_code is not None:
        raise Conflict(f"exec {exec_id[:12]} has already been started")
    if start.detach:
        call.background.start_soon(_run_detached_exec, call.daemon, exec_id)
        await call.exchange.respond(200)
        return
    await call.exchange.hijack(call.stream_type())
    try:
        await call.daemon.start_exec(exec_id, call.exchange.write)
    except DockyardError as error:
        # The 101 is out, so the error can only travel in the stream.
        logger.warning("exec %s failed: %s", exec_id[:12], error)
        await call.exchange.write(encode_frame(STDERR, f"{error}\n".encode()))
    await call.exchange.end()


async def _run_detached_exec(daemon: Daemon, exec_id: str) -> None:
    async def discard(frame: bytes) -> None:
        pass

    try:
        code = await daemon.start_exec(exec_id, discard)
    except DockyardError as error:
        logger.warning("detached exec %s failed: %s", exec_id[:12], error)
        return
    except Exception:
        # It runs in the server's nursery, which must outlive any one exec.
        logger.exception("detached exec %s failed", exec_id[:12])
        return
    logger.info("detached exec %s exited with code %d", exec_id[:12], code)


async def inspect_exec(call: Call) -> None:
    instance = call.daemon.exec_instance(call.params["id"])
    document = api.exec_inspect(
        exec_id=instance.id,
        container_id=instance.container.id,
        options=instance.options,
        running=instance.running,
        exit_code=instance.exit_code,
        pid=instance.pid,
    )
    await respond_json(call, 200, document)


async def resize_exec(call: Call) -> None:
    # Without a TTY there is nothing to resize; the CLI may still ask.
    call.daemon.exec_instance(call.params["id"])
    await call.exchange.respond(200)


# --- Images ---------------------------------------------------------------------------


async def create_image(call: Call) -> None:
    if call.query("fromImage") is not None:
        raise NotFound(PULL_UNSUPPORTED)
    source = call.query("fromSrc")
    if source != "-":
        shown = "no fromSrc" if source is None else api.quote_value(source)
        raise InvalidRequest(
            f"importing from {shown} is not supported; send the tarball as the "
            "request body with fromSrc=- (`docker import FILE.tar NAME`)"
        )
    repository = call.query("repo") or ""
    tag = call.query("tag") or ""
    reference = f"{repository}:{tag}" if repository and tag else repository
    changes = tuple(call.request.query.get("changes", ()))
    try:
        image = await call.daemon.import_image(
            call.exchange.body(), reference=reference or None, changes=changes
        )
    except (*DECOMPRESSION_ERRORS, OSError) as error:
        if not _is_decompression_error(error):
            raise
        raise InvalidRequest(
            f"invalid image archive: {type(error).__name__}: {error}. Send a "
            "complete uncompressed, gzip, bzip2 or xz tar archive."
        ) from error
    await call.exchange.respond(200, json_line({"status": image.id}), JSON)


def _is_decompression_error(error: BaseException) -> bool:
    if isinstance(error, DECOMPRESSION_ERRORS):
        return True
    return (
        type(error) is OSError and error.errno is None and str(error) == BZ2_DATA_ERROR
    )


async def list_images(call: Call) -> None:
    await respond_json(
        call, 200, [api.image_summary(image) for image in call.daemon.images()]
    )


async def inspect_image(call: Call) -> None:
    await respond_json(
        call, 200, api.image_inspect(call.daemon.image(call.params["name"]))
    )


async def remove_image(call: Call) -> None:
    removal = await call.daemon.remove_image(
        call.params["name"], force=call.flag("force")
    )
    await respond_json(call, 200, api.image_removal_json(removal))


# --- The table ------------------------------------------------------------------------

_CONTAINER = r"/containers/(?P<id>[^/]+)"
_EXEC = r"/exec/(?P<id>[^/]+)"

ROUTES: tuple[tuple[str, re.Pattern[str], Handler], ...] = tuple(
    (method, re.compile(f"{pattern}$"), handler)
    for method, pattern, handler in (
        ("GET", "/_ping", ping),
        ("HEAD", "/_ping", ping),
        ("GET", "/version", version),
        ("GET", "/info", info),
        ("GET", "/events", events),
        ("POST", "/dockyard/reload", reload),
        ("GET", "/containers/json", list_containers),
        ("POST", "/containers/create", create_container),
        ("GET", f"{_CONTAINER}/json", inspect_container),
        ("POST", f"{_CONTAINER}/start", start_container),
        ("POST", f"{_CONTAINER}/stop", stop_container),
        ("POST", f"{_CONTAINER}/restart", restart_container),
        ("POST", f"{_CONTAINER}/kill", kill_container),
        ("POST", f"{_CONTAINER}/wait", wait_container),
        ("GET", f"{_CONTAINER}/logs", container_logs),
        ("POST", f"{_CONTAINER}/attach", attach_container),
        ("POST", f"{_CONTAINER}/exec", create_exec),
        ("DELETE", _CONTAINER, remove_container),
        ("POST", f"{_EXEC}/start", start_exec),
        ("GET", f"{_EXEC}/json", inspect_exec),
        ("POST", f"{_EXEC}/resize", resize_exec),
        ("POST", "/images/create", create_image),
        ("GET", "/images/json", list_images),
        ("GET", "/images/(?P<name>.+)/json", inspect_image),
        ("DELETE", "/images/(?P<name>.+)", remove_image),
    )
)


def find_route(method: str, path: str) -> tuple[Handler, dict[str, str]]:
    """Return the handler for a request and its path parameters.

    Raises NotFound for an unknown path and MethodNotAllowed for a known
    path asked with another method.
    """
    path_known = False
    for route_method, pattern, handler in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        if route_method == method:
            return handler, match.groupdict()
        path_known = True
    if path_known:
        raise MethodNotAllowed(f"method {method} is not allowed for {path}")
    raise NotFound(f"page not found: {method} {path} is not part of the Dockyard API")
