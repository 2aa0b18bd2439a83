"""The daemon: it starts every actor in one nursery and is the embedding API.

    async with open_daemon(config_file=path) as daemon:
        image = await daemon.import_image(chunks, reference="busybox")
        container = await daemon.create_container(CreateContainer(image="busybox"))

Every request that depends on the configuration reads one snapshot at its
start and passes it down; nothing here reads "the current configuration"
halfway through an operation. The API server and the tests use exactly
these methods.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import attrs
import trio

from actors.background import Background
from actors.config_actor import ConfigActor
from actors.container_actor import WAIT_CONDITIONS, ContainerActor
from actors.container_store import ContainerStore
from actors.events import EventBus
from actors.exec_actor import ExecActor, ExecInstance, FrameSink
from actors.host import Host, LinuxHost, remove_tree
from actors.images import IMAGES_DIRECTORY, ImageSource, ImageStore
from actors.output import read_log
from actors.reload_actor import (
    ConfigSource,
    PathLookup,
    ReloadActor,
    build_initial_snapshot,
)
from actors.root_lock import RootLock
from actors.wrappers import WrapperStore
from messages import records
from messages.config import DaemonConfig, DaemonFlags
from messages.errors import Conflict, DockyardError, InvalidRequest, NotFound
from messages.events import Event
from messages.execspec import ExecOptions
from messages.images import ImageRecord, ImageRemoval
from messages.records import ContainerRecord
from messages.reload import ReloadOutcome
from messages.requests import (
    CreateContainer,
    check_container_name,
    container_config,
    generated_name,
)
from messages.snapshot import Snapshot
from messages.stream import STDERR, STDOUT, decode_frames
from messages.wrapper import WRAPPER_DIRECTORY

logger = logging.getLogger(__name__)

# Attempts at a generated name before giving up; clashes are rare.
MAX_NAME_ATTEMPTS = 100


@attrs.frozen
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class Daemon:
    """The running daemon. Made by `open_daemon`; every method is safe to call
    from any task while the `async with` block is open."""

    def __init__(
        self,
        *,
        config: ConfigActor,
        reloads: ReloadActor,
        events: EventBus,
        images: ImageStore,
        store: ContainerStore,
        host: Host,
        nursery: trio.Nursery,
    ) -> None:
        self._config = config
        self._reloads = reloads
        self._events = events
        self._images = images
        self._store = store
        self._host = host
        self._nursery = nursery
        self._background = Background(nursery)
        self._containers: dict[str, ContainerActor] = {}
        exec_root = Path(config.current().config.exec_root)
        self._execs = ExecActor(exec_root=exec_root, events=events)
        self._bundles = exec_root / "containers"

    # Configuration.

    def snapshot(self) -> Snapshot:
        """Return the snapshot in force now."""
        return self._config.current()

    async def reload(self, config: DaemonConfig | None = None) -> ReloadOutcome:
        """Reload daemon.json, or apply `config`, and return the outcome."""
        return await self._reloads.reload(config)

    def request_reload(self) -> None:
        """Ask for a reload without waiting for it, as SIGHUP does."""
        self._reloads.request()

    def snapshots(self) -> AsyncIterator[Snapshot]:
        """Iterate over the current snapshot and each one published after it."""
        return self._config.subscribe()

    @contextlib.contextmanager
    def events(self) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        """Open a channel of the events emitted while it is open."""
        with self._events.subscribe() as channel:
            yield channel

    # Images.

    async def import_image(
        self,
        source: ImageSource,
        *,
        reference: str | None = None,
        changes: tuple[str, ...] = (),
    ) -> ImageRecord:
        image = await self._images.import_tar(
            source, reference=reference, changes=changes
        )
        self._events.emit("image", "import", image.id, {"name": reference or ""})
        return image

    def images(self) -> tuple[ImageRecord, ...]:
        return self._images.list()

    def image(self, reference: str) -> ImageRecord:
        return self._images.get(reference)

    async def remove_image(self, reference: str, force: bool = False) -> ImageRemoval:
        """Untag an image, or delete it when no tag is left; never one in use."""

        def in_use(image_id: str) -> bool:
            return any(
                actor.record.config.image_id == image_id
                for actor in self._containers.values()
            )

        removal = await self._images.remove(reference, in_use=in_use, force=force)
        for image_id in removal.deleted:
            self._events.emit("image", "delete", image_id, {"name": reference})
        return removal

    # Containers.

    async def create_container(self, request: CreateContainer) -> ContainerRecord:
        snapshot = self.snapshot()
        image = self._images.get(request.image)
        # An unknown runtime is a bad request now, not a failed start later.
        snapshot.runtime(request.runtime)
        config = container_config(request, image)
        container_id = secrets.token_hex(32)
        name = self._free_name(request.name, container_id)
        record = ContainerRecord(
            id=container_id, name=name, created=time.time(), config=config
        )
        # Renamed into place, and flushed to the disk in the background. Like
        # dockerd, the daemon does not sync the directory, so a power loss
        # right after the create may lose the container.
        await self._store.create(record)
        self._background.start_soon(lambda: self._store.flush(container_id))
        self._register(record)
        logger.info("created container %s (%s)", container_id[:12], name)
        self._events.emit(
            "container", "create", container_id, {"name": name, "image": config.image}
        )
        return record

    def containers(self, all: bool = False) -> list[ContainerRecord]:
        """List containers, newest first; only running ones unless `all`."""
        found = [actor.record for actor in self._containers.values()]
        if not all:
            found = [record for record in found if record.running]
        return sorted(found, key=lambda record: -record.created)

    def container(self, reference: str) -> ContainerRecord:
        return self._actor(reference).record

    async def start_container(self, reference: str) -> bool:
        """Start a container; False if it was already running."""
        actor = self._actor(reference)
        return await actor.start(self.snapshot())

    async def stop_container(self, reference: str, grace: float | None = None) -> bool:
        """Stop a container; False if it was not running."""
        return await self._actor(reference).stop(grace)

    async def kill_container(self, reference: str, signal: str = "SIGKILL") -> None:
        await self._actor(reference).kill(signal)

    async def remove_container(self, reference: str, force: bool = False) -> None:
        actor = self._actor(reference)
        await actor.remove(force)

    async def settle(self) -> None:
        """Wait for the work that finished operations left running.

        That is the record writes after a start or an exit, the unmount
        after an exit, and the deletion of a removed container's files.
        An operation returns without waiting for them, and the next
        operation on the same container waits where it must.
        """
        await self._background.wait_idle()

    async def wait_container(
        self, reference: str, condition: str = "not-running"
    ) -> int:
        if condition not in WAIT_CONDITIONS:
            raise InvalidRequest(
                f"invalid wait condition {condition!r}; use one of "
                f"{', '.join(WAIT_CONDITIONS)}"
            )
        return await self._actor(reference).wait(condition)

    @contextlib.contextmanager
    def attach_container(
        self, reference: str
    ) -> Iterator[trio.MemoryReceiveChannel[bytes]]:
        """Open a channel of the container's output frames (see OutputHub)."""
        with self._actor(reference).output.attach() as channel:
            yield channel

    async def container_logs(self, reference: str) -> bytes:
        """Return the container's output so far, as multiplexed frames."""
        actor = self._actor(reference)
        return await read_log(self._store.log_path(actor.id))

    # Exec.

    def create_exec(self, reference: str, options: ExecOptions) -> ExecInstance:
        return self._execs.create(self._actor(reference), options)

    async def start_exec(self, exec_id: str, sink: FrameSink) -> int:
        return await self._execs.start(exec_id, sink)

    def exec_instance(self, exec_id: str) -> ExecInstance:
        return self._execs.get(exec_id)

    async def exec(self, reference: str, options: ExecOptions) -> ExecResult:
        """Run an exec to its end and return its exit code and output."""
        frames: list[bytes] = []

        async def collect(frame: bytes) -> None:
            frames.append(frame)

        instance = self.create_exec(reference, options)
        code = await self.start_exec(instance.id, collect)
        output = list(decode_frames(b"".join(frames)))
        return ExecResult(
            exit_code=code,
            stdout=b"".join(data for stream, data in output if stream == STDOUT),
            stderr=b"".join(data for stream, data in output if stream == STDERR),
        )

    # Inside.

    def _actor(self, reference: str) -> ContainerActor:
        actor = self._containers.get(reference)
        if actor is not None:
            return actor
        bare = reference.removeprefix("/")
        for candidate in self._containers.values():
            if candidate.record.name == bare:
                return candidate
        matches = [
            actor for actor in self._containers.values() if actor.id.startswith(bare)
        ]
        if len(matches) == 1 and bare:
            return matches[0]
        if len(matches) > 1:
            raise InvalidRequest(
                f"container id prefix {reference!r} is ambiguous; give more of the id"
            )
        raise NotFound(f"No such container: {reference}")

    def _free_name(self, requested: str, container_id: str) -> str:
        taken = {actor.record.name: actor.id for actor in self._containers.values()}
        if requested:
            name = check_container_name(requested)
            if name in taken:
                raise Conflict(
                    f'the container name "/{name}" is already in use by container '
                    f'"{taken[name]}". Remove or rename that container to reuse '
                    "the name."
                )
            return name
        for attempt in range(MAX_NAME_ATTEMPTS):
            name = generated_name(container_id, attempt)
            if name not in taken:
                return name
        raise Conflict("could not generate a free container name; give one with --name")

    def _forget(self, container_id: str) -> None:
        self._containers.pop(container_id, None)

    def _register(self, record: ContainerRecord) -> ContainerActor:
        image_rootfs = self._images.rootfs(record.config.image_id)
        actor = ContainerActor(
            record,
            host=self._host,
            store=self._store,
            events=self._events,
            image_rootfs=image_rootfs,
            bundle_dir=self._bundles / record.id,
            nursery=self._nursery,
            background=self._background,
            on_removed=self._forget,
        )
        self._containers[record.id] = actor
        self._nursery.start_soon(actor.run)
        return actor

    async def _recover(self, record: ContainerRecord, mounted: bool) -> ContainerRecord:
        """Settle a record the daemon before this one left mid-operation.

        A record whose status is running, or created with a lock-in (a start
        was under way), belongs to a daemon that died. So does one whose
        runtime container still exists whatever the record contains, as when the
        daemon died before the running state was written, or when the state
        file was unreadable. Its runtime container is deleted, through the
        recorded binary or else the container's runtime in the current
        configuration, and its root filesystem unmounted, so it can be
        started again or removed. `mounted` is whether that filesystem is
        mounted now; a mount alone is only unmounted.
        """
        status = record.state.status
        # A start whose runtime container exists got as far as the runtime,
        # and its running state may just not have been written yet.
        started = status in (records.RUNNING, records.REMOVING)
        stopped_mid_run = started or self._host.runtime_state_exists(record.id)
        starting = (
            status == records.CREATED
            and record.lockin is not None
            and not stopped_mid_run
        )
        directory = self._store.directory(record.id)
        if not (starting or stopped_mid_run or mounted):
            return record
        # NOTE: restoring containers that kept running through a daemon crash
        # is not built yet; such a container is deleted and marked exited.
        if starting or stopped_mid_run:
            binary = self._recovery_binary(record)
            if binary is not None:
                runtime = self._host.runtime(binary)
                await _log_failure(runtime.delete(record.id, force=True), record.id)
        await _log_failure(
            trio.to_thread.run_sync(self._host.unmount_rootfs, directory), record.id
        )
        if starting:
            state = attrs.evolve(
                record.state,
                error="the daemon stopped while the container was starting",
            )
            record = attrs.evolve(record, state=state, lockin=None)
        elif stopped_mid_run:
            state = attrs.evolve(
                record.state,
                status=records.EXITED,
                pid=0,
                exit_code=255,
                error="the daemon stopped while the container was running",
            )
            record = attrs.evolve(record, state=state)
        else:
            logger.info(
                "container %s: unmounted the root filesystem a daemon left",
                record.id[:12],
            )
            return record
        await self._store.save(record)
        logger.warning("container %s: %s", record.id[:12], record.state.error)
        return record

    def _recovery_binary(self, record: ContainerRecord) -> str | None:
        """Return the binary to delete a recovered container through."""
        if record.lockin is not None:
            return record.lockin.binary
        try:
            binary = self.snapshot().runtime(record.config.runtime).binary
        except InvalidRequest as error:
            logger.error(
                "container %s has a runtime container but no lock-in, and its "
                "runtime is not configured (%s). Delete it with `runc --root "
                "%s delete --force %s`.",
                record.id[:12],
                error,
                self._host.runtime_state_root,
                record.id,
            )
            return None
        logger.warning(
            "container %s has a runtime container but no lock-in, so it is "
            "deleted through %s",
            record.id[:12],
            binary,
        )
        return binary

    async def _load_containers(self) -> list[ContainerRecord]:
        loaded, mounted = await trio.to_thread.run_sync(self._read_containers)
        kept: list[ContainerRecord] = []
        for record in loaded:
            try:
                self._images.rootfs(record.config.image_id)
            except NotFound:
                logger.error(
                    "skipped container %s: its image %s is gone",
                    record.id[:12],
                    record.config.image_id,
                )
                continue
            directory = self._store.directory(record.id)
            record = await self._recover(record, directory in mounted)
            self._register(record)
            kept.append(record)
        logger.info("loaded %d containers", len(kept))
        return kept

    def _read_containers(self) -> tuple[list[ContainerRecord], set[Path]]:
        """Load the records, find the mounted root filesystems and delete
        stale bundles: one worker thread call at start. Blocking."""
        loaded = self._store.load_all(self._host.unmount_rootfs)
        directories = [self._store.directory(record.id) for record in loaded]
        mounted = self._host.mounted_rootfs(directories)
        # A directory whose record was skipped keeps its bundle too: its
        # container may still run.
        self._remove_stale_bundles(self._store.container_ids())
        return loaded, mounted

    def _remove_stale_bundles(self, known: set[str]) -> None:
        """Delete the bundles of containers that have no directory. Blocking.

        A daemon that died between a removal's rename and its deletion
        leaves the bundle behind.
        """
        try:
            bundles = list(self._bundles.iterdir())
        except FileNotFoundError:
            return
        for bundle in bundles:
            if bundle.name in known:
                continue
            logger.info("deleting bundle %s, which no container has", bundle)
            try:
                remove_tree(bundle)
            except OSError as error:
                logger.error("cannot delete bundle %s: %s", bundle, error)

    async def _shut_down(self) -> None:
        # NOTE: a stop already in flight keeps its own grace period, so the
        # shutdown can take longer than shutdown-timeout, and forever behind
        # a stop that never sends SIGKILL (a negative timeout).
        grace = self.snapshot().config.shutdown_timeout
        running = sum(actor.record.running for actor in self._containers.values())
        logger.info("stopping %d running containers (grace %ss)", running, grace)
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for actor in list(self._containers.values()):
                    nursery.start_soon(_shut_down_quietly, actor, grace)
            await self._background.wait_idle()


async def _log_failure(step: Awaitable[object], container_id: str) -> None:
    """Await a clean-up step of start-up recovery, logging a failure."""
    try:
        await step
    except (DockyardError, OSError) as error:
        logger.warning("recovering container %s: %s", container_id[:12], error)


async def _shut_down_quietly(actor: ContainerActor, grace: float) -> None:
    try:
        await actor.shut_down(grace)
    except Exception as error:
        logger.error("could not stop container %s: %s", actor.id[:12], error)


@contextlib.asynccontextmanager
async def open_daemon(
    config_file: Path | None = None,
    *,
    flags: DaemonFlags | None = None,
    config_required: bool = True,
    host: Host | None = None,
    wrappers: WrapperStore | None = None,
    lookup: PathLookup = shutil.which,
) -> AsyncIterator[Daemon]:
    """Run a daemon for the duration of the block, then stop its containers.

    `config_file` is daemon.json; None runs on the embedded defaults plus
    `flags`. With `config_required` false, a missing file counts as empty
    until a reload finds it. `host` and `wrappers` default to the real ones; tests pass
    fakes to control time and faults.
    """
    source = ConfigSource(
        path=config_file, flags=flags or DaemonFlags(), required=config_required
    )
    initial_config = await trio.to_thread.run_sync(source.load)
    data_root = Path(initial_config.data_root)
    exec_root = Path(initial_config.exec_root)
    for directory in (data_root, exec_root):
        await trio.Path(directory).mkdir(parents=True, exist_ok=True, mode=0o711)
    # Before anything in the roots is read: a second daemon there would
    # delete the first one's running containers as crash leftovers.
    lock = await trio.to_thread.run_sync(RootLock.acquire, (data_root, exec_root))
    try:
        if wrappers is None:
            wrappers = WrapperStore(data_root / WRAPPER_DIRECTORY)
        if host is None:
            host = LinuxHost(exec_root / "runc", exec_root / "pids")
        snapshot = await build_initial_snapshot(source, wrappers, lookup)
        config = ConfigActor(snapshot)
        events = EventBus()
        reloads = ReloadActor(
            config=config,
            source=source,
            wrappers=wrappers,
            events=events,
            lookup=lookup,
        )
        images = ImageStore(data_root / IMAGES_DIRECTORY)
        await images.load()
        store = ContainerStore(data_root / "containers")
        async with trio.open_nursery() as nursery:
            daemon = Daemon(
                config=config,
                reloads=reloads,
                events=events,
                images=images,
                store=store,
                host=host,
                nursery=nursery,
            )
            loaded = await daemon._load_containers()
            referenced = {r.lockin.binary for r in loaded if r.lockin is not None}
            referenced.update(runtime.binary for runtime in snapshot.runtimes.values())
            await trio.to_thread.run_sync(wrappers.collect, referenced)
            await nursery.start(host.run_background)
            await nursery.start(reloads.run)
            logger.info(
                "daemon started: data-root %s, exec-root %s, generation %d",
                data_root,
                exec_root,
                snapshot.generation,
            )
            try:
                yield daemon
            finally:
                await daemon._shut_down()
                nursery.cancel_scope.cancel()
                logger.info("daemon stopped")
    finally:
        lock.release()
