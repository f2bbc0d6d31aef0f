"""What ``aegis-online serve`` was asked to run: its options, and the settings and keys they resolve to.

The supervisor validates them before it starts anything; the Ray driver, its child, resolves the same options
again (same environment, same working directory) rather than receiving secrets through a pipe or a file. Paths are
made absolute here: the Ray ingress runs in another process, with another working directory, and gets the
settings as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aegis_online.config import ServiceConfig, load_config
from aegis_online.serve.auth import KeyTable, load_key_table, require_safe_exposure


@dataclass(frozen=True)
class Launch:
    """The command line of ``aegis-online serve``; ``argv`` hands it to the driver unchanged."""

    config: Path | None = None
    host: str | None = None
    port: int | None = None
    data_dir: Path | None = None
    log_level: str = "INFO"

    def absolute(self) -> Launch:
        """The same launch with absolute paths (the driver may not share the working directory)."""
        return Launch(
            config=_absolute(self.config),
            host=self.host,
            port=self.port,
            data_dir=_absolute(self.data_dir),
            log_level=self.log_level,
        )

    def argv(self) -> list[str]:
        options = {
            "--config": self.config,
            "--host": self.host,
            "--port": self.port,
            "--data-dir": self.data_dir,
            "--log-level": self.log_level,
        }
        return [part for name, value in options.items() if value is not None for part in (name, str(value))]

    def resolve(self) -> tuple[ServiceConfig, KeyTable]:
        """The validated settings and API keys; ConfigError (or ValueError) names what is wrong."""
        settings = load_config(self.config).with_server(self.host, self.port)
        data_dir = self.data_dir or settings.store.data_dir
        settings = settings.with_data_dir(_absolute(Path(data_dir)))
        keys = load_key_table(settings.auth)
        require_safe_exposure(settings, keys)
        settings.expert_plan()  # an unknown expert fails here, before Ray starts
        return settings, keys


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else path.expanduser().resolve()


def describe_state(settings: ServiceConfig) -> str:
    """Where the learned weights, policies and feedback live, for the start-up banner (no password shown).

    >>> describe_state(ServiceConfig.model_validate({"store": {"persist": False}}))
    'memory store, not persisted (store.persist: false): everything learned is lost at stop'
    >>> describe_state(ServiceConfig.model_validate({"store": {"kind": "redis", "redis_url": "redis://:pw@db:6379/2"}}))
    'redis store at db:6379/2 (prefix aegis:)'
    """
    store = settings.store
    if store.kind == "redis":
        url = urlsplit(store.redis_url or "")
        where = f"{url.hostname or ''}{f':{url.port}' if url.port else ''}{url.path}" or url.scheme
        return f"redis store at {where} (prefix {store.prefix})"
    if not store.persist:
        return "memory store, not persisted (store.persist: false): everything learned is lost at stop"
    return f"memory store persisted in {store.data_dir}"
