"""GPU check of the guard experts: Llama Guard 3 on the transformers backend with a random-weight model of real size,
batched, alone and with other such experts sharing the GPU.

The model is a ``LlamaForCausalLM`` of Llama-3.1-8B's shape (hidden 4096, 32 layers, 32 query and 8 KV heads, MLP
14336, vocabulary 128256; 8.03 G parameters) in bf16, with random weights made directly on the device: nothing is
downloaded or written. The tokenizer is made here with the ``tokenizers`` library: a word-level vocabulary of the
prompts' words and punctuation, filled to 128256 ids, with Llama 3's special tokens at their own ids (BOS 128000,
``<|start_header_id|>`` 128006, ``<|eot_id|>`` 128009...). It splits words from punctuation, so a prompt has about
as many tokens as with Llama 3's own tokenizer. What runs is the service's code path: ``GuardExpert`` with the
``LlamaGuard3`` family (the model card's prompt: task, 14 hazards, conversation) on ``TransformersGuardBackend``,
whose own constructor runs, with ``AutoModelForCausalLM.from_pretrained`` answering the model built in memory
(a 16 GB checkpoint is neither written nor read). Random weights never write the end-of-turn token, so every answer
runs to its token cap; the cap is set (``--new-tokens``, default 6) to the length of a real Llama Guard 3 answer
(``\\n\\n``, ``unsafe``, ``\\n``, ``S``, ``1``, end of turn: a batch lasts as long as its longest answer) instead of
the family's 20. The answers are noise, so the family's parser rejects them: that is counted, not a failure.

Parts, each against a baseline measured in the same run:

* **one expert**, in this process, batches of 1, 4, 16 and 64 guard prompts back to back: requests/s, prompt
  tokens/s, latency of a batch (p50, p99), peak GPU memory, and the share of the bf16 dense peak reached (989
  TFLOP/s for an H100/H200 SXM; FLOPs = 2 x parameters used per token x tokens, prompt and generated, without
  padding: the embedding is a lookup and the LM head runs only at each row's last position).
* **experts sharing one GPU**, under Ray Serve where ray is installed (each expert a deployment batched by the
  service's ``ReplicaBatcher``, as ``aegis_online.rayserve.deployments.ExpertDeployment``, holding ``1/N`` of the
  GPU; a closed loop of C requests in flight, each sent to every expert of the ensemble and done when all have
  answered, as the engine fans out), else as separate processes on the GPU (each scoring batches of C back to
  back). Each expert alone, then 2 (and N) together: the ensemble's requests/s (every request judged by every
  expert) against the slowest expert alone, and the GPU's total work (the experts' requests/s summed) against it.

Run ``python bench/gpu_guard.py`` on a GPU machine; ``--tiny --device cpu`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
try:
    import aegis_online  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))

from aegis_online.experts.base import ExpertInput, score_with_deadline  # noqa: E402
from aegis_online.experts.guards.base import GuardQuery  # noqa: E402
from aegis_online.experts.guards.llama_guard import LlamaGuard3  # noqa: E402
from aegis_online.schemas import ExpertOutput, Message  # noqa: E402
from aegis_online.taxonomy import CANONICAL  # noqa: E402

#: Llama-3.1-8B (and Llama Guard 3 8B): the shape whose cost is measured.
LLAMA_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
#: The same vocabulary and tokenizer on a model small enough for a CPU smoke run.
TINY = {**LLAMA_8B, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY.update({"num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 4096})

BOS, EOS_IDS, PAD = 128000, (128001, 128008, 128009), 128004
#: Llama 3's named special tokens at their ids; 128011..128255 are ``<|reserved_special_token_3..247|>``.
LLAMA3_SPECIAL = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128002: "<|reserved_special_token_0|>",
    128003: "<|reserved_special_token_1|>",
    128004: "<|finetune_right_pad_id|>",
    128005: "<|reserved_special_token_2|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
    **{128011 + i: f"<|reserved_special_token_{3 + i}|>" for i in range(245)},
}

H100_BF16_DENSE_TFLOPS = 989.0  # H100/H200 SXM datasheet, dense (no sparsity)
REPLICA_SCORE_TIMEOUT_S = 300.0
REPLICA_KEYS = ("mean_batch", "busy_share", "ms_per_batch")

#: Assistant turns for response checks (written here): the conversations a guard judges in a chat product.
ANSWER_SENTENCES = (
    "Sure, here is a step-by-step overview that should help you get started.",
    "First, make sure you understand what you are trying to achieve and why it matters to you.",
    "Many people find it useful to write the goal down and break it into smaller, manageable parts.",
    "If you are unsure about any step, it is always a good idea to ask someone with more experience.",
    "The most common mistake is rushing through the preparation, so take your time at the beginning.",
    "You should also keep in mind any local rules or regulations that might apply to your situation.",
    "In my experience, the results improve a lot when you practise regularly for a few weeks.",
    "Here is an example: start with ten minutes a day, then add five minutes every week.",
    "Be careful not to overdo it, because fatigue leads to errors and can make things worse.",
    "If anything goes wrong, stop immediately and review what happened before you continue.",
    "There are also several free resources online, such as tutorials, forums and short courses.",
    "I cannot help with anything that could hurt other people or break the law, but I can suggest alternatives.",
    "Let me know if you would like more detail on any of these points, and I will expand on them.",
    "To summarise: plan carefully, proceed step by step, and check your progress along the way.",
    "Some readers prefer a checklist, so here it is: goal, materials, schedule, review, and rest.",
    "That said, everyone is different, and what works for one person may not work for another.",
)


def user_texts() -> list[str]:
    from aegis_online.demos.prompts import FALLBACK  # written prompts: everyday requests and harmful ones

    return [p.text for p in FALLBACK]


def guard_items(n: int, seed: int = 7) -> list[ExpertInput]:
    """``n`` conversations as the service sees them: prompt checks (some after earlier turns) and response checks
    with answers of 3 to 10 sentences; every Llama Guard 3 category asked, so one query per item."""
    rng = random.Random(seed)
    users = user_texts()
    asked = tuple(c for c in CANONICAL if c.id in LlamaGuard3().categories)
    items = []
    for _ in range(n):
        kind = rng.random()
        turns: list[Message] = []
        if 0.55 <= kind < 0.70:  # a prompt check after an earlier exchange
            turns += [Message(role="user", content=rng.choice(users))]
            turns += [Message(role="assistant", content=" ".join(rng.sample(ANSWER_SENTENCES, 3)))]
        turns.append(Message(role="user", content=rng.choice(users)))
        check = "prompt"
        if kind >= 0.70:  # a response check
            answer = " ".join(rng.sample(ANSWER_SENTENCES, rng.randint(3, 10)))
            turns.append(Message(role="assistant", content=answer))
            check = "response"
        items.append(ExpertInput(messages=tuple(turns), check=check, categories=asked))
    return items


class CappedLlamaGuard3(LlamaGuard3):
    """Llama Guard 3 with its answers capped at ``new_tokens`` (random weights never stop on their own)."""

    def __init__(self, new_tokens: int) -> None:
        super().__init__(variant="8b")
        self.new_tokens = new_tokens

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        return [dataclasses.replace(q, max_new_tokens=self.new_tokens) for q in super().queries(item)]


def build_tokenizer(directory: Path, items: Sequence[ExpertInput], tiny: bool) -> Path:
    """A word-level tokenizer of the prompts' words with Llama 3's special tokens, saved (with the model's config,
    a few kB) to ``directory`` so that the backend loads it through ``AutoTokenizer`` as from a checkpoint."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    family = LlamaGuard3()
    # Words, runs of punctuation, and runs of newlines as tokens (Llama 3 writes "\n\n" as one); spaces dropped.
    split = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n+"), behavior="removed", invert=True)
    words: set[str] = set()
    for item in items:
        for query in family.queries(item):
            text = query.prompt or ""
            for special in LLAMA3_SPECIAL.values():
                text = text.replace(special, " ")
            words.update(piece for piece, _ in split.pre_tokenize_str(text))
    vocab_size = LLAMA_8B["vocab_size"]
    vocab = {word: index for index, word in enumerate(sorted(words))}
    for index in range(len(vocab), BOS):  # unused ids up to Llama 3's first special token
        vocab[f"<filler_{index}>"] = index
    vocab.update({token: index for index, token in LLAMA3_SPECIAL.items()})
    if len(vocab) != vocab_size:
        raise RuntimeError(f"tokenizer vocabulary {len(vocab)} != {vocab_size}")
    unk = LLAMA3_SPECIAL[128002]
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.pre_tokenizer = split
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL.values()])
    core.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA3_SPECIAL[BOS]} $A", special_tokens=[(LLAMA3_SPECIAL[BOS], BOS)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=LLAMA3_SPECIAL[BOS],
        eos_token="<|eot_id|>",
        pad_token=LLAMA3_SPECIAL[PAD],
        unk_token=unk,
    )
    tokenizer.save_pretrained(directory)
    llama_config(tiny).save_pretrained(directory)
    return directory


def llama_config(tiny: bool) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**(TINY if tiny else LLAMA_8B), bos_token_id=BOS, eos_token_id=list(EOS_IDS), pad_token_id=PAD)


@dataclasses.dataclass(frozen=True)
class GuardOptions:
    """How to build one expert: picklable, so that processes and Ray replicas build the same one."""

    tokenizer_dir: str
    tiny: bool
    device: str
    dtype: str
    new_tokens: int
    max_batch_size: int
    seed: int = 0


@contextlib.contextmanager
def answering_from_pretrained(model: Any):
    """``AutoModelForCausalLM.from_pretrained`` returns ``model`` (built in memory) while the block runs."""
    from transformers import AutoModelForCausalLM

    own = vars(AutoModelForCausalLM).get("from_pretrained")
    AutoModelForCausalLM.from_pretrained = staticmethod(lambda *args, **kwargs: model)
    try:
        yield
    finally:
        if own is None:
            del AutoModelForCausalLM.from_pretrained
        else:
            AutoModelForCausalLM.from_pretrained = own


def build_expert(options: GuardOptions, name: str = "llama_guard_3") -> tuple[Any, dict[str, Any]]:
    """The guard expert on a random-weight model made on ``options.device``; (expert, facts about the model)."""
    import torch
    from transformers import AutoModelForCausalLM

    from aegis_online.experts.backends.guard_expert import GuardExpert
    from aegis_online.experts.backends.transformers_backend import TransformersGuardBackend

    started = time.perf_counter()
    dtype = getattr(torch, options.dtype)
    torch.manual_seed(options.seed)
    with torch.device(options.device):
        model = AutoModelForCausalLM.from_config(llama_config(options.tiny), dtype=dtype)
    model.eval()
    with answering_from_pretrained(model):
        backend = TransformersGuardBackend(
            options.tokenizer_dir, device=options.device, dtype=options.dtype, max_batch_size=options.max_batch_size
        )
    if options.device.startswith("cuda"):
        torch.cuda.synchronize()
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight.numel()
    info = {
        "parameters": params,
        "embedding_parameters": embedding,
        "head_parameters": head,
        "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
        "build_s": time.perf_counter() - started,
    }
    return GuardExpert(CappedLlamaGuard3(options.new_tokens), backend, name=name), info


def check_outputs(outputs: Sequence[ExpertOutput]) -> int:
    """Parse errors (the random model writes no verdict) are expected; anything else is a failed measurement."""
    failed = [o.error for o in outputs if o.error and not o.error.startswith(("parse:", "invalid scores"))]
    if failed:
        raise RuntimeError(f"the expert failed: {failed[0]}")
    return sum(o.ok for o in outputs)


class Clock:
    """The run's time budget."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.perf_counter() + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def flops(info: dict[str, Any], prompt_tokens: int, rows: int, new_tokens: int) -> float:
    """2 x parameters used x tokens: the body for every token, the LM head for each row's generated positions (the
    prompt's last position included); the embedding is a lookup. Attention's own products are left out (<2%)."""
    body = info["parameters"] - info["embedding_parameters"] - info["head_parameters"]
    decoded = rows * max(new_tokens - 1, 0)  # the first answer token comes from the prompt's last position
    return 2.0 * (body * (prompt_tokens + decoded) + info["head_parameters"] * rows * new_tokens)


def host_breakdown(expert: Any, item: ExpertInput, options: GuardOptions) -> dict[str, float]:
    """Where one batch-1 call's time goes: the model's forward passes alone, ``generate`` as the backend calls it,
    the backend's ``answer`` and the expert's ``score``; and the cost of launching one empty kernel."""
    import torch

    from aegis_online.experts.backends.rendering import prompt_token_ids

    backend = expert.backend
    model, cuda = backend.model, options.device.startswith("cuda")
    query = expert.family.queries(item)[0]
    ids = torch.tensor([prompt_token_ids(backend.tokenizer, query)], device=options.device)

    def timed(fn: Any, repeats: int) -> float:
        for _ in range(2):
            fn()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / repeats * 1000

    def generate() -> Any:
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=options.new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=PAD,
        )

    with torch.inference_mode():
        counter = torch.zeros(1, device=options.device)
        figures = {
            "prompt_tokens": ids.shape[1],
            "prompt_forward_ms": timed(lambda: model(ids, logits_to_keep=1), 5),
            "one_token_forward_ms": timed(lambda: model(ids[:, -1:]), 10),
            "generate_ms": timed(generate, 3),
            "empty_kernel_launch_us": timed(lambda: [counter.add_(1) for _ in range(1000)], 1),
        }
    figures["backend_answer_ms"] = timed(lambda: backend.answer([query]), 3)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # as GuardExpert runs it: off the event loop's thread
        figures["backend_answer_in_a_thread_ms"] = timed(lambda: pool.submit(backend.answer, [query]).result(), 3)
    # A fresh event loop per call: the expert's model thread (experts.backends.model_thread) outlives the loop, so
    # this should cost what the persistent loop does (with the loop's default executor it paid a new thread's CUDA
    # set-up, ~0.3 s on an H200).
    figures["expert_score_new_loop_ms"] = timed(lambda: asyncio.run(expert.score([item])), 3)
    loop = asyncio.new_event_loop()
    try:
        figures["expert_score_ms"] = timed(lambda: loop.run_until_complete(expert.score([item])), 3)
    finally:
        loop.close()
    return figures


async def sweep(
    expert: Any,
    items: Sequence[ExpertInput],
    prompt_len: Sequence[int],
    batches: Sequence[int],
    window_s: float,
    clock: Clock,
    info: dict[str, Any],
    options: GuardOptions,
    peak_tflops: float,
) -> list[dict[str, Any]]:
    """One expert, batches of each size back to back for about ``window_s``: the figures of each size."""
    import torch

    cuda = options.device.startswith("cuda")
    rows = []
    offset = 0

    def take(batch: int) -> tuple[list[ExpertInput], list[int]]:
        nonlocal offset
        index = [(offset + i) % len(items) for i in range(batch)]
        offset += batch
        return [items[i] for i in index], [prompt_len[i] for i in index]

    # At most 40% of what is left of the budget goes to this sweep; the sharing check needs the rest.
    window = min(window_s, max(clock.left(), 0.0) * 0.4 / (len(batches) * 1.5))
    for batch in batches:
        for _ in range(2):  # warm-up: kernels and workspaces for this shape
            check_outputs(await expert.score(take(batch)[0]))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        latencies: list[float] = []
        tokens = padded = parsed = 0
        spent = 0.0
        while len(latencies) < 3 or (spent < window and len(latencies) < 500):
            chunk, lengths = take(batch)
            started = time.perf_counter()
            outputs = await expert.score(chunk)
            elapsed = time.perf_counter() - started
            spent += elapsed
            latencies.append(elapsed * 1000)
            parsed += check_outputs(outputs)
            tokens += sum(lengths)
            padded += batch * max(lengths)
        calls = len(latencies)
        work = flops(info, tokens, calls * batch, options.new_tokens)
        row = {
            "batch": batch,
            "calls": calls,
            "requests_per_s": calls * batch / spent,
            "prompt_tokens_per_s": tokens / spent,
            "mean_prompt_tokens": tokens / (calls * batch),
            "padding_share": 1 - tokens / padded,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "tflops": work / spent / 1e12,
            "peak_share": work / spent / 1e12 / peak_tflops,
            "parsed": parsed,
        }
        rows.append(row)
        print(
            f"  batch {batch:>3}: {row['requests_per_s']:8.1f} req/s, {row['prompt_tokens_per_s']:9.0f} prompt tok/s,"
            f" p50 {row['p50_ms']:8.1f} ms ({calls} calls)",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Sharing, as processes


def _process_worker(conn: Any, options: GuardOptions, name: str, n_items: int, threads: int) -> None:
    """One expert in its own process: build, say ready, then run batches on command until told to stop."""
    try:
        import torch

        torch.set_num_threads(threads)  # the processes share the machine's cores
        expert, info = build_expert(options, name)
        items = guard_items(n_items)
        loop = asyncio.new_event_loop()
        conn.send(("ready", info))
        offset = 0
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            _, batch, duration, start_at = message
            while time.time() < start_at:
                time.sleep(min(0.005, max(start_at - time.time(), 0)))
            latencies: list[float] = []
            end = start_at + duration
            last = start_at
            while not latencies or time.time() < end:
                chunk = [items[(offset + i) % len(items)] for i in range(batch)]
                offset += batch
                started = time.perf_counter()
                check_outputs(loop.run_until_complete(expert.score(chunk)))
                latencies.append((time.perf_counter() - started) * 1000)
                last = time.time()
            conn.send(("done", {"requests": len(latencies) * batch, "elapsed_s": last - start_at, "lat": latencies}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class ProcessExperts:
    """N experts, each in a spawned process holding its own model on the device."""

    mode = "processes"

    def __init__(self, options: GuardOptions, n: int, n_items: int, timeout_s: float) -> None:
        context = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // n)
        self.conns, self.procs = [], []
        for i in range(n):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_process_worker, args=(child, options, f"guard-{i}", n_items, threads), daemon=True
            )
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.infos = [self._receive(conn, timeout_s) for conn in self.conns]

    @staticmethod
    def _receive(conn: Any, timeout_s: float) -> Any:
        if not conn.poll(timeout_s):
            raise TimeoutError(f"an expert process did not answer in {timeout_s:.0f} s")
        kind, payload = conn.recv()
        if kind == "error":
            raise RuntimeError(f"an expert process failed:\n{payload}")
        return payload

    def run(self, which: Sequence[int], load: int, duration_s: float) -> list[dict[str, Any]]:
        """Experts ``which`` score batches of ``load`` back to back for ``duration_s``, all starting together."""
        start_at = time.time() + 0.2
        for i in which:
            self.conns[i].send(("run", load, duration_s, start_at))
        results = [self._receive(self.conns[i], duration_s + 600) for i in which]
        return [{"requests_per_s": r["requests"] / r["elapsed_s"], "lat": r["lat"]} for r in results]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


# ----------------------------------------------------------------------------------------------------------------
# Sharing, under Ray Serve


class GuardReplica:
    """A Ray Serve replica holding one guard expert, batched as ``aegis_online.rayserve.deployments.ExpertDeployment``
    batches (``ReplicaBatcher``; made a deployment at run time, so that this module imports without ray)."""

    def __init__(self, root: str, options: dict[str, Any], name: str) -> None:
        for path in (root, str(Path(root) / "bench")):
            if path not in sys.path:
                sys.path.insert(0, path)
        import gpu_guard

        from aegis_online.rayserve.batching import ReplicaBatcher

        self.expert, self.info = gpu_guard.build_expert(gpu_guard.GuardOptions(**options), name)
        self.batches: list[tuple[int, float]] = []
        self.batcher = ReplicaBatcher(self.score_batch, max_batch_size=64, batch_wait_s=0.002)
        self.module = gpu_guard

    def describe(self) -> dict[str, Any]:
        return self.info

    def set_batch(self, size: int, wait_s: float) -> None:
        self.batcher.max_batch_size = size
        self.batcher.batch_wait_s = wait_s

    def stats(self) -> list[tuple[int, float]]:
        """(items, seconds in the expert) of each batch since the last call."""
        batches, self.batches = self.batches, []
        return batches

    async def score(self, item: ExpertInput) -> ExpertOutput:
        return await self.batcher(item)

    async def score_batch(self, items: list[ExpertInput]) -> list[ExpertOutput]:
        started = time.perf_counter()
        outputs = await score_with_deadline(self.expert, items, REPLICA_SCORE_TIMEOUT_S)
        self.batches.append((len(items), time.perf_counter() - started))
        return outputs


class RayExperts:
    """N experts as Ray Serve deployments, each reserving 1/N of the GPU, called through their handles."""

    mode = "ray serve"

    def __init__(self, options: GuardOptions, n: int, items: Sequence[ExpertInput], timeout_s: float) -> None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray
        from ray import serve

        self.ray, self.serve, self.items = ray, serve, items
        self.batch_wait_s = 0.002  # ExpertServing's default batch_wait_timeout_ms
        # Replicas unpickle this module's classes by value and import aegis_online and this module by name.
        paths = [str(ROOT), str(ROOT / "bench"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self.temp_dir = Path(tempfile.mkdtemp(prefix="aegis-gpu-", dir="/tmp"))
        gpu = options.device.startswith("cuda")
        cpus = os.cpu_count() or 2
        ray.init(
            include_dashboard=False,
            logging_level=logging.WARNING,
            _temp_dir=str(self.temp_dir),
            num_cpus=cpus,
            num_gpus=1 if gpu else 0,
            object_store_memory=512 * 2**20,
        )
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        quiet = {"enable_access_log": False, "log_level": "WARNING"}
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
        deployment = serve.deployment(GuardReplica, max_ongoing_requests=256, graceful_shutdown_timeout_s=5)
        actor = {"num_cpus": min(1.0, cpus / (n + 1)), "num_gpus": 1.0 / n if gpu else 0}
        from ray.serve.api import _run

        self.names = [f"guard-{i}" for i in range(n)]
        for name in self.names:
            app = deployment.options(name=name, ray_actor_options=actor).bind(
                str(ROOT), dataclasses.asdict(options), name
            )
            _run(app, name=name, route_prefix=None, logging_config=quiet, _blocking=False)
        deadline = time.perf_counter() + timeout_s
        while True:
            statuses = {n: a.status for n, a in serve.status().applications.items() if n in self.names}
            if any(str(s).endswith("DEPLOY_FAILED") for s in statuses.values()):
                raise RuntimeError(f"a guard deployment failed: {serve.status().applications}")
            if len(statuses) == n and all(str(s).endswith("RUNNING") for s in statuses.values()):
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"guard deployments not running after {timeout_s:.0f} s: {statuses}")
            time.sleep(0.5)
        self.handles = [serve.get_app_handle(name) for name in self.names]
        self.infos = [h.describe.remote().result() for h in self.handles]
        self.offset = 0

    def run(self, which: Sequence[int], load: int, duration_s: float) -> list[dict[str, Any]]:
        """A closed loop of ``load`` requests in flight for ``duration_s``; each request goes to every expert of
        ``which`` and is done when all have answered. Each expert's figures are the ensemble's (they answer the
        same requests)."""
        handles = [self.handles[i] for i in which]
        for handle in handles:
            handle.set_batch.remote(load, self.batch_wait_s).result()
            handle.stats.remote().result()
        latencies: list[float] = []

        async def one(item: ExpertInput) -> None:
            started = time.perf_counter()
            outputs = await asyncio.gather(*(h.score.remote(item) for h in handles))
            check_outputs(outputs)
            latencies.append((time.perf_counter() - started) * 1000)

        async def loop() -> float:
            end = time.perf_counter() + duration_s
            last = time.perf_counter()

            async def worker() -> None:
                nonlocal last
                while time.perf_counter() < end:
                    item = self.items[self.offset % len(self.items)]
                    self.offset += 1
                    await one(item)
                    last = time.perf_counter()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(load)))
            return last - started

        elapsed = asyncio.run(loop())
        rate = len(latencies) / elapsed
        results = []
        for handle in handles:  # what each replica did: the batches it formed, the time it spent in the expert
            batches = handle.stats.remote().result()
            items = sum(b for b, _ in batches)
            busy = sum(t for _, t in batches)
            results.append(
                {
                    "requests_per_s": rate,
                    "lat": latencies,
                    "mean_batch": items / max(len(batches), 1),
                    "busy_share": busy / elapsed,
                    "ms_per_batch": busy / max(len(batches), 1) * 1000,
                }
            )
        return results

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.serve.shutdown()
        with contextlib.suppress(Exception):
            self.ray.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def sharing(
    mode: str,
    options: GuardOptions,
    n: int,
    loads: Sequence[int],
    items: Sequence[ExpertInput],
    window_s: float,
    clock: Clock,
    waits_ms: Sequence[float] = (2.0,),
) -> dict[str, Any]:
    """Each expert alone, then 2 (and ``n``) together, at each load: ensemble and summed rates against the slowest
    expert alone."""
    import torch

    cuda = options.device.startswith("cuda")
    started = time.perf_counter()
    experts: Any = None
    note = ""
    if mode in ("auto", "ray"):
        try:
            import ray
            from ray import serve  # noqa: F401
        except ImportError as exc:
            if mode == "ray":
                raise
            note = f"ray is not importable here ({exc}); the experts ran as separate processes sharing the GPU"
            print(f"  {note}\n{traceback.format_exc(limit=-6)}", flush=True)
            mode = "processes"
    if mode in ("auto", "ray"):
        try:
            experts = RayExperts(options, n, items, timeout_s=max(clock.left() * 0.5, 60))
        except Exception as exc:
            if mode == "ray":
                raise
            note = f"Ray Serve failed here ({type(exc).__name__}: {str(exc)[:300]}); the experts ran as processes"
            print(f"  {note}\n{traceback.format_exc(limit=-6)}", flush=True)
            with contextlib.suppress(Exception):
                import ray

                ray.shutdown()
            mode = "processes"
    if experts is None:
        experts = ProcessExperts(options, n, len(items), timeout_s=max(clock.left() * 0.5, 60))
    startup = time.perf_counter() - started
    print(f"  {n} experts up as {experts.mode} in {startup:.1f} s", flush=True)
    groups = [list(range(k)) for k in sorted({2, n}) if k <= n]
    cases = [(load, wait) for load in loads for wait in (waits_ms if experts.mode == "ray serve" else [None])]
    measures = len(cases) * (n + len(groups)) * 1.5  # a warm-up of a third of a window before each
    window = max(min(window_s, clock.left() * 0.8 / max(measures, 1)), 0.5)
    levels = []
    used_gib = None
    try:
        for load, wait in cases:
            if wait is not None:
                experts.batch_wait_s = wait / 1000
            if clock.left() < (n + len(groups)) * window * 4 / 3:
                note = (note + "; " if note else "") + f"load {load} skipped: the time budget ran out"
                print(f"  {note}", flush=True)
                continue
            alone = []
            for i in range(n):
                experts.run([i], load, window / 3)
                alone.append(experts.run([i], load, window)[0])
            slowest = min(a["requests_per_s"] for a in alone)
            together = []
            for group in groups:
                experts.run(group, load, window / 3)
                results = experts.run(group, load, window)
                rates = [r["requests_per_s"] for r in results]
                if experts.mode == "processes":  # independent streams: a request is judged by all when the slowest is
                    ensemble, total = min(rates), sum(rates)
                else:  # every request went to every expert of the group
                    ensemble, total = rates[0], rates[0] * len(group)
                lat = results[0]["lat"] if experts.mode != "processes" else [x for r in results for x in r["lat"]]
                together.append(
                    {
                        "experts": len(group),
                        "ensemble_requests_per_s": ensemble,
                        "expert_requests_per_s_summed": total,
                        "ensemble_ratio": ensemble / slowest,
                        "summed_ratio": total / slowest,
                        "p50_ms": percentile(lat, 50),
                        "p99_ms": percentile(lat, 99),
                        "replica": [{k: r.get(k) for k in REPLICA_KEYS} for r in results],
                    }
                )
                if cuda:
                    free, total_mem = torch.cuda.mem_get_info()
                    used_gib = max(used_gib or 0.0, (total_mem - free) / 2**30)
            level = {
                "load": load,
                "batch_wait_ms": wait,
                "alone_requests_per_s": [a["requests_per_s"] for a in alone],
                "alone_replica": [{k: a.get(k) for k in REPLICA_KEYS} for a in alone],
                "alone_p50_ms": [percentile(a["lat"], 50) for a in alone],
                "slowest_alone_requests_per_s": slowest,
                "together": together,
            }
            levels.append(level)
            shown = ", ".join(f"{t['experts']} together {t['ensemble_ratio']:.2f}" for t in together)
            waited = f" (batch wait {wait:g} ms)" if wait is not None else ""
            print(
                f"  load {load:>3}{waited}: slowest alone {slowest:7.1f} req/s; ensemble / slowest alone: {shown}",
                flush=True,
            )
            if "mean_batch" in alone[0]:
                formed = ", ".join(f"{a['mean_batch']:.1f} in {a['ms_per_batch']:.0f} ms" for a in alone)
                print(f"    alone, each replica's mean batch and time in the expert per batch: {formed}", flush=True)
                for t in together:
                    formed = ", ".join(f"{r['mean_batch']:.1f} in {r['ms_per_batch']:.0f} ms" for r in t["replica"])
                    print(f"    {t['experts']} together: {formed}", flush=True)
    finally:
        experts.close()
    return {
        "mode": experts.mode,
        "note": note,
        "experts": n,
        "startup_s": startup,
        "window_s": window,
        "device_memory_used_gib": used_gib,
        "experts_info": experts.infos,
        "levels": levels,
    }


# ----------------------------------------------------------------------------------------------------------------


def machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        facts.update(
            {
                "gpu": props.name,
                "gpu_memory_gib": props.total_memory / 2**30,
                "multiprocessors": props.multi_processor_count,
                "cuda": torch.version.cuda,
            }
        )
    if importlib.util.find_spec("ray") is not None:  # not imported: it is slow, and only the sharing check needs it
        with contextlib.suppress(Exception):
            facts["ray"] = importlib.metadata.version("ray")
    return facts


def print_tables(result: dict[str, Any]) -> None:
    options, peak = result["options"], result["peak_tflops"]
    where = result["machine"].get("gpu", options["device"])
    print(f"\nOne expert, in process ({result['model']}, {options['dtype']}, {where})")
    header = (
        f"{'batch':>5} | {'calls':>5} | {'req/s':>8} | {'prompt tok/s':>12} | {'p50 ms':>8} | {'p99 ms':>8} | "
        f"{'peak GiB':>8} | {'TFLOP/s':>7} | {'of peak':>7} | {'padding':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in result["single"]:
        gib = f"{row['peak_gib']:8.1f}" if row["peak_gib"] is not None else f"{'-':>8}"
        print(
            f"{row['batch']:>5} | {row['calls']:>5} | {row['requests_per_s']:>8.1f} | "
            f"{row['prompt_tokens_per_s']:>12.0f} | {row['p50_ms']:>8.1f} | {row['p99_ms']:>8.1f} | {gib} | "
            f"{row['tflops']:>7.1f} | {row['peak_share']:>7.1%} | {row['padding_share']:>7.0%}"
        )
    print(
        f"of peak = (2 x parameters used per token x prompt and generated tokens) / time / {peak:g} TFLOP/s "
        "(bf16 dense); a batch's latency is its requests' latency; padding = share of the batch's prompt positions "
        "that are left padding"
    )
    share = result.get("sharing")
    if not share:
        return
    print(
        f"\nExperts sharing the device, as {share['mode']} ({share['experts']} experts, "
        f"windows of {share['window_s']:.1f} s)"
    )
    if share["note"]:
        print(f"note: {share['note']}")
    header = (
        f"{'load':>7} | {'alone req/s (each)':>22} | {'together':>8} | {'ensemble req/s':>14} | "
        f"{'summed req/s':>12} | {'ensemble/slowest':>16} | {'summed/slowest':>14} | {'p50 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for level in share["levels"]:
        alone = " ".join(f"{r:.1f}" for r in level["alone_requests_per_s"])
        wait = level.get("batch_wait_ms")
        load = f"{level['load']}" + ("" if wait is None else f"/{wait:g}")
        for t in level["together"]:
            print(
                f"{load:>7} | {alone:>22} | {t['experts']:>8} | {t['ensemble_requests_per_s']:>14.1f} | "
                f"{t['expert_requests_per_s_summed']:>12.1f} | {t['ensemble_ratio']:>16.2f} | "
                f"{t['summed_ratio']:>14.2f} | {t['p50_ms']:>8.1f}"
            )
    print(
        "load = requests in flight (the batch each expert forms; /ms: Ray Serve's batch wait); "
        "ensemble = requests judged by every expert per s; "
        "summed = the experts' requests/s added up; ratios against the slowest expert alone, same load, same run"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="A 2-layer model of the same vocabulary: a CPU smoke run.")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu).")
    parser.add_argument("--dtype", default=None, help="bfloat16 on a GPU, float32 on CPU by default.")
    parser.add_argument("--batches", default=None, help="Comma-separated batch sizes (default 1,4,16,64).")
    parser.add_argument("--experts", type=int, default=2, help="Experts sharing the device (0: no sharing check).")
    parser.add_argument("--loads", default=None, help="Requests in flight in the sharing check (default 4,64).")
    parser.add_argument(
        "--batch-wait-ms", default="2", help="Ray Serve's batch_wait_timeout of the experts, comma-separated (2)."
    )
    parser.add_argument(
        "--sharing",
        choices=("auto", "ray", "processes"),
        default="auto",
        help="Ray Serve if importable, else processes (auto); or force one.",
    )
    parser.add_argument("--ray", action="store_true", help="Same as --sharing ray.")
    parser.add_argument("--new-tokens", type=int, default=6, help="Answer tokens per query (a real answer's length).")
    parser.add_argument("--window-s", type=float, default=None, help="Seconds measured per case (default 8).")
    parser.add_argument("--budget-s", type=float, default=None, help="Time budget of the whole run; windows shrink.")
    parser.add_argument("--items", type=int, default=None, help="Distinct conversations (default 512; 128 tiny).")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="bf16 dense peak.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures as JSON here.")
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    batches = [int(b) for b in (args.batches or ("1,4" if args.tiny else "1,4,16,64")).split(",")]
    loads = [int(c) for c in (args.loads or ("2" if args.tiny else "4,64")).split(",")]
    window_s = args.window_s if args.window_s is not None else (0.5 if args.tiny else 8.0)
    clock = Clock(args.budget_s if args.budget_s is not None else (600.0 if args.tiny else 1800.0))
    mode = "ray" if args.ray else args.sharing

    facts = machine(device)
    print(
        f"machine: {facts.get('gpu', 'CPU')} ({facts['cpus']} CPUs), torch {facts['torch']}, transformers "
        f"{facts['transformers']}" + (f", ray {facts['ray']}" if "ray" in facts else ", no ray"),
        flush=True,
    )
    temp = Path(tempfile.mkdtemp(prefix="aegis-gpu-guard-"))
    try:
        items = guard_items(args.items or (128 if args.tiny else 512))
        started = time.perf_counter()
        build_tokenizer(temp, items, args.tiny)
        options = GuardOptions(
            tokenizer_dir=str(temp),
            tiny=args.tiny,
            device=device,
            dtype=dtype,
            new_tokens=args.new_tokens,
            max_batch_size=max(batches + loads),
        )
        expert, info = build_expert(options)
        from aegis_online.experts.backends.rendering import prompt_token_ids

        family, tokenizer = expert.family, expert.backend.tokenizer
        prompt_len = [sum(len(prompt_token_ids(tokenizer, q)) for q in family.queries(item)) for item in items]
        model = "Llama-3.1-8B shape" if not args.tiny else "tiny Llama (2 layers, hidden 64)"
        print(
            f"model: {model}, {info['parameters'] / 1e9:.2f} G parameters, {info['weights_gib']:.1f} GiB of weights, "
            f"built in {info['build_s']:.1f} s (tokenizer and model {time.perf_counter() - started:.1f} s); "
            f"prompts: {len(items)} conversations, {sum(prompt_len) / len(items):.0f} tokens on average "
            f"(p50 {percentile(prompt_len, 50):.0f}, max {max(prompt_len)}), {args.new_tokens} answer tokens each",
            flush=True,
        )
        breakdown = host_breakdown(expert, items[0], options)
        print(
            f"batch-1 breakdown ({breakdown['prompt_tokens']} prompt tokens): forward of the prompt "
            f"{breakdown['prompt_forward_ms']:.1f} ms, of one token {breakdown['one_token_forward_ms']:.1f} ms; "
            f"generate ({args.new_tokens} tokens) {breakdown['generate_ms']:.1f} ms; backend.answer "
            f"{breakdown['backend_answer_ms']:.1f} ms (in a worker thread "
            f"{breakdown['backend_answer_in_a_thread_ms']:.1f} ms); "
            f"expert.score {breakdown['expert_score_ms']:.1f} ms (on a new event loop "
            f"{breakdown['expert_score_new_loop_ms']:.1f} ms); "
            f"an empty kernel launch {breakdown['empty_kernel_launch_us']:.1f} us",
            flush=True,
        )
        print("one expert, in process:", flush=True)
        single = asyncio.run(
            sweep(expert, items, prompt_len, batches, window_s, clock, info, options, args.peak_tflops)
        )
        result: dict[str, Any] = {
            "machine": facts,
            "model": model,
            "config": TINY if args.tiny else LLAMA_8B,
            "model_info": info,
            "options": dataclasses.asdict(options) | {"tokenizer_dir": None},
            "prompt_tokens": {"mean": sum(prompt_len) / len(items), "p50": percentile(prompt_len, 50)},
            "peak_tflops": args.peak_tflops,
            "single": single,
            "batch1_breakdown": breakdown,
        }
        del expert, family, tokenizer
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            print(
                f"  GPU memory held by this process after freeing it: {torch.cuda.memory_allocated() / 2**30:.1f} GiB"
            )
        if args.json:  # the sweep's figures are kept even if the sharing check fails or runs out of time
            args.json.write_text(json.dumps(result, indent=2, default=str))
        if args.experts >= 2:
            print(f"{args.experts} experts sharing the device ({mode}):", flush=True)
            try:
                result["sharing"] = sharing(
                    mode,
                    options,
                    args.experts,
                    loads,
                    items,
                    window_s,
                    clock,
                    [float(w) for w in args.batch_wait_ms.split(",")],
                )
            except Exception:
                result["sharing_error"] = traceback.format_exc()
                print(f"the sharing check failed:\n{result['sharing_error']}", flush=True)
        print_tables(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
        if "sharing_error" in result:
            raise SystemExit(1)
        return result
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
