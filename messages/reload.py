"""What a reload changed, and the outcome reported to the requester."""

from __future__ import annotations

import attrs

from messages.config import JSON_KEYS, RELOADABLE_KEYS, RESTART_KEYS, DaemonConfig

_FIELD_BY_KEY = {key: field for field, key in JSON_KEYS.items()}


def _field(key: str) -> str:
    return _FIELD_BY_KEY.get(key, key)


@attrs.frozen
class ConfigChange:
    """Keys whose values differ between two configurations, by kind."""

    reloadable: tuple[str, ...]
    restart_required: tuple[str, ...]


def diff_configs(old: DaemonConfig, new: DaemonConfig) -> ConfigChange:
    def changed(keys: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            key
            for key in keys
            if getattr(old, _field(key)) != getattr(new, _field(key))
        )

    return ConfigChange(changed(RELOADABLE_KEYS), changed(RESTART_KEYS))


def keep_restart_keys(old: DaemonConfig, new: DaemonConfig) -> DaemonConfig:
    """Return `new` with the keys that need a restart taken from `old`."""
    kept = {_field(key): getattr(old, _field(key)) for key in RESTART_KEYS}
    return attrs.evolve(new, **kept)


@attrs.frozen
class ReloadOutcome:
    """The result of one reload: the generation in force afterwards.

    `error` is None for a committed reload. On failure the previous
    generation stays in force and `changed` is empty.
    """

    generation: int
    changed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
