"""The HTTP demo (``make demo``): start the service with the catalog's CPU experts, stream real text from three
tenants with delayed feedback over HTTP, report what happened, write a plot, and stop everything it started.

The service runs as ``aegis-online serve`` in a child process of its own session (Ray's processes are its children),
with a config and a keys file written to a private temporary folder. Whatever happens (an error, Ctrl-C, SIGTERM)
the child is asked to stop with SIGTERM (it shuts Serve and Ray down), killed with its whole process group if it
has not stopped after a grace period, and the temporary folder is removed.

Traffic goes in waves of ``concurrency`` requests; each labelled row's feedback (its dataset labels) is sent a few
waves later, as moderators' verdicts arrive late. The weights the ``default`` tenant would use (it sends no traffic,
so these are the global weights) are read after every wave.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from aegis_online.client import AegisClient, APIError, AsyncAegisClient, RetryPolicy
from aegis_online.demos.prompts import LabelledPrompt, demo_prompts
from aegis_online.schemas import FeedbackEvent, Message, ModerationRequest

TENANTS = ("kids-app", "gaming-forum", "support-desk")
POLICIES = [
    {"tenant": "default"},
    {
        "tenant": "kids-app",
        "strictness": "strict",
        "on_no_experts": "block",
        "categories": {"violence": {"threshold": 0.35}},
    },
    {"tenant": "gaming-forum", "strictness": "lenient", "categories": {"profanity": {"action": "allow"}}},
    {"tenant": "support-desk", "categories": {"profanity": {"action": "flag"}, "harassment": {"action": "flag"}}},
]
#: Categories both CPU experts score (elsewhere only MiniLM is awake, so there is nothing to weigh).
SHOWN = ("S8", "S10", "S12")
START_TIMEOUT_S = 300
STOP_GRACE_S = 60


@dataclass
class DemoLog:
    latencies_ms: list[float] = field(default_factory=list)
    actions: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    verdicts: list[tuple[int, bool, bool]] = field(default_factory=list)  # (wave, labelled unsafe, acted on)
    expert_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    missing: Counter = field(default_factory=Counter)
    feedback: Counter = field(default_factory=Counter)
    weights: list[tuple[int, dict[str, dict[str, float]]]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def _spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_setup(folder: Path, port: int) -> tuple[Path, dict[str, str]]:
    """A config and a keys file (mode 0600) with fresh random keys: per tenant a client key (its application's
    moderation calls) and a moderator key (its reviewers' verdicts, which the operator trusts to train the global
    weights), and one admin key."""
    keys = {tenant: "demo-" + secrets.token_urlsafe(24) for tenant in TENANTS}
    keys |= {f"{tenant}-moderators": "demo-mod-" + secrets.token_urlsafe(24) for tenant in TENANTS}
    keys["admin"] = "demo-admin-" + secrets.token_urlsafe(24)
    entries = [{"name": f"{t}-app", "key": keys[t], "tenant": t, "role": "client"} for t in TENANTS]
    entries += [
        {"name": f"{t}-moderators", "key": keys[f"{t}-moderators"], "tenant": t, "role": "moderator"} for t in TENANTS
    ]
    entries.append({"name": "demo-ops", "key": keys["admin"], "role": "admin"})
    keys_file = folder / "keys.yaml"
    keys_file.touch(mode=0o600)
    keys_file.write_text(yaml.safe_dump({"keys": entries}))
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "limits": {"deadline_ms": 5000},
        "ingress": {"num_cpus": 0.2},
        "auth": {"keys_file": str(keys_file)},
        "policies": POLICIES,
    }
    path = folder / "service.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, keys


def _start_service(config: Path, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - the child writes to it for its whole life
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    # The learned state lives in the demo's own folder: a second demo starts from scratch, and nothing is left behind.
    state = config.parent / "state"
    command = [sys.executable, "-m", "aegis_online.rayserve.cli", "serve", "--config", str(config)]
    command += ["--data-dir", str(state)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop_service(process: subprocess.Popen, console: Console) -> None:
    if process.poll() is not None:
        return
    console.print("stopping the service (Serve and Ray)...")
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        console.print("[yellow]the service did not stop in time: killing its process group[/yellow]")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # anything of Ray's still in the group
        os.killpg(process.pid, signal.SIGKILL)


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> float:
    def still_running() -> None:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError("the service exited during start-up:\n" + "\n".join(tail))

    with AegisClient(url, timeout=2) as client:
        try:
            return client.wait_ready(START_TIMEOUT_S, poll_s=0.5, check=still_running)
        except TimeoutError:
            raise RuntimeError(f"the service was not ready after {START_TIMEOUT_S} s (see {log_path})") from None


def _feedback_for(row: LabelledPrompt, request_id: str) -> FeedbackEvent | None:
    if row.labels:
        return FeedbackEvent(request_id=request_id, labels={c: float(v) for c, v in row.labels.items()})
    if row.unsafe is not None:
        return FeedbackEvent(request_id=request_id, label="unsafe" if row.unsafe else "safe")
    return None


async def _stream(url: str, keys: dict[str, str], rows: list[LabelledPrompt], concurrency: int, seed: int) -> DemoLog:
    rng = random.Random(seed)
    log = DemoLog()
    due: list[tuple[int, int, str, FeedbackEvent]] = []  # (wave, order, tenant, event)
    started = time.perf_counter()
    async with AsyncAegisClient(url, timeout=60, retry=RetryPolicy(attempts=3)) as client:
        # one connection pool; each tenant's application, its moderators and the operator act with their own key
        apps = {tenant: client.with_api_key(keys[tenant]) for tenant in TENANTS}
        moderators = {tenant: client.with_api_key(keys[f"{tenant}-moderators"]) for tenant in TENANTS}
        admin = client.with_api_key(keys["admin"])

        async def moderate(i: int, row: LabelledPrompt, wave: int) -> None:
            tenant = TENANTS[i % len(TENANTS)]
            request = ModerationRequest(messages=[Message(role="user", content=row.text)])
            t0 = time.perf_counter()
            try:
                decision = await apps[tenant].moderate(request)
            except APIError as error:
                log.errors[f"moderate {error.status}"] += 1
                return
            finally:
                log.latencies_ms.append((time.perf_counter() - t0) * 1000)
            log.actions[tenant][decision.action] += 1
            for contribution in decision.experts:
                log.expert_ms[contribution.expert].append(contribution.latency_ms)
            for missing in decision.missing_experts:
                log.missing[f"{missing.expert} ({missing.kind})"] += 1
            if row.unsafe is not None:
                log.verdicts.append((wave, row.unsafe, decision.action != "allow"))
            event = _feedback_for(row, decision.request_id)
            if event is not None:
                heapq.heappush(due, (wave + rng.randint(1, 6), i, tenant, event))
            else:
                log.feedback["unlabelled"] += 1

        async def send_feedback(now: int) -> None:
            batches: dict[str, list[FeedbackEvent]] = defaultdict(list)
            while due and due[0][0] <= now:
                _, _, tenant, event = heapq.heappop(due)
                batches[tenant].append(event)
            for tenant, events in batches.items():
                try:
                    receipt = await moderators[tenant].feedback_batch(events)
                except APIError as error:
                    log.errors[f"feedback {error.status}"] += len(events)
                    continue
                for result in receipt.results:  # queued (applied later by the learner), duplicate or rejected
                    log.feedback[result.status] += 1

        async def read_weights(wave: int) -> None:
            weights = await admin.weights("default", SHOWN)
            log.weights.append((log.feedback["queued"], {c: dict(weights.categories[c].weights) for c in SHOWN}))

        await read_weights(0)
        waves = range(0, len(rows), concurrency)
        for wave, start in enumerate(waves):
            chunk = rows[start : start + concurrency]
            await asyncio.gather(*(moderate(start + j, row, wave) for j, row in enumerate(chunk)))
            await send_feedback(wave)
            await read_weights(wave)
        await send_feedback(10**9)  # the late verdicts still outstanding
        await asyncio.sleep(1.0)  # the embedded worker applies them
        await read_weights(len(waves))
    log.seconds = time.perf_counter() - started
    return log


def _applied_feedback(url: str) -> int:
    """Events the service's learner applied (its metric): the receipts only ever say queued."""
    with AegisClient(url) as client:
        text = client.metrics()
    for line in text.splitlines():
        if line.startswith('aegis_feedback_applied_total{outcome="applied"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _report(log: DemoLog, source: str, applied: int, console: Console, out: Path, startup_s: float) -> dict[str, Any]:
    lat = np.asarray(log.latencies_ms)
    console.print(f"[bold]data[/bold]: {source}")
    decisions = Table(title="Decisions per tenant (same kind of traffic, different policies)")
    for column in ("tenant", "allow", "flag", "block"):
        decisions.add_column(column, justify="left" if column == "tenant" else "right")
    for tenant in TENANTS:
        counts = log.actions[tenant]
        decisions.add_row(tenant, *(str(counts[a]) for a in ("allow", "flag", "block")))
    console.print(decisions)

    half = max(w for w, _, _ in log.verdicts) / 2 if log.verdicts else 0
    quality = Table(title="Acted on (flag or block) against the dataset's verdict")
    for column in ("stream", "unsafe acted on", "safe acted on"):
        quality.add_column(column, justify="right")
    for name, part in (
        ("first half", [v for v in log.verdicts if v[0] < half]),
        ("second half", [v for v in log.verdicts if v[0] >= half]),
    ):
        unsafe = [acted for _, is_unsafe, acted in part if is_unsafe]
        safe = [acted for _, is_unsafe, acted in part if not is_unsafe]
        quality.add_row(name, f"{np.mean(unsafe):.0%} of {len(unsafe)}", f"{np.mean(safe):.0%} of {len(safe)}")
    console.print(quality)

    first, last = log.weights[0][1], log.weights[-1][1]
    experts = sorted(first[SHOWN[0]])
    moved = Table(title=f"Global weights per category: before -> after {log.feedback['queued']} feedback events")
    moved.add_column("category")
    for expert in experts:
        moved.add_column(expert, justify="right")
    for cat in SHOWN:
        moved.add_row(cat, *(f"{first[cat][e]:.2f} -> {last[cat][e]:.2f}" for e in experts))
    console.print(moved)

    latency = Table(
        title=f"Latency over HTTP ({len(lat)} requests, {log.seconds:.1f} s, {len(lat) / log.seconds:.1f} req/s)"
    )
    for column in ("what", "p50 ms", "p95 ms", "p99 ms"):
        latency.add_column(column, justify="left" if column == "what" else "right")
    latency.add_row("POST /v1/moderate", *(f"{np.percentile(lat, q):.0f}" for q in (50, 95, 99)))
    for expert, values in sorted(log.expert_ms.items()):
        latency.add_row(f"  {expert} (seen by the ingress)", *(f"{np.percentile(values, q):.0f}" for q in (50, 95, 99)))
    console.print(latency)
    fb = log.feedback
    console.print(
        f"feedback: {fb['queued']} queued, {fb['duplicate']} duplicates, {fb['rejected']} refused, "
        f"{fb['unlabelled']} rows without labels; {applied} applied by the learner. "
        f"Missing experts: {dict(log.missing) or 'none'}. Errors: {dict(log.errors) or 'none'}. "
        f"Service start-up: {startup_s:.0f} s."
    )
    summary = {
        "source": source,
        "requests": len(lat),
        "seconds": log.seconds,
        "requests_per_s": len(lat) / log.seconds,
        "latency_ms": {f"p{q}": float(np.percentile(lat, q)) for q in (50, 95, 99)},
        "actions": {t: dict(log.actions[t]) for t in TENANTS},
        "feedback": dict(fb) | {"applied": applied},
        "weights_before": first,
        "weights_after": last,
        "missing_experts": dict(log.missing),
        "errors": dict(log.errors),
        "startup_s": startup_s,
    }
    (out / "serving-demo.json").write_text(json.dumps(summary, indent=2))
    return summary


def _plot(log: DemoLog, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    events = [n for n, _ in log.weights]
    expert = (
        "profanity-check"
        if "profanity-check" in log.weights[0][1][SHOWN[0]]
        else sorted(log.weights[0][1][SHOWN[0]])[0]
    )
    for cat in SHOWN:
        left.plot(events, [w[cat][expert] for _, w in log.weights], label=cat)
    left.set_xlabel("feedback events queued")
    left.set_ylabel(f"weight of {expert}")
    left.set_ylim(0, 1)
    left.set_title("How the learned weights moved (global scope)")
    left.legend()
    right.hist(log.latencies_ms, bins=40)
    right.set_xlabel("POST /v1/moderate latency (ms)")
    right.set_ylabel("requests")
    right.set_title("Latency over HTTP through Ray Serve")
    fig.tight_layout()
    path = out / "serving-demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out: Path, *, requests: int = 400, concurrency: int = 8, seed: int = 7, port: int | None = None) -> int:
    """The whole demo; returns the exit status (0 ok, 1 failed, 130 interrupted)."""
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    rows, source = demo_prompts(requests, seed)
    folder = Path(tempfile.mkdtemp(prefix="aegis-demo-"))
    port = port or _spare_port()
    url = f"http://127.0.0.1:{port}"
    log_path = out / "service.log"
    process: subprocess.Popen | None = None
    # SIGTERM is handled as Ctrl-C: asyncio.run then cancels the stream cleanly and the clean-up below runs.
    previous = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    started = time.monotonic()
    try:
        config, keys = _write_setup(folder, port)
        console.print(f"starting aegis-online serve on {url} with the CPU experts (log: {log_path})...")
        process = _start_service(config, log_path)
        startup_s = _wait_ready(url, process, log_path)
        console.print(f"service ready in {startup_s:.0f} s; sending {len(rows)} requests from {len(TENANTS)} tenants")
        log = asyncio.run(_stream(url, keys, rows, concurrency, seed))
        _report(log, source, _applied_feedback(url), console, out, startup_s)
        console.print(f"plot: {_plot(log, out)}; summary: {out / 'serving-demo.json'}")
        return 0 if not log.errors else 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130
    except Exception as error:  # report, then clean up like any other exit
        console.print(f"[red]demo failed: {error}[/red]")
        return 1
    finally:
        if process is not None:
            _stop_service(process, console)
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        console.print(f"done in {time.monotonic() - started:.0f} s; everything the demo started is stopped")
