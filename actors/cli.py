"""The `dockyard` command: `daemon`, `reload` and `import-busybox`."""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from actors.images import IMAGES_DIRECTORY
from actors.reload_actor import ConfigSource
from messages.config import DEFAULT_HOST, DaemonFlags
from messages.errors import DockyardError

if TYPE_CHECKING:
    from actors.daemon import Daemon

logger = logging.getLogger("dockyard")

DEFAULT_CONFIG_FILE = Path("/etc/dockyard/daemon.json")
RELOAD_PATH = "/dockyard/reload"
# A reload waits for the wrapper writes of every changed runtime.
RELOAD_REQUEST_TIMEOUT = 120.0
# The busybox image `make run` imports.
BUSYBOX_REFERENCE = "busybox:latest"
# Written under exec-root while the daemon runs, for `kill -HUP "$(cat ...)"`.
PID_FILE_NAME = "dockyard.pid"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    status = 1
    try:
        status = arguments.run(arguments)
    except* DockyardError as group:
        # Errors raised inside the daemon's nurseries arrive grouped.
        for error in _leaves(group):
            print(f"dockyard: {error}", file=sys.stderr)
    except* KeyboardInterrupt:
        status = 130
    return status


def _leaves(group: BaseExceptionGroup[DockyardError]) -> list[DockyardError]:
    leaves: list[DockyardError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaves(error))
        else:
            leaves.append(error)
    return leaves


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockyard", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    daemon = commands.add_parser("daemon", help="run the daemon in the foreground")
    _add_daemon_flags(daemon)
    daemon.set_defaults(run=_run_daemon)

    reload = commands.add_parser(
        "reload", help="reload the running daemon's configuration and wait for it"
    )
    reload.add_argument(
        "--host",
        "-H",
        default=DEFAULT_HOST,
        help=f"the daemon's socket, as unix://PATH (default {DEFAULT_HOST})",
    )
    reload.set_defaults(run=_run_reload)

    busybox = commands.add_parser(
        "import-busybox",
        help="make the busybox image from /usr/bin/busybox (Debian's busybox-static)",
    )
    _add_daemon_flags(busybox)
    busybox.set_defaults(run=_run_import_busybox)
    return parser


def _add_daemon_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-file",
        type=Path,
        default=None,
        help="daemon.json to read (default /etc/dockyard/daemon.json; while that "
        "does not exist, the embedded defaults apply)",
    )
    parser.add_argument("--data-root", help="where containers and images are kept")
    parser.add_argument("--exec-root", help="where runtime state is kept")
    parser.add_argument(
        "--host",
        "-H",
        action="append",
        dest="hosts",
        help="socket to listen on, as unix://PATH (repeatable)",
    )
    parser.add_argument(
        "--debug", action="store_true", default=None, help="log at debug level"
    )


def _flags(arguments: argparse.Namespace) -> DaemonFlags:
    return DaemonFlags(
        data_root=arguments.data_root,
        exec_root=arguments.exec_root,
        hosts=tuple(arguments.hosts) if arguments.hosts else None,
        debug=arguments.debug,
    )


def _config_source(arguments: argparse.Namespace) -> ConfigSource:
    """The file named by --config-file must exist; the default one may not."""
    given: Path | None = arguments.config_file
    return ConfigSource(
        path=given or DEFAULT_CONFIG_FILE,
        flags=_flags(arguments),
        required=given is not None,
    )


def _run_daemon(arguments: argparse.Namespace) -> int:
    # Until trio installs its handler, a SIGHUP would end the process; the
    # configuration is read after that point, so nothing is missed.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    trio.run(_daemon, _config_source(arguments))
    return 0


async def _daemon(source: ConfigSource) -> None:
    from actors.api.server import serve_api
    from actors.daemon import open_daemon

    signals = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    with trio.open_signal_receiver(*signals) as received:
        async with (
            open_daemon(
                source.path,
                flags=source.flags,
                config_required=source.required,
            ) as daemon,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(_follow_debug, daemon.snapshots())
            config = daemon.snapshot().config
            pid_file = trio.Path(config.exec_root) / PID_FILE_NAME
            await pid_file.write_text(f"{os.getpid()}\n")
            try:
                for host in config.hosts:
                    path = Path(host.removeprefix("unix://"))
                    await nursery.start(serve_api, daemon, path)
                    print(f"dockyard: API listening on unix://{path}", flush=True)
                print(f"dockyard: pid {os.getpid()} is in {pid_file}", flush=True)
                await _handle_signals(received, daemon)
            finally:
                with trio.CancelScope(shield=True):
                    await pid_file.unlink(missing_ok=True)
            nursery.cancel_scope.cancel()


async def _handle_signals(received: AsyncIterator[int], daemon: Daemon) -> None:
    """Reload on SIGHUP; return on SIGTERM or SIGINT, to shut down."""
    async for number in received:
        if number == signal.SIGHUP:
            logger.info("SIGHUP received: reloading the configuration")
            daemon.request_reload()
            continue
        logger.info("%s received: shutting down", signal.Signals(number).name)
        return


async def _follow_debug(snapshots: AsyncIterator[object]) -> None:
    """Switch the log level when a reload changes `debug`."""
    from messages.snapshot import Snapshot

    async for snapshot in snapshots:
        assert isinstance(snapshot, Snapshot)
        level = logging.DEBUG if snapshot.config.debug else logging.INFO
        logging.getLogger().setLevel(level)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _run_reload(arguments: argparse.Namespace) -> int:
    host: str = arguments.host
    if not host.startswith("unix://"):
        print(f"dockyard: --host {host!r} must be unix://PATH", file=sys.stderr)
        return 2
    path = host.removeprefix("unix://")
    connection = _UnixConnection(path, RELOAD_REQUEST_TIMEOUT)
    try:
        connection.request("POST", RELOAD_PATH)
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
    except (OSError, ValueError) as error:
        print(
            f"dockyard: cannot reach the daemon at {host}: {error}. Is it running?",
            file=sys.stderr,
        )
        return 1
    finally:
        connection.close()
    if response.status != 200:
        print(f"dockyard: reload failed: {body.get('message', body)}", file=sys.stderr)
        return 1
    print(f"reloaded: generation {body['Generation']}")
    for key in body.get("Changed", []):
        print(f"changed: {key}")
    for key in body.get("RestartRequired", []):
        print(f"needs a daemon restart to take effect: {key}")
    return 0


def _run_import_busybox(arguments: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    trio.run(_import_busybox, _config_source(arguments))
    return 0


async def _import_busybox(source: ConfigSource) -> None:
    from actors.busybox import import_busybox
    from actors.images import ImageStore

    config = source.load()
    store = ImageStore(Path(config.data_root) / IMAGES_DIRECTORY)
    await trio.Path(store.root).mkdir(parents=True, exist_ok=True)
    await store.load()
    image = await import_busybox(store, reference=BUSYBOX_REFERENCE)
    print(f"dockyard: image {BUSYBOX_REFERENCE} is {image.id}")


if __name__ == "__main__":
    sys.exit(main())
