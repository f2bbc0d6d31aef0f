"""``aegis-online serve`` and ``aegis-online serve-demo``: typer functions the top-level CLI registers.

``serve`` validates the config, refuses an exposed address without API keys, starts a local Ray with the
application, prints where it listens and serves until SIGINT or SIGTERM; then it stops Serve and Ray whatever
happened. ``python -m aegis_online.serve.cli`` runs the same commands without the top-level CLI.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

import typer

CONFIG_HELP = "Service config (YAML); AEGIS_SERVE_* environment variables override it. Default: embedded defaults."


def _fail(message: str, code: int = 2) -> typer.Exit:
    print(f"aegis-online serve: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code=code)


def serve_command(
    host: str | None = typer.Option(None, "--host", help="Address to bind (default: the config's, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default: the config's, 8000)."),
    config: Path | None = typer.Option(None, "--config", envvar="AEGIS_SERVE_CONFIG", dir_okay=False, help=CONFIG_HELP),
    log_level: str = typer.Option("INFO", "--log-level", help="Level of the service's own log lines."),
) -> None:
    """Serve the moderation API with Ray Serve: one deployment per expert, a FastAPI ingress."""
    from aegis_online.config import ConfigError, load_config
    from aegis_online.serve.auth import load_key_table, require_safe_exposure

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_config(config).with_server(host, port)
        keys = load_key_table(settings.auth)
        require_safe_exposure(settings, keys)
        plan = settings.expert_plan()
    except ConfigError as error:
        raise _fail(str(error)) from None
    except ValueError as error:  # e.g. --host/--port out of range after overrides
        raise _fail(str(error)) from None
    server = settings.server
    if keys.open_mode:
        print(
            f"aegis-online serve: OPEN DEVELOPMENT MODE: no API keys are configured, so any bearer key (or none) is "
            f"accepted and every call acts for tenant 'default'. Allowed only because {server.host} is loopback; "
            "configure auth.keys_file before exposing the service.",
            file=sys.stderr,
            flush=True,
        )
    experts = ", ".join(f"{spec.name} x{serving.replicas}" for spec, serving in plan)
    print(
        f"aegis-online serve: starting Ray Serve with experts {experts}; store {settings.store.kind}, feedback bus "
        f"{settings.bus.kind}, {len(keys)} API keys",
        flush=True,
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        print(f"aegis-online serve: signal {signum}, stopping", flush=True)
        stop.set()

    from aegis_online.serve.runtime import local_service

    started = time.monotonic()
    try:
        with local_service(settings, keys) as url:
            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)
            print(
                f"aegis-online serve: ready in {time.monotonic() - started:.0f} s at {url} "
                f"(OpenAPI docs {url}/docs, OpenAI-compatible {url}/v1/moderations)",
                flush=True,
            )
            while not stop.wait(0.5):
                pass
    except ConfigError as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt:
        pass
    except RuntimeError as error:  # a deployment that cannot start (missing model, failed warm-up...)
        raise _fail(f"the application did not start: {error}", code=1) from None
    print("aegis-online serve: stopped", flush=True)


def serve_demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the report, the plot and the service log."),
    requests: int = typer.Option(400, "--requests", min=20, max=20_000, help="Moderation requests to send."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="Requests in flight."),
    seed: int = typer.Option(7, "--seed", help="Random seed of the stream and of the feedback delays."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default: a spare one)."),
) -> None:
    """Start the service with the CPU experts, stream real text and delayed feedback over HTTP, report, stop it."""
    from aegis_online.serve.demo import run_demo

    raise typer.Exit(code=run_demo(out, requests=requests, concurrency=concurrency, seed=seed, port=port))


def main() -> None:
    app = typer.Typer(help="aegis-online service commands.", no_args_is_help=True)
    app.command("serve")(serve_command)
    app.command("serve-demo")(serve_demo_command)
    app()


if __name__ == "__main__":
    main()
