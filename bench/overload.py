"""Overload benchmark: goodput of ``POST /v1/moderate`` at 1x, 2x and 4x the concurrency at which throughput peaks,
with admission control (``limits.admission``) and, for contrast, without it.

A bounded, closed-loop load against a local service: ``c`` clients, each sending its next request when the last one
is answered. A refused client (503) waits what ``Retry-After`` says before its next request, as the contract asks
(and as the ``openai`` SDK does); a client that ignored it would only spin on refusals. Every request carries a new
text of the shared data sets (``serve/demo_data.py``; written prompts when they are absent).

* **goodput**: answers per second that arrived within the deadline (``limits.deadline_ms``, measured end to end by
  the client) and were not degraded (every expert answered). A degraded answer is on time but says the service
  could not check everything: it does not count.
* the concurrency at which throughput peaks is found first (a sweep, with admission control): the most clients
  served within 5% of the best goodput (throughput plateaus once the experts are busy; the plateau's far end makes 4x
  a real overload). Then 1x, 2x and 4x of it, and 4x without admission control, are measured in turn, several
  rounds, each window after a settling period, so that the machine's other load and its drift weigh on each alike;
  the ratio is to the goodput at 1x.
* latency p50/p99 are those of admitted requests (answered, whatever their status); the refused share is the 503s'.

The service is the real Ray Serve application with the catalog's CPU experts on local Ray (as ``bench/serving.py``
runs it), twice side by side: with admission control, and as before it (no admission control, Ray's former ingress
limits), each with its own expert replicas, one idle while the other is measured. ``--quick`` (a smoke test, about
20 s) serves the FastAPI app with uvicorn in this process over an expert of fixed capacity instead: no Ray, no
models.

Run ``python bench/overload.py``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

try:
    import aegis_online  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aegis_online.client import AegisClient, APIError, AsyncAegisClient, ClientError, RetryPolicy
from aegis_online.config import ServiceConfig
from aegis_online.demos.prompts import demo_prompts
from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import Decision, ExpertOutput, Message, ModerationRequest
from aegis_online.serve.auth import KeyTable

console = Console(highlight=False)


@dataclass
class Window:
    """What the clients saw during one measured window."""

    seconds: float
    deadline_s: float
    latencies: list[float] = field(default_factory=list)  # answered (200), seconds
    good: int = 0  # answered within the deadline and not degraded
    degraded: int = 0
    refused: int = 0  # 503
    errors: int = 0  # anything else
    limit: float | None = None  # the admission limit at the end (None: admission off)
    load: float = 0.0  # the machine's 1-minute load average at the end (this run included)

    @property
    def goodput(self) -> float:
        return self.good / self.seconds

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def refused_share(self) -> float:
        total = len(self.latencies) + self.refused + self.errors
        return self.refused / total if total else 0.0

    def merged(self, other: Window) -> Window:
        """Both windows as one (counts and seconds summed; the later limit; the mean load)."""
        return Window(
            seconds=self.seconds + other.seconds,
            deadline_s=self.deadline_s,
            latencies=self.latencies + other.latencies,
            good=self.good + other.good,
            degraded=self.degraded + other.degraded,
            refused=self.refused + other.refused,
            errors=self.errors + other.errors,
            limit=other.limit,
            load=(self.load + other.load) / 2,
        )

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


class Load:
    """Closed-loop clients against ``url``; new texts from ``texts``, in turn."""

    def __init__(self, url: str, texts: Sequence[str], deadline_s: float) -> None:
        self.url = url
        self.texts = texts
        self.deadline_s = deadline_s
        self._next = itertools.count()

    async def run(self, concurrency: int, settle_s: float, measure_s: float, progress: Progress, task: Any) -> Window:
        """``concurrency`` clients for ``settle_s`` (not counted) then ``measure_s`` (counted: what completed then)."""
        import httpx

        window = Window(measure_s, self.deadline_s)
        started = time.monotonic()
        opens, closes = started + settle_s, started + settle_s + measure_s
        limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
        # No retries inside a call: a refused client's wait (Retry-After) is part of what is measured, below.
        once = RetryPolicy(attempts=1)
        async with AsyncAegisClient(self.url, timeout=120, retry=once, limits=limits) as client:

            async def one_client() -> None:
                while time.monotonic() < closes:
                    i = next(self._next)
                    text = f"{self.texts[i % len(self.texts)]} #{i}"
                    request = ModerationRequest(messages=[Message(role="user", content=text)])
                    sent = time.monotonic()
                    decision: Decision | ClientError
                    try:
                        decision = await client.moderate(request)
                    except ClientError as error:
                        decision = error
                    done = time.monotonic()
                    pause = 0.0
                    if opens <= done <= closes:
                        pause = self._record(window, decision, done - sent)
                    elif _refused(decision):
                        pause = _retry_after(decision)
                    if pause:
                        await asyncio.sleep(min(pause, max(closes - time.monotonic(), 0.0)))

            async def tick() -> None:
                while time.monotonic() < closes:
                    progress.update(task, completed=min(time.monotonic() - started, settle_s + measure_s))
                    await asyncio.sleep(0.2)

            ticker = asyncio.create_task(tick())
            clients = [asyncio.create_task(one_client()) for _ in range(concurrency)]
            await asyncio.sleep(max(closes - time.monotonic(), 0.0))
            for request in clients:  # what is still in flight completes after the window: not counted
                request.cancel()
            await asyncio.gather(*clients, ticker, return_exceptions=True)
            window.limit = await _admission_limit(client)
            window.load = os.getloadavg()[0]
        progress.update(task, completed=settle_s + measure_s)
        return window

    def _record(self, window: Window, answer: Decision | ClientError, seconds: float) -> float:
        """Count one answer; the pause its client takes before the next request."""
        if _refused(answer):
            window.refused += 1
            return _retry_after(answer)
        if not isinstance(answer, Decision):  # another status, or no answer at all
            window.errors += 1
            return 0.1
        window.latencies.append(seconds)
        window.degraded += answer.degraded
        window.good += not answer.degraded and seconds <= self.deadline_s
        return 0.0


async def _admission_limit(client: AsyncAegisClient) -> float | None:
    """The service's ``aegis_admission_limit``; None when admission control counted nothing (it is off)."""
    try:
        lines = (await client.metrics()).splitlines()
    except ClientError:  # a figure for the report only
        return None
    if not any(line.startswith("aegis_admission_total{") for line in lines):
        return None
    return next((float(line.split()[1]) for line in lines if line.startswith("aegis_admission_limit ")), None)


def _refused(answer: Decision | ClientError) -> bool:
    return isinstance(answer, APIError) and answer.status == 503


def _retry_after(answer: Decision | ClientError) -> float:
    """What the refusal's ``Retry-After`` says (1 s when it says nothing readable)."""
    wait = answer.retry_after if isinstance(answer, APIError) else None
    return 1.0 if wait is None else wait


# -- the service under test ----------------------------------------------------------------------------------------


def spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_config(admission: bool) -> ServiceConfig:
    """The CPU experts as the service runs them (default placement, deadline and admission settings), with the
    torch threads the machine has; ``admission: False`` is the service as it was before: no admission control and
    Ray Serve's former ingress limits (64 requests per replica, an unbounded proxy queue)."""
    threads = os.cpu_count() or 1
    plan = [{"name": spec.name, "threads": threads} for spec, _ in ServiceConfig().expert_plan()]
    ingress: dict[str, Any] = {"num_cpus": 0.2}
    if not admission:
        ingress |= {"max_ongoing_requests": 64, "max_queued_requests": -1}
    return ServiceConfig.model_validate(
        {
            "limits": {"admission": {"enabled": admission}},
            "ingress": ingress,
            "experts": {"use": plan},
            "store": {"persist": False},
        }
    )


@contextlib.contextmanager
def ray_services() -> Iterator[dict[bool, str]]:
    """A local Ray + Serve with two applications side by side, with and without admission control (each with its
    own expert replicas; one is idle while the other is measured); yields their URLs by ``admission``."""
    from ray import serve

    from aegis_online.rayserve.deployments import build_app
    from aegis_online.rayserve.runtime import LOGGING, start_ray, start_serve, stop_ray

    port = spare_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="aegis-ray-", dir="/tmp"))
    urls = {True: f"http://127.0.0.1:{port}", False: f"http://127.0.0.1:{port}/no-admission"}
    try:
        start_ray(address="local", temp_dir=temp_dir)
        start_serve("127.0.0.1", port)
        for admission, prefix in ((True, "/"), (False, "/no-admission")):
            app = build_app(served_config(admission), KeyTable({}))
            name = "aegis-online" if admission else "aegis-online-no-admission"
            serve.run(app, name=name, route_prefix=prefix, blocking=False, logging_config=LOGGING)
        deadline = time.monotonic() + 300
        for url in urls.values():
            with AegisClient(url, timeout=5) as client:  # ready, or degraded: both answer 200
                client.wait_ready(max(deadline - time.monotonic(), 0.0), poll_s=0.5, accept_degraded=True)
        yield urls
    finally:
        stop_ray(temp_dir)


class FixedCapacityExpert(Expert):
    """``slots`` calls at once, ``service_s`` each (a replica of finite capacity whose queue ignores deadlines)."""

    def __init__(self, slots: int, service_s: float) -> None:
        self.name = "fixed-capacity"
        self.categories = frozenset({"S1", "S10", "S12"})
        self.slots = slots
        self.service_s = service_s
        self._semaphore: asyncio.Semaphore | None = None

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        async with self._semaphore:
            await asyncio.sleep(self.service_s)
        return [
            ExpertOutput(expert=self.name, scores={c.id: 0.1 for c in item.categories if self.covers(c)})
            for item in batch
        ]


@contextlib.contextmanager
def local_services(deadline_ms: int) -> Iterator[dict[bool, str]]:
    """Quick mode: the FastAPI app under uvicorn in threads of this process, over a ``FixedCapacityExpert``, with and
    without admission control; yields their URLs by ``admission``."""
    import threading

    import uvicorn

    from aegis_online.serve.app import create_app
    from aegis_online.serve.service import build_service

    servers = []
    urls = {}
    try:
        for admission in (True, False):
            limits = {"deadline_ms": deadline_ms, "admission": {"enabled": admission}}
            config = ServiceConfig.model_validate({"limits": limits, "store": {"persist": False}})
            expert = FixedCapacityExpert(slots=4, service_s=0.05)
            app = create_app(build_service(config, [expert], KeyTable({})))
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            servers.append((server, thread, sock))
            while not server.started and thread.is_alive():
                time.sleep(0.02)
            urls[admission] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield urls
    finally:
        for server, thread, sock in servers:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()


# -- the benchmark -------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    sweep: list[int]
    settle_s: float  # before each window, not counted: the limit adapts, queues fill
    sweep_s: float  # measured per sweep window
    measure_s: float  # measured per overload window
    sweep_rounds: int
    rounds: int  # the levels are measured in turn, this many times, and summed


def measure(
    texts: Sequence[str],
    deadline_s: float,
    levels: Sequence[tuple[str, str, int]],
    rounds: int,
    plan: Plan,
    seconds: float,
) -> list[Window]:
    """Each (label, url, concurrency) level for ``seconds`` per round, in turn (1x, 2x, 4x, 1x, ...): the machine's
    other load (and its drift) weighs on every level alike. One summed window per level."""
    loads = {url: Load(url, texts, deadline_s) for _, url, _ in levels}
    totals: list[Window | None] = [None] * len(levels)
    with Progress(
        TextColumn("{task.description:<46}"), BarColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as progress:
        for round_ in range(rounds):
            for i, (label, url, concurrency) in enumerate(levels):
                what = f"{label}: {concurrency} clients, round {round_ + 1}/{rounds}"
                task = progress.add_task(what, total=plan.settle_s + seconds)
                window = asyncio.run(loads[url].run(concurrency, plan.settle_s, seconds, progress, task))
                progress.remove_task(task)
                totals[i] = window if totals[i] is None else totals[i].merged(window)
    return [w for w in totals if w is not None]


def peak_concurrency(levels: Sequence[int], windows: Sequence[Window], tolerance: float = 0.05) -> int:
    """The most clients served at peak goodput: the largest level within ``tolerance`` of the best. Throughput
    plateaus once the experts are busy, and on a plateau the best level is noise; its far end makes 4x a real
    overload."""
    best = max(w.goodput for w in windows)
    return max(c for c, w in zip(levels, windows, strict=True) if w.goodput >= (1 - tolerance) * best)


def row(label: str, concurrency: int, window: Window, peak: float | None) -> str:
    ratio = f"{window.goodput / peak:>6.2f}" if peak else f"{'':>6}"
    limit = f"{window.limit:.0f}" if window.limit is not None else "-"
    return (
        f"{label:<12} {concurrency:>7} | {window.goodput:>8.1f} {ratio} | {window.throughput:>7.1f} "
        f"{window.percentile_ms(50):>8.0f} {window.percentile_ms(99):>8.0f} | {window.refused_share:>7.1%} "
        f"{window.degraded:>8} {window.errors:>6} {limit:>6} {window.load:>5.1f}"
    )


HEADER = (
    f"{'':<12} {'clients':>7} | {'goodput':>8} {'x peak':>6} | {'answ/s':>7} {'p50 ms':>8} {'p99 ms':>8} | "
    f"{'refused':>7} {'degraded':>8} {'errors':>6} {'limit':>6} {'load':>5}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smoke run: uvicorn, a fixed-capacity expert, no Ray.")
    parser.add_argument("--sweep", default=None, help="Concurrency levels searched for the peak (default 4,8,16,32).")
    parser.add_argument("--peak", type=int, default=None, help="Skip the sweep: the peak concurrency is this.")
    parser.add_argument("--seconds", type=float, default=None, help="Measured seconds per level and round (10).")
    parser.add_argument("--rounds", type=int, default=None, help="Rounds over the overload levels (default 3).")
    args = parser.parse_args()
    if args.quick:
        plan = Plan([2, 4, 8], 0.5, 1.0, args.seconds or 2.0, sweep_rounds=1, rounds=args.rounds or 1)
        deadline_ms = 300
    else:
        plan = Plan([4, 8, 16, 32], 4.0, 8.0, args.seconds or 10.0, sweep_rounds=2, rounds=args.rounds or 3)
        deadline_ms = ServiceConfig().limits.deadline_ms
    if args.sweep:
        plan.sweep = [int(c) for c in args.sweep.split(",")]
    deadline_s = deadline_ms / 1000.0
    rows, source = demo_prompts(4000, seed=23, held_out_only=False)  # speed only: as few repeats as there can be
    texts = [r.text for r in rows]
    print(f"machine: {os.cpu_count()} CPUs; text: {source}")
    if args.quick:
        print("service: FastAPI app under uvicorn in this process; one expert of 4 slots x 50 ms (quick mode)")
    else:
        print("service: Ray Serve, the catalog's CPU experts (cpu-light ones in the ingress), local Ray")
    print(
        f"deadline {deadline_ms} ms; closed-loop clients that honour Retry-After; goodput = answers within the "
        "deadline, not degraded, per second"
    )

    started = time.monotonic()
    with local_services(deadline_ms) if args.quick else ray_services() as urls:
        print(f"services up in {time.monotonic() - started:.0f} s (with and without admission control, side by side)")
        if args.peak:
            peak_c = args.peak
        else:
            sweep_levels = [("sweep", urls[True], c) for c in plan.sweep]
            sweep = measure(texts, deadline_s, sweep_levels, plan.sweep_rounds, plan, plan.sweep_s)
            print(
                f"\nsweep: {plan.sweep_rounds} x {plan.sweep_s:g} s per level, in turn, each after "
                f"{plan.settle_s:g} s to settle"
            )
            print(HEADER)
            for c, window in zip(plan.sweep, sweep, strict=True):
                print(row("sweep", c, window, None))
            peak_c = peak_concurrency(plan.sweep, sweep)
        print(f"throughput peaks at {peak_c} clients (the most clients within 5% of the best goodput)\n")
        levels = [(f"{m}x", urls[True], m * peak_c) for m in (1, 2, 4)] + [("4x, no adm.", urls[False], 4 * peak_c)]
        loaded = measure(texts, deadline_s, levels, plan.rounds, plan, plan.measure_s)

    peak = loaded[0].goodput
    print(
        f"{plan.rounds} x {plan.measure_s:g} s measured per level, in turn (1x, 2x, 4x, 4x without admission control, "
        f"1x, ...), each after {plan.settle_s:g} s to settle; load: the machine's 1-minute load average"
    )
    print(HEADER)
    print("-" * len(HEADER))
    for (label, _, concurrency), window in zip(levels, loaded, strict=True):
        print(row(label, concurrency, window, peak))
    print()
    for (label, _, _), window in zip(levels[1:3], loaded[1:3], strict=True):
        print(f"goodput at {label} overload: {window.goodput / peak if peak else 0.0:.2f} of peak")
    p99 = loaded[2].percentile_ms(99)
    verdict = "within" if p99 <= deadline_ms else "over"
    print(f"p99 of admitted requests at 4x: {p99:.0f} ms, {verdict} the {deadline_ms} ms deadline")
    contrast = loaded[3]
    print(
        f"without admission control at 4x: goodput {contrast.goodput / peak if peak else 0.0:.2f} of peak, "
        f"p99 {contrast.percentile_ms(99):.0f} ms, {contrast.degraded} degraded answers"
    )


if __name__ == "__main__":
    main()
