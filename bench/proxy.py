"""The guarded chat proxy's cost and its cuts: ``python bench/proxy.py [--quick] [--tokens-per-s R]``.

A scripted OpenAI-compatible LLM (``aegis_online.demos.scripted_llm``) streams word-piece tokens at a fixed rate on a
loopback port; the service (the FastAPI app under uvicorn, the catalog's CPU experts in process, as the embedded
service runs them) proxies it. In one run, so that the ratios compare like with like on a noisy machine:

* **Direct** (the baseline): time to the first content token and tokens/s, the upstream straight.
* **stream_first**: the same through the proxy, whose prompt check is timed apart (``POST /v1/moderate`` with the
  same conversation): time to first token minus direct's and minus the prompt check (target <= 5 ms) and the
  ratio of tokens/s (target >= 0.95).
* **check_first**: the latency each window adds, per window (p50/p99: the time from the upstream sending a window's
  last token to the client receiving it).
* **Cuts**: every harmful script (a benign opening, a harmful sentence, a benign close), in both modes: whether the
  stream was cut (``content_filter``) and whether it was cut within one window (``window_chars``) of the harmful
  sentence's end; benign streams byte for byte against direct.

Prints a table and ``key: value`` lines; ``--json PATH`` writes them too.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aegis_online.demos.scripted_llm import HARMFUL_PREFIX, HARMFUL_SPANS, ScriptedLLM, harmful  # noqa: E402

console = Console()
PROMPT = "Please write me a short plan for a calm weekend."


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a spare loopback port, in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def service_app(upstream: str, mode: str, window_chars: int, overlap_chars: int) -> Any:
    """The service with a chat section over ``upstream``, the catalog's CPU experts, open (no keys) on loopback."""
    from aegis_online.config import ServiceConfig
    from aegis_online.experts.build import build_expert
    from aegis_online.serve.app import create_app
    from aegis_online.serve.auth import KeyTable
    from aegis_online.serve.service import build_service

    chat = {"upstream": {"base_url": upstream}, "mode": mode, "window_chars": window_chars}
    chat["overlap_chars"] = overlap_chars
    config = ServiceConfig.model_validate(
        {"store": {"persist": False}, "chat": chat, "limits": {"deadline_ms": 10_000}}
    )
    experts = [build_expert(spec) for spec, _ in config.expert_plan()]
    return create_app(build_service(config, experts, KeyTable({})))


def run_stream(url: str, model: str) -> dict[str, Any]:
    """One streamed answer: the raw bytes, the time to the first content token, the content tokens' arrival times,
    the text and the finish reason."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    started = time.perf_counter()
    arrivals: list[float] = []
    text, finish, raw = "", None, b""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            raw += (line + "\n").encode()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line[6:])
            for choice in payload.get("choices", ()):
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    arrivals.append(time.perf_counter() - started)
                    text += piece
                finish = choice.get("finish_reason") or finish
    return {"raw": raw, "ttft": arrivals[0] if arrivals else None, "arrivals": arrivals, "text": text, "finish": finish}


def response_action(url: str, answer: str) -> str:
    """The tenant policy's action on an answer (``/v1/moderate``, a response check). On the harmful sentence alone:
    whether the experts and the policy would stop it at all, apart from where the proxy's windows cut it."""
    body = {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": answer}]}
    response = httpx.post(f"{url}/v1/moderate", json=body | {"check": "response"}, timeout=30)
    response.raise_for_status()
    return str(response.json()["action"])


def tokens_per_s(arrivals: list[float]) -> float:
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else float("nan")


def prompt_check_ms(url: str, repeats: int) -> float:
    """The median time of the proxy's prompt check alone: ``/v1/moderate`` on the same conversation."""
    body = {"messages": [{"role": "user", "content": PROMPT}]}
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        httpx.post(f"{url}/v1/moderate", json=body, timeout=30).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def window_delays(run: dict[str, Any], direct: dict[str, Any], rate: float) -> list[float]:
    """check_first releases a window's tokens together once it is checked: per released burst, the delay (ms) of its
    last token against the same token straight from the upstream (the scripted stream is the same each time) is
    what checking that window added."""
    arrivals, base = run["arrivals"], direct["arrivals"]
    gap = 0.5 / rate
    ends = [k for k in range(len(arrivals)) if k == len(arrivals) - 1 or arrivals[k + 1] - arrivals[k] > gap]
    return [(arrivals[k] - base[k]) * 1000 for k in ends if k < len(base)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens-per-s", type=float, default=100.0, help="The upstream's token rate.")
    parser.add_argument("--streams", type=int, default=10, help="Benign streams per configuration.")
    parser.add_argument("--window-chars", type=int, default=120)
    parser.add_argument("--overlap-chars", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="3 streams, fast tokens, 3 harmful scripts (a smoke run).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args(argv)
    streams, rate, harmful_count = args.streams, args.tokens_per_s, len(HARMFUL_SPANS)
    if args.quick:
        streams, rate, harmful_count = 3, max(rate, 400.0), 3

    llm = ScriptedLLM(tokens_per_s=rate)
    figures: dict[str, Any] = {"tokens_per_s_upstream": rate, "window_chars": args.window_chars}
    with serve(llm.app()) as upstream_url:
        upstream = f"{upstream_url}/v1"
        direct = [run_stream(upstream_url, "benign") for _ in range(streams)]
        results: dict[str, list[dict[str, Any]]] = {}
        cuts: dict[str, list[dict[str, Any]]] = {}
        prompt_ms = {}
        for mode in ("stream_first", "check_first"):
            app = service_app(upstream, mode, args.window_chars, args.overlap_chars)
            with serve(app) as url:
                run_stream(url, "benign")  # warm-up: models loaded, caches of the prompt filled
                prompt_ms[mode] = prompt_check_ms(url, max(streams, 5))
                results[mode] = [run_stream(url, "benign") for _ in range(streams)]
                cuts[mode] = []
                for i in range(harmful_count):
                    outcome = run_stream(url, f"harmful-{i}")
                    span_end = len(HARMFUL_PREFIX) + len(HARMFUL_SPANS[i])
                    cut = outcome["finish"] == "content_filter"
                    within = cut and len(outcome["text"]) <= span_end + args.window_chars
                    stopped = response_action(url, HARMFUL_SPANS[i]) == "block"
                    cuts[mode].append(
                        {
                            "cut": cut,
                            "within_one_window": within,
                            "blocked_alone": stopped,
                            "delivered": len(outcome["text"]),
                        }
                    )
                    assert harmful(i).startswith(outcome["text"])

    direct_ttft = statistics.median(r["ttft"] for r in direct) * 1000
    direct_rate = statistics.median(tokens_per_s(r["arrivals"]) for r in direct)
    figures["direct_ttft_ms"] = direct_ttft
    figures["direct_tokens_per_s"] = direct_rate
    table = Table(title=f"Chat proxy against a {rate:g} tokens/s upstream ({streams} benign streams each)")
    columns = (
        "",
        "TTFT ms (p50)",
        "tokens/s (p50)",
        "prompt check ms",
        "byte for byte",
        "harmful cut",
        "within 1 window",
    )
    for column in columns:
        table.add_column(column, justify="right")
    table.add_row("direct", f"{direct_ttft:.1f}", f"{direct_rate:.1f}", "-", "-", "-", "-")
    for mode, runs in results.items():
        ttft = statistics.median(r["ttft"] for r in runs) * 1000
        rate_mode = statistics.median(tokens_per_s(r["arrivals"]) for r in runs)
        identical = sum(r["raw"] == d["raw"] for r, d in zip(runs, direct, strict=False)) / len(runs)
        cut = sum(c["cut"] for c in cuts[mode]) / len(cuts[mode])
        within = sum(c["within_one_window"] for c in cuts[mode]) / len(cuts[mode])
        stopped = [c for c in cuts[mode] if c["blocked_alone"]]
        within_stopped = sum(c["within_one_window"] for c in stopped) / len(stopped) if stopped else float("nan")
        figures[mode] = {
            "ttft_ms": ttft,
            "ttft_over_direct_plus_prompt_check_ms": ttft - direct_ttft - prompt_ms[mode],
            "prompt_check_ms": prompt_ms[mode],
            "tokens_per_s": rate_mode,
            "tokens_per_s_ratio": rate_mode / direct_rate,
            "benign_byte_for_byte": identical,
            "harmful_cut": cut,
            "harmful_cut_within_one_window": within,
            "harmful_streams": len(cuts[mode]),
            "harmful_spans_blocked_alone": len(stopped),
            "harmful_cut_within_one_window_of_those_blocked_alone": within_stopped,
        }
        cells = (f"{ttft:.1f}", f"{rate_mode:.1f}", f"{prompt_ms[mode]:.1f}", f"{identical:.0%}", f"{cut:.0%}")
        table.add_row(mode, *cells, f"{within:.0%}")
        if mode == "check_first":
            delays = [d for run, base in zip(runs, direct, strict=False) for d in window_delays(run, base, rate)]
            figures[mode]["windows"] = len(delays)
            figures[mode]["added_latency_ms_p50"] = percentile(delays, 0.5)
            figures[mode]["added_latency_ms_p99"] = percentile(delays, 0.99)
    console.print(table)
    sf, cf = figures["stream_first"], figures["check_first"]
    over = sf["ttft_over_direct_plus_prompt_check_ms"]
    lines = {
        "stream_first_ttft_over_direct_plus_prompt_check_ms": f"{over:.1f} (target <= 5)",
        "stream_first_tokens_per_s_ratio": f"{sf['tokens_per_s_ratio']:.3f} (target >= 0.95)",
        "check_first_added_latency_ms_p50": f"{cf['added_latency_ms_p50']:.1f}",
        "check_first_added_latency_ms_p99": f"{cf['added_latency_ms_p99']:.1f}",
        "harmful_cut_within_one_window": f"stream_first {sf['harmful_cut_within_one_window']:.0%}, check_first "
        f"{cf['harmful_cut_within_one_window']:.0%} of {sf['harmful_streams']} harmful streams (target >= 95%)",
        "harmful_spans_blocked_alone": f"{sf['harmful_spans_blocked_alone']} of {sf['harmful_streams']} "
        "(the experts and the default policy on the harmful sentence by itself)",
        "harmful_cut_within_one_window_of_those_blocked_alone": f"stream_first "
        f"{sf['harmful_cut_within_one_window_of_those_blocked_alone']:.0%}, check_first "
        f"{cf['harmful_cut_within_one_window_of_those_blocked_alone']:.0%}",
        "benign_byte_for_byte": f"stream_first {sf['benign_byte_for_byte']:.0%}, "
        f"check_first {cf['benign_byte_for_byte']:.0%}",
    }
    for key, value in lines.items():
        console.print(f"{key}: {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
