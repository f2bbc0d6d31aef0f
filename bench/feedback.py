"""Feedback throughput: events/s from Kafka through the feedback worker into Redis, against Redis's own ceiling.

What it does, in one run, on servers it starts itself (``.ci/services.sh``: redis-server and the tansu broker on
spare ports of 127.0.0.1; ``--redis-url``/``--bootstrap`` use running ones instead):

1. logs ``--events`` predictions (every category of the taxonomy, 5 experts, ~2% asleep) for ``--tenants`` tenants
   into Redis, and produces one feedback event per prediction (``--labels-per-event`` categories labelled) to a
   topic of ``--partitions`` partitions, keyed by tenant;
2. runs real worker processes (``python -m aegis_online.feedback.cli``) in one consumer group until the topic is
   drained, once with 1 worker and once with 2 (``--workers``, each run on a fresh topic and key prefix):
   **end to end** = events / (last commit - first record taken);
3. measures the Redis server's CPU time over the same run: **ceiling** = events / Redis CPU-seconds, i.e. the
   events/s this single-threaded server could take for exactly this script and traffic if it did nothing else;
   **ratio** = end to end / ceiling (= the fraction of the server the workers kept busy);
4. prints bytes per learner key and per logged prediction (MEMORY USAGE), the memory of the two exactly-once
   designs (watermarks in the records vs one dedupe key per event), and the worker's resident memory;
5. compares write strategies on the same server with the Kafka leg taken out: the compare-and-set batch path the
   worker uses, WATCH/MULTI/EXEC per event, and the learner's math in Lua (Hedge, the simplest learner; the
   measurement-only script below; the service never runs it).

``python bench/feedback.py`` (about 1-2 minutes); ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an install, and let workers import the same tree
    sys.path.insert(0, str(ROOT))

from aegis_online.feedback import loadgen  # noqa: E402
from aegis_online.feedback.kafka import KafkaFeedbackPublisher, ensure_topics  # noqa: E402
from aegis_online.feedback.redis_applier import redis_applier  # noqa: E402
from aegis_online.state.codec import encode_learner  # noqa: E402

EXPERTS = ("guard-a", "guard-b", "classifier-c", "profanity-d", "embedding-e")

#: Measurement only: the learner's math in Lua, as the per-event alternative would run it (field notes section 4:
#: dedupe key, read, update, write). Hedge with a fixed rate is the cheapest learner there is; the default
#: learner's state is 91 floats with 15 Fixed-Share copies and an AdaHedge layer, ~15x this arithmetic.
LUA_HEDGE = """
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) == false then return 0 end
local y = tonumber(ARGV[2])
for k = 1, 2 do
  local state = redis.call('HMGET', KEYS[k], 't', 'l1', 'l2', 'l3', 'l4', 'l5')
  local out = {'t', string.format('%.17g', (tonumber(state[1]) or 0) + 1)}
  for i = 1, 5 do
    local p = tonumber(ARGV[2 + i])
    local loss = (p - y) * (p - y)
    out[#out + 1] = 'l' .. i
    out[#out + 1] = string.format('%.17g', (tonumber(state[i + 1]) or 0) + loss)
  end
  redis.call('HSET', KEYS[k], unpack(out))
end
return 1
"""


def start_servers(state_dir: str) -> dict[str, str]:
    env = os.environ | {"AEGIS_SERVICES_DIR": state_dir, "AEGIS_SERVICES_PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / ".ci" / "services.sh"), "start"], env=env, check=True)
    return dict(line.split("=", 1) for line in (Path(state_dir) / "services.env").read_text().splitlines())


def stop_servers(state_dir: str) -> None:
    env = os.environ | {"AEGIS_SERVICES_DIR": state_dir}
    subprocess.run(["bash", str(ROOT / ".ci" / "services.sh"), "stop"], env=env, check=False)


def redis_cpu_seconds(client) -> float:
    """CPU time of the Redis server process (user + sys), from INFO (works for a server on another host too)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def command_usec(client) -> dict[str, float]:
    return {k.removeprefix("cmdstat_"): float(v["usec"]) for k, v in client.info("commandstats").items()}


def memory_usage(client, keys: list[str]) -> float:
    sizes = [client.memory_usage(k, samples=0) or 0 for k in keys]
    return float(np.mean(sizes)) if sizes else 0.0


def run_workers(args, workers: int, servers: dict[str, str], topic: str, prefix: str, out_dir: Path) -> list[dict]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    procs = []
    for i in range(workers):
        stats = out_dir / f"{topic}-worker-{i}.json"
        cmd = [
            sys.executable,
            "-m",
            "aegis_online.feedback.cli",
            "--experts",
            ",".join(EXPERTS),
            "--redis-url",
            servers["AEGIS_TEST_REDIS_URL"],
            "--bootstrap-servers",
            servers["AEGIS_TEST_KAFKA"],
            "--topic",
            topic,
            "--dead-letter-topic",
            topic + ".dead-letter",
            "--group-id",
            group,
            "--prefix",
            prefix,
            "--learner",
            args.learner,
            "--batch-size",
            str(args.batch_size),
            "--idle-exit-s",
            "4",
            "--stats-json",
            str(stats),
            "--log-level",
            "WARNING",
        ]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL), stats))
    results = []
    for proc, stats in procs:
        proc.wait(timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"a worker exited with {proc.returncode}")
        results.append(json.loads(stats.read_text()))
    return results


def strategies(args, engine, client, events, predictions) -> list[tuple[str, float, float]]:
    """(name, events/s, Redis CPU us per event) of each write strategy, with the Kafka leg taken out."""
    out = []
    n = min(len(events), 20_000 if not args.quick else 2_000)
    plans = [engine.plan(e, p) for e, p in zip(events[:n], predictions[:n], strict=True)]
    prefix = f"strategy-{uuid.uuid4().hex[:6]}:"
    cas_engine = redis_applier(args.redis_url, EXPERTS, learner=args.learner, prefix=prefix)
    cpu0, start = redis_cpu_seconds(client), time.perf_counter()
    for i in range(0, n, args.batch_size):
        cas_engine.apply_batch([(p, "bench:0", i + j) for j, p in enumerate(plans[i : i + args.batch_size])])
    seconds, cpu = time.perf_counter() - start, redis_cpu_seconds(client) - cpu0
    out.append((f"compare-and-set, batches of {args.batch_size} (the worker's path)", n / seconds, cpu / n * 1e6))

    learner = engine.learner
    m = min(n, 1_500 if not args.quick else 300)
    cpu0, start = redis_cpu_seconds(client), time.perf_counter()
    for plan in plans[:m]:
        keys = [prefix + "watch:" + k for k in plan.own_keys[:1] + plan.shared_keys[:1]]
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    current = pipe.mget(keys)
                    states = np.array([learner.init_state() if b is None else np.frombuffer(b) for b in current])
                    outputs = np.repeat(plan.record.outputs[plan.rows[:1]], len(keys), axis=0)
                    targets = np.repeat(list(plan.labels.values())[:1], len(keys))
                    new = learner.learn_many(states, outputs, targets)
                    pipe.multi()
                    for key, state in zip(keys, new, strict=True):
                        pipe.set(key, state.tobytes())
                    pipe.execute()
                    break
                except Exception as error:  # WatchError: another writer won; retry
                    if type(error).__name__ != "WatchError":
                        raise
    seconds, cpu = time.perf_counter() - start, redis_cpu_seconds(client) - cpu0
    out.append(("WATCH/MULTI/EXEC per event, Python math", m / seconds, cpu / m * 1e6))

    script = client.register_script(LUA_HEDGE)
    cpu0, start = redis_cpu_seconds(client), time.perf_counter()
    for i in range(0, n, 500):
        pipe = client.pipeline(transaction=False)
        for j, plan in enumerate(plans[i : i + 500]):
            row = np.nan_to_num(plan.record.outputs[plan.rows[0]], nan=0.5)
            keys = [f"{prefix}lua:{plan.own_keys[0]}", f"{prefix}lua:{plan.shared_keys[0]}", f"{prefix}lua:ev:{i + j}"]
            label = next(iter(plan.labels.values()))
            script(keys=keys, args=[600_000, label, *map(repr, row.tolist())], client=pipe)
        pipe.execute()
    seconds, cpu = time.perf_counter() - start, redis_cpu_seconds(client) - cpu0
    out.append(("Lua math per event (Hedge, pipelined 500), dedupe key", n / seconds, cpu / n * 1e6))
    for key in client.scan_iter(match=prefix + "*", count=5000):
        client.delete(key)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="worker processes per run, e.g. 1,2 (one run each)")
    parser.add_argument("--batch-size", type=int, default=4000)
    parser.add_argument("--labels-per-event", type=int, default=1)
    parser.add_argument("--learner", default="default")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting tansu")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 events, 100 tenants")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.tenants, args.batch_size = 5_000, 100, 1000

    state_dir = tempfile.mkdtemp(prefix="aegis-bench-")
    started = not (args.redis_url and args.bootstrap)
    servers = (
        start_servers(state_dir)
        if started
        else {"AEGIS_TEST_REDIS_URL": args.redis_url, "AEGIS_TEST_KAFKA": args.bootstrap}
    )
    args.redis_url = servers["AEGIS_TEST_REDIS_URL"]
    try:
        return report(args, servers, Path(state_dir))
    finally:
        if started:
            stop_servers(state_dir)


def pipeline_run(args, servers, workers: int, predictions, payloads, out_dir: Path) -> dict:
    """One end-to-end run with ``workers`` worker processes on a fresh topic and key prefix."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    engine = redis_applier(args.redis_url, EXPERTS, learner=args.learner, prefix=prefix)
    client = engine.store.client
    for i in range(0, len(predictions), 5000):
        engine.prediction_log.put_many(predictions[i : i + 5000])
    topic = f"bench-feedback-{uuid.uuid4().hex[:8]}"
    ensure_topics(servers["AEGIS_TEST_KAFKA"], {topic: args.partitions, topic + ".dead-letter": 1})
    publisher = KafkaFeedbackPublisher(servers["AEGIS_TEST_KAFKA"], topic)
    start = time.perf_counter()
    for key, value in payloads:
        publisher.publish_raw(key, value)
    publisher.flush()
    produce_rate = len(payloads) / (time.perf_counter() - start)
    publisher.close()

    client.config_resetstat()
    cpu0 = redis_cpu_seconds(client)
    stats = run_workers(args, workers, servers, topic, prefix, out_dir)
    redis_cpu = redis_cpu_seconds(client) - cpu0
    records = sum(int(w["records"]) for w in stats)
    span = max(w["last_commit_at"] for w in stats) - min(w["first_record_at"] for w in stats if w["records"])
    return {
        "engine": engine,
        "prefix": prefix,
        "topic": topic,
        "workers": stats,
        "produce_rate": produce_rate,
        "records": records,
        "applied": sum(int(w["applied"]) for w in stats),
        "dead_letters": sum(int(w["dead_letters"]) for w in stats),
        "conflicts": sum(int(w["write_conflicts"]) for w in stats),
        "span": span,
        "rate": records / span,
        "redis_cpu": redis_cpu,
        "ceiling": records / redis_cpu,
        "usec": command_usec(client),
        "worker_cpu_us": sum(w["cpu_s"] - w["first_record_cpu_s"] for w in stats) / records * 1e6,
    }


def report(args, servers: dict[str, str], out_dir: Path) -> int:
    rng = np.random.default_rng(7)
    tenants = [f"tenant-{i:04d}" for i in range(args.tenants)]
    counts = [int(n) for n in str(args.workers).split(",")]
    print(
        f"feedback benchmark: {args.events:,} events ({args.labels_per_event} category labelled each), "
        f"{args.tenants:,} tenants, {args.partitions} partitions, {len(EXPERTS)} experts, learner {args.learner}, "
        f"batch {args.batch_size}; {os.cpu_count()} CPUs shared by the worker(s), Redis and the broker"
    )
    predictions = loadgen.predictions(args.events, tenants, EXPERTS, rng)
    events = loadgen.feedback(predictions, rng, labels_per_event=args.labels_per_event)
    payloads = [(e.tenant.encode(), e.model_dump_json().encode()) for e in events]

    runs = []
    for workers in counts:
        run = pipeline_run(args, servers, workers, predictions, payloads, out_dir)
        runs.append(run)
        if run["records"] != args.events or run["applied"] != args.events:
            print(f"ERROR: {run['records']:,} records handled, {run['applied']:,} applied, of {args.events:,}")
            return 1
        top = [(name, run["usec"][name]) for name in ("evalsha", "mget") if name in run["usec"]]
        print(f"-- {workers} worker process{'es' if workers > 1 else ''} in one consumer group")
        print(
            f"end to end:    {run['rate']:10,.0f} events/s  (Kafka -> worker -> Redis; {run['records']:,} events in "
            f"{run['span']:.2f} s; {run['dead_letters']} dead letters; {run['conflicts']} write races re-done; "
            f"worker CPU {run['worker_cpu_us']:.0f} us/event; topic filled at {run['produce_rate']:,.0f} events/s "
            "beforehand)"
        )
        per_event = run["redis_cpu"] / run["records"] * 1e6
        print(
            f"redis ceiling: {run['ceiling']:10,.0f} events/s  (the server spent {per_event:.1f} us of CPU per event "
            "on this script and traffic; time in commands: "
            + ", ".join(f"{name} {v / run['records']:.1f} us" for name, v in top)
            + ")"
        )
        print(f"ratio:         {run['rate'] / run['ceiling']:10.2f} of the ceiling (the share of Redis kept busy)")

    first = runs[0]
    engine, prefix = first["engine"], first["prefix"]
    client = engine.store.client
    learner_keys = [k.decode() for k in client.scan_iter(match=prefix + "*", count=5000) if b":pred:" not in k]
    tenant_keys = [k for k in learner_keys if "{global}" not in k]
    global_keys = [k for k in learner_keys if "{global}" in k]
    pred_keys = [engine.prediction_log.key(p.request_id) for p in predictions[:: max(1, len(predictions) // 500)]]
    state_bytes = engine.learner.state_size * 8
    sample = engine.store.load([k.removeprefix(prefix) for k in global_keys[:1]])[0]
    record_bytes = len(encode_learner(sample)) if sample else 0
    print("-- memory")
    print(
        f"bytes per learner key: {memory_usage(client, tenant_keys[:500]):,.0f} (tenant), "
        f"{memory_usage(client, global_keys):,.0f} (global, {len(sample.marks) if sample else 0} partition watermarks)"
        f"; a global record is {record_bytes:,} B, its state {state_bytes:,} B ({state_bytes // 8} float64)"
    )
    print(f"bytes per logged prediction: {memory_usage(client, pred_keys):,.0f} (23 categories x 5 experts, float64)")
    dedupe = [f"{prefix}{{{tenants[0]}}}:event:fb-{i:08d}" for i in range(200)]
    pipe = client.pipeline(transaction=False)
    for key in dedupe:
        pipe.set(key, "1", px=86_400_000)
    pipe.execute()
    per_dedupe = memory_usage(client, dedupe)
    best = max(run["rate"] for run in runs)
    mark = 1 + len(first["topic"]) + 2 + 8
    pairs = len(tenant_keys) + len(global_keys) * args.partitions
    print(
        f"exactly-once memory: watermarks {mark} B per (key, partition) inside the records ({pairs:,} pairs, "
        f"{pairs * mark / 2**20:.1f} MiB here: bounded by keys x partitions, whatever the traffic) vs dedupe keys "
        f"{per_dedupe:,.0f} B per event: {per_dedupe * best * 3600 / 2**30:,.1f} GiB per hour of TTL at "
        f"{best:,.0f} events/s ({per_dedupe * best * 86_400 / 2**30:,.0f} GiB for 24 h)"
    )
    one = next(run for run in runs if len(run["workers"]) == min(counts))
    per_worker = one["records"] // len(one["workers"])
    rss = max(w["rss_bytes"] for w in one["workers"])
    print(f"worker resident memory after {per_worker:,} events: {rss / 2**20:,.0f} MiB")

    print("-- write strategies, same server, Kafka leg taken out (events/s; Redis CPU per event)")
    for name, events_s, cpu_us in strategies(args, engine, client, events, predictions):
        print(f"  {name:<58} {events_s:10,.0f} events/s  {cpu_us:6.1f} us")
    for run in runs:
        for key in client.scan_iter(match=run["prefix"] + "*", count=5000):
            client.delete(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
