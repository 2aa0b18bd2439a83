"""The snapshot: user configuration plus the runtime state derived from it.

A snapshot is published whole and never changed. Each operation reads one
snapshot at its start and uses only that snapshot until it ends, so a
reload that publishes a newer one cannot change what a running operation
sees.
"""

from __future__ import annotations

import posixpath
import types
from collections.abc import Mapping

import attrs

from messages.config import BUILTIN_RUNTIME, DaemonConfig, RuntimeConfig
from messages.errors import InvalidRequest
from messages.wrapper import WRAPPER_DIRECTORY, wrapper_file_name, wrapper_script


def _frozen_runtimes(
    value: Mapping[str, ResolvedRuntime],
) -> Mapping[str, ResolvedRuntime]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class ResolvedRuntime:
    """A runtime resolved to the binary Dockyard executes for it.

    `binary` is `path` itself, or the wrapper script when `runtimeArgs` are
    configured, in which case `wrapper` is the script's content.
    """

    name: str
    config: RuntimeConfig
    path: str
    binary: str
    wrapper: bytes | None = None


@attrs.frozen
class Snapshot:
    """One published configuration, numbered by `generation` from 1."""

    generation: int
    config: DaemonConfig
    runtimes: Mapping[str, ResolvedRuntime] = attrs.field(converter=_frozen_runtimes)

    def runtime(self, name: str | None) -> ResolvedRuntime:
        """Return the named runtime, or the default one for None or ""."""
        chosen = name or self.config.default_runtime
        runtime = self.runtimes.get(chosen)
        if runtime is None:
            known = ", ".join(sorted(self.runtimes))
            raise InvalidRequest(
                f"unknown runtime {chosen!r}; configured runtimes: {known}. "
                "Add it to `runtimes` in daemon.json and reload, or pick one of these."
            )
        return runtime


def builtin_runtime_config(runc_path: str) -> RuntimeConfig:
    return RuntimeConfig(path=runc_path)


def all_runtime_configs(
    config: DaemonConfig, runc_path: str
) -> dict[str, RuntimeConfig]:
    """Return the configured runtimes plus the built-in one."""
    return {BUILTIN_RUNTIME: builtin_runtime_config(runc_path), **config.runtimes}


def resolve_runtime(
    name: str, config: RuntimeConfig, path: str, data_root: str
) -> ResolvedRuntime:
    """Derive what to execute for a runtime whose executable is `path`.

    `path` is the configured path after any PATH lookup, which is I/O and
    so is the caller's job.
    """
    if not config.runtime_args:
        return ResolvedRuntime(name=name, config=config, path=path, binary=path)
    content = wrapper_script(path, config.runtime_args)
    binary = posixpath.join(
        data_root, WRAPPER_DIRECTORY, wrapper_file_name(name, content)
    )
    return ResolvedRuntime(
        name=name, config=config, path=path, binary=binary, wrapper=content
    )
