"""``aegis-online serve`` and ``aegis-online serve-demo``: typer functions the top-level CLI registers.

``serve`` validates the config, refuses an exposed address without API keys, prints where state lives, then hands
over to ``supervisor``: the Ray driver runs in a child process, and SIGINT, SIGTERM or SIGHUP at any moment stop
Serve and Ray and leave no process or session folder behind (exit status: 0 stopped on request, 1 the application
did not start or the driver died, 2 a configuration error). ``python -m aegis_online.rayserve.cli`` runs the same
commands without the top-level CLI.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

CONFIG_HELP = "Service config (YAML); AEGIS_SERVE_* environment variables override it. Default: embedded defaults."
DATA_DIR_HELP = "Folder of the embedded store (store.data_dir; default: the config's, ./aegis-data)."


def _fail(message: str, code: int = 2) -> typer.Exit:
    print(f"aegis-online serve: {message}", file=sys.stderr, flush=True)
    return typer.Exit(code=code)


def serve_command(
    host: str | None = typer.Option(None, "--host", help="Address to bind (default: the config's, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default: the config's, 8000)."),
    config: Path | None = typer.Option(None, "--config", envvar="AEGIS_SERVE_CONFIG", dir_okay=False, help=CONFIG_HELP),
    data_dir: Path | None = typer.Option(None, "--data-dir", file_okay=False, help=DATA_DIR_HELP),
    log_level: str = typer.Option("INFO", "--log-level", help="Level of the service's own log lines."),
) -> None:
    """Serve the moderation API with Ray Serve: one deployment per expert, a FastAPI ingress."""
    from aegis_online.config import ConfigError
    from aegis_online.rayserve.launch import Launch, describe_state

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    launch = Launch(config, host, port, data_dir, log_level).absolute()
    try:
        settings, keys = launch.resolve()
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
    print(f"aegis-online serve: state: {describe_state(settings)}", flush=True)
    from aegis_online.rayserve import sessions
    from aegis_online.rayserve.supervisor import run

    code = run(launch, settings.ray.temp_dir or sessions.ROOT)
    if code:
        raise typer.Exit(code=code)


def serve_demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the report, the plot and the service log."),
    requests: int = typer.Option(400, "--requests", min=20, max=20_000, help="Moderation requests to send."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256, help="Requests in flight."),
    seed: int = typer.Option(7, "--seed", help="Random seed of the stream and of the feedback delays."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default: a spare one)."),
) -> None:
    """Start the service with the CPU experts, stream real text and delayed feedback over HTTP, report, stop it."""
    from aegis_online.demos.service import run_demo

    raise typer.Exit(code=run_demo(out, requests=requests, concurrency=concurrency, seed=seed, port=port))


def main() -> None:
    app = typer.Typer(help="aegis-online service commands.", no_args_is_help=True)
    app.command("serve")(serve_command)
    app.command("serve-demo")(serve_demo_command)
    app()


if __name__ == "__main__":
    main()
