"""The snapshot: user configuration plus the runtime state derived from it.

A snapshot is published whole and never changed. Each operation reads one
snapshot at its start and uses only that snapshot until it ends, so a
reload that publishes a newer one cannot change what a running operation
reads.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import attrs

from messages.config import DaemonConfig, RuntimeConfig
from messages.errors import InvalidRequest


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
