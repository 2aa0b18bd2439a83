"""The reload actor: it turns reload requests into published snapshots.

Rules it keeps:
- One reload at a time. Requests that arrive while a reload runs are
  served together by the next one, which reads the file as it is then, so
  a burst of SIGHUPs ends in the file's last content.
- A reload is a transaction. It decodes and validates the new
  configuration, derives the runtimes (writing new wrappers, which no
  container can see yet), and commits by publishing the snapshot. On any
  failure it rolls back and the previous snapshot stays in force.
- A runtime whose configuration did not change is carried over from the
  previous snapshot with no I/O, so a reload costs in proportion to what
  changed, not to what is configured.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from actors.config_actor import ConfigActor
from actors.events import EventBus
from actors.transaction import Transaction
from actors.wrappers import WrapperStore
from messages.config import (
    BUILTIN_RUNTIME,
    DaemonConfig,
    DaemonFlags,
    RuntimeConfig,
    config_from_flags,
    parse_daemon_json,
    validate_config,
)
from messages.errors import DockyardError, InvalidConfig
from messages.events import reload_event_attributes
from messages.reload import ReloadOutcome, diff_configs, keep_restart_keys
from messages.snapshot import ResolvedRuntime, Snapshot
from messages.wrapper import wrapper_script

logger = logging.getLogger(__name__)

PathLookup = Callable[[str], str | None]

# Larger files are rejected unread; thousands of runtimes fit in far less.
MAX_CONFIG_BYTES = 16 * 1024 * 1024


@attrs.frozen
class ConfigSource:
    """The sources of a configuration: daemon.json (if any) and the flags.

    With `required` false, a missing file means the embedded defaults, so
    a daemon started without daemon.json picks the file up on a reload
    once it has been written.
    """

    path: Path | None = None
    flags: DaemonFlags = attrs.field(factory=DaemonFlags)
    required: bool = True

    def load(self) -> DaemonConfig:
        """Read and decode the configuration; blocking, so run it in a thread."""
        if self.path is None:
            return config_from_flags(self.flags)
        text = _read_config_file(self.path, self.required)
        if text is None:
            return config_from_flags(self.flags)
        return parse_daemon_json(text, source=str(self.path), flags=self.flags)


def _read_config_file(path: Path, required: bool) -> str | None:
    """Return the file's text, or None if it is absent and not required."""
    try:
        # Non-blocking, so that a FIFO in its place cannot hang the reload.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if not required:
            return None
        raise InvalidConfig(
            f"{path} does not exist. Create it, or pass the right --config-file."
        ) from None
    except OSError as error:
        raise InvalidConfig(f"cannot open {path}: {error.strerror}.") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidConfig(
                f"{path} is not a regular file. Put the JSON configuration there."
            )
        if info.st_size > MAX_CONFIG_BYTES:
            raise InvalidConfig(
                f"{path} is {info.st_size} bytes; the maximum is "
                f"{MAX_CONFIG_BYTES}. A daemon.json this large is not a "
                "configuration."
            )
        with os.fdopen(os.dup(descriptor), "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    finally:
        os.close(descriptor)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidConfig(
            f"{path} is not valid UTF-8 (byte {error.start}). Save it as UTF-8."
        ) from None


class _Batch:
    """The requests one reload serves, and the outcome they wait for."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: ReloadOutcome | None = None
        self.config: DaemonConfig | None = None

    def finish(self, outcome: ReloadOutcome) -> None:
        self.outcome = outcome
        self.done.set()


async def derive_runtimes(
    previous: Snapshot | None,
    config: DaemonConfig,
    wrappers: WrapperStore,
    transaction: Transaction,
    lookup: PathLookup = shutil.which,
) -> dict[str, ResolvedRuntime]:
    """Resolve every runtime of `config`, writing wrappers for new ones."""
    await wrappers.begin_reload()
    runtimes: dict[str, ResolvedRuntime] = {}
    configured = {BUILTIN_RUNTIME: RuntimeConfig(path=BUILTIN_RUNTIME)}
    configured.update(config.runtimes)
    for name, runtime_config in configured.items():
        old = previous.runtimes.get(name) if previous is not None else None
        if old is not None and old.config == runtime_config:
            runtimes[name] = wrappers.carry_over(old)
            continue
        runtimes[name] = await _resolve(
            name, runtime_config, wrappers, transaction, lookup
        )
    return runtimes


async def _resolve(
    name: str,
    config: RuntimeConfig,
    wrappers: WrapperStore,
    transaction: Transaction,
    lookup: PathLookup,
) -> ResolvedRuntime:
    path = _find_executable(name, config.path, lookup)
    if not config.runtime_args:
        return ResolvedRuntime(name=name, config=config, path=path, binary=path)
    content = wrapper_script(path, config.runtime_args)
    binary, created = await wrappers.install(name, content)
    if created:

        async def discard() -> None:
            await wrappers.discard(binary)

        transaction.on_rollback(discard)
    return ResolvedRuntime(
        name=name, config=config, path=path, binary=binary, wrapper=content
    )


def _find_executable(name: str, path: str, lookup: PathLookup) -> str:
    if os.path.isabs(path):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            # Accepted as dockerd accepts it: the start preflight rejects it.
            logger.warning(
                "runtimes.%s.path %s is not an executable file; containers "
                "that use it will fail to start until it is",
                name,
                path,
            )
        return path
    found = lookup(path)
    if found is not None:
        return os.path.abspath(found)
    if name == BUILTIN_RUNTIME:
        # Left as a bare name: starting a container reports it, and the
        # daemon still runs for everything else.
        logger.warning("the built-in runtime %r was not found on PATH", path)
        return path
    raise InvalidConfig(
        f"runtimes.{name}.path {path!r} was not found on PATH. Install it, or "
        "give an absolute path."
    )


async def build_initial_snapshot(
    source: ConfigSource, wrappers: WrapperStore, lookup: PathLookup = shutil.which
) -> Snapshot:
    """Load the configuration at daemon start into generation 1."""
    config = await trio.to_thread.run_sync(source.load)
    transaction = Transaction("initial configuration")
    try:
        runtimes = await derive_runtimes(None, config, wrappers, transaction, lookup)
    except BaseException:
        await transaction.rollback()
        raise
    await transaction.commit()
    return Snapshot(generation=1, config=config, runtimes=runtimes)


class ReloadActor:
    def __init__(
        self,
        *,
        config: ConfigActor,
        source: ConfigSource,
        wrappers: WrapperStore,
        events: EventBus,
        lookup: PathLookup = shutil.which,
    ) -> None:
        self._config = config
        self._source = source
        self._wrappers = wrappers
        self._events = events
        self._lookup = lookup
        self._pending = _Batch()
        self._wake = trio.Event()

    async def reload(self, config: DaemonConfig | None = None) -> ReloadOutcome:
        """Request a reload and wait for the outcome of the one that serves it.

        With `config`, that configuration is applied instead of reading the
        file (the embedding API). A request made while a reload runs is
        served by the next reload, never by the running one.
        """
        batch = self._pending
        if config is not None:
            batch.config = config
        self._wake.set()
        await batch.done.wait()
        assert batch.outcome is not None
        return batch.outcome

    def request(self) -> None:
        """Request a reload without waiting for it (the SIGHUP handler)."""
        self._wake.set()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._pending = self._pending, _Batch()
            batch.finish(await self._reload_once(batch.config))

    async def _reload_once(self, given: DaemonConfig | None) -> ReloadOutcome:
        previous = self._config.current()
        transaction = Transaction(f"reload to generation {previous.generation + 1}")
        try:
            snapshot, outcome = await self._prepare(previous, given, transaction)
        except DockyardError as error:
            return await self._fail(previous, transaction, str(error))
        except Exception as error:
            logger.exception("reload failed unexpectedly")
            return await self._fail(previous, transaction, f"internal error: {error!r}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await transaction.rollback()
            raise

        async def publish() -> None:
            self._config.publish(snapshot)

        async def announce() -> None:
            self._events.emit(
                "daemon", "reload", "dockyard", reload_event_attributes(snapshot)
            )

        transaction.on_commit(publish)
        transaction.on_commit(announce)
        await transaction.commit()
        self._log_outcome(outcome)
        return outcome

    async def _prepare(
        self, previous: Snapshot, given: DaemonConfig | None, transaction: Transaction
    ) -> tuple[Snapshot, ReloadOutcome]:
        if given is None:
            loaded = await trio.to_thread.run_sync(self._source.load)
        else:
            validate_config(given, source="reload request")
            loaded = given
        change = diff_configs(previous.config, loaded)
        config = keep_restart_keys(previous.config, loaded)
        runtimes = await derive_runtimes(
            previous, config, self._wrappers, transaction, self._lookup
        )
        generation = previous.generation + 1
        snapshot = Snapshot(generation=generation, config=config, runtimes=runtimes)
        outcome = ReloadOutcome(
            generation=generation,
            changed=change.reloadable,
            restart_required=change.restart_required,
        )
        return snapshot, outcome

    async def _fail(
        self, previous: Snapshot, transaction: Transaction, reason: str
    ) -> ReloadOutcome:
        await transaction.rollback()
        logger.error(
            "reload failed, generation %d stays in force: %s",
            previous.generation,
            reason,
        )
        return ReloadOutcome(generation=previous.generation, error=reason)

    def _log_outcome(self, outcome: ReloadOutcome) -> None:
        logger.info(
            "reload committed generation %d; changed: %s",
            outcome.generation,
            ", ".join(outcome.changed) or "nothing",
        )
        if outcome.restart_required:
            logger.warning(
                "reload ignored %s: a change to these takes effect only after a "
                "daemon restart",
                ", ".join(outcome.restart_required),
            )
