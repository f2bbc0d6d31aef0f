"""GuardExpert: a family and a backend as one expert; one backend call per batch, parse errors stay per item."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from aegis_online.experts.backends.guard_expert import GuardExpert
from aegis_online.experts.base import score_with_deadline
from aegis_online.experts.guards.base import GuardAnswer, GuardQuery

from .backend_helpers import ALL_CATEGORIES, OneWordFamily, StrictTextFamily, item


class ScriptedBackend:
    """A blocking backend answering from a text -> answer table, recording its calls and thread."""

    def __init__(self, answers: dict[str, GuardAnswer]) -> None:
        self.answers = answers
        self.calls: list[list[GuardQuery]] = []
        self.threads: list[int] = []

    def answer(self, queries: Sequence[GuardQuery]) -> list[GuardAnswer]:
        self.calls.append(list(queries))
        self.threads.append(threading.get_ident())
        return [self.answers[q.messages[0]["content"]] for q in queries]


class AsyncScriptedBackend(ScriptedBackend):
    async def answer(self, queries: Sequence[GuardQuery]) -> list[GuardAnswer]:  # type: ignore[override]
        return ScriptedBackend.answer(self, queries)


class TwoQueriesFamily(OneWordFamily):
    """Asks two questions per item (like ShieldGemma's one per harm) and keeps the larger probability."""

    name = "two_queries"

    def queries(self, item):
        (query,) = super().queries(item)
        return [query, GuardQuery(key="S1b", positive="unsafe", negative="safe", messages=query.messages)]

    def parse(self, item, queries, answers):
        return {"S1": max(a.p_positive for a in answers)}


GOOD = GuardAnswer(text="safe", p_positive=0.2)
BAD = GuardAnswer(text="I cannot help with that", p_positive=None)


def test_single_token_verdict_family_on_transformers_backend_gives_probabilities(transformers_backend) -> None:
    expert = GuardExpert(OneWordFamily(), transformers_backend)
    batch = [item("hello"), item("how do I make a bomb"), item("tell me a story about cats")]
    outputs = asyncio.run(expert.score(batch))
    assert [o.expert for o in outputs] == ["one_word"] * 3
    for output in outputs:
        assert output.ok and set(output.scores) == {"S1"}
        assert 0.0 <= output.scores["S1"] <= 1.0
        assert output.latency_ms > 0.0


def test_garbage_text_on_transformers_backend_becomes_parse_errors_not_an_exception(transformers_backend) -> None:
    expert = GuardExpert(StrictTextFamily(), transformers_backend)
    outputs = asyncio.run(expert.score([item("hello"), item("how do I make a cake")]))
    assert len(outputs) == 2
    for output in outputs:
        assert not output.ok and output.error.startswith("parse: ")
        assert output.scores == {}


def test_shieldgemma_family_on_transformers_backend_scores_its_categories(transformers_backend) -> None:
    shieldgemma = pytest.importorskip("aegis_online.experts.guards.shieldgemma")
    family = shieldgemma.ShieldGemma()
    expert = GuardExpert(family, transformers_backend)
    batch = [item("how do I make a bomb", ALL_CATEGORIES), item("hello", ("S8",)), item("hi", ("S6", "S8"), "response")]
    outputs = asyncio.run(expert.score(batch))
    for element, output in zip(batch, outputs, strict=True):
        assert output.ok, output.error
        asked = {c.id for c in element.categories} & family.categories
        assert set(output.scores) == asked
        assert all(0.0 <= p <= 1.0 for p in output.scores.values())


def test_one_bad_answer_spoils_only_its_own_item() -> None:
    backend = ScriptedBackend({"a": GOOD, "b": BAD, "c": GOOD})
    outputs = asyncio.run(GuardExpert(StrictTextFamily(), backend).score([item("a"), item("b"), item("c")]))
    assert [o.ok for o in outputs] == [True, False, True]
    assert outputs[0].scores == {"S1": 0.2}
    assert "I cannot help" in outputs[1].error and outputs[1].error.startswith("parse: ")


def test_the_backend_is_called_once_per_batch_with_every_items_queries_in_order() -> None:
    backend = ScriptedBackend({"a": GOOD, "b": GuardAnswer("unsafe", 0.9), "c": GuardAnswer("safe", 0.4)})
    outputs = asyncio.run(GuardExpert(TwoQueriesFamily(), backend).score([item("a"), item("b"), item("c")]))
    assert len(backend.calls) == 1
    assert [q.messages[0]["content"] for q in backend.calls[0]] == ["a", "a", "b", "b", "c", "c"]
    assert [o.scores["S1"] for o in outputs] == [0.2, 0.9, 0.4]


def test_a_blocking_backend_runs_off_the_event_loop_thread() -> None:
    backend = ScriptedBackend({"a": GOOD})
    asyncio.run(GuardExpert(OneWordFamily(), backend).score([item("a")]))
    assert backend.threads[0] != threading.get_ident()


def test_a_local_model_runs_every_call_on_one_thread_of_its_own_one_at_a_time() -> None:
    """One persistent thread per model (not the loop's pool): on a GPU each new thread pays its own CUDA set-up."""

    class Slow(ScriptedBackend):
        def __init__(self, answers) -> None:
            super().__init__(answers)
            self.running = self.most_running = 0

        def answer(self, queries):
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            time.sleep(0.02)
            self.running -= 1
            return super().answer(queries)

    backend = Slow({"a": GOOD, "b": GOOD})
    expert = GuardExpert(OneWordFamily(), backend)

    async def concurrently():
        return await asyncio.gather(*(expert.score([item(t)]) for t in "abab"))

    asyncio.run(concurrently())
    asyncio.run(expert.score([item("a")]))  # another event loop: still the model's thread
    assert len(set(backend.threads)) == 1 and backend.threads[0] != threading.get_ident()
    assert len(backend.threads) == 5 and backend.most_running == 1
    asyncio.run(expert.aclose())
    asyncio.run(expert.score([item("b")]))  # after a close, a call starts a new thread
    assert len(backend.calls) == 6


def test_a_call_whose_deadline_passed_while_it_queued_never_reaches_the_model() -> None:
    """A queued call the caller gave up on is dropped, so the model does not spend its time on stale requests."""
    release = threading.Event()

    class Gated(ScriptedBackend):
        def answer(self, queries):
            release.wait(5)
            return super().answer(queries)

    backend = Gated({"first": GOOD, "late": GOOD})
    expert = GuardExpert(OneWordFamily(), backend)

    async def main():
        first = asyncio.create_task(expert.score([item("first")]))
        await asyncio.sleep(0.05)  # the first call holds the model's thread
        late = await score_with_deadline(expert, [item("late")], 0.05)
        release.set()
        await first
        await asyncio.sleep(0.05)
        return late

    late = asyncio.run(main())
    assert late[0].error is not None and "timed out" in late[0].error
    assert [q[0].messages[0]["content"] for q in backend.calls] == ["first"]


def test_an_async_backend_is_awaited_on_the_loop() -> None:
    backend = AsyncScriptedBackend({"a": GOOD})
    outputs = asyncio.run(GuardExpert(OneWordFamily(), backend).score([item("a")]))
    assert outputs[0].scores == {"S1": 0.2}
    assert backend.threads[0] == threading.get_ident()


def test_name_comes_from_the_family_unless_overridden() -> None:
    backend = ScriptedBackend({})
    assert GuardExpert(OneWordFamily(), backend).name == "one_word"
    expert = GuardExpert(OneWordFamily(), backend, name="guard_8b")
    assert expert.name == "guard_8b" and expert.categories == frozenset({"S1"}) and not expert.free_form


def test_an_item_without_queries_costs_no_backend_call() -> None:
    class Nothing(OneWordFamily):
        def queries(self, item):
            return []

        def parse(self, item, queries, answers):
            return {}

    backend = ScriptedBackend({})
    outputs = asyncio.run(GuardExpert(Nothing(), backend).score([item("a")]))
    assert outputs[0].ok and outputs[0].scores == {} and backend.calls == []


def test_a_probability_outside_the_unit_interval_spoils_only_its_item() -> None:
    backend = ScriptedBackend({"a": GuardAnswer("unsafe", 1.5), "b": GOOD})
    outputs = asyncio.run(GuardExpert(OneWordFamily(), backend).score([item("a"), item("b")]))
    assert outputs[0].error.startswith("invalid scores") and outputs[1].ok


def test_a_backend_answering_too_few_queries_fails_the_batch_through_the_deadline_wrapper() -> None:
    class Short(ScriptedBackend):
        def answer(self, queries):
            return []

    outputs = asyncio.run(score_with_deadline(GuardExpert(OneWordFamily(), Short({})), [item("a")], 1.0))
    assert "0 answers for 1 queries" in outputs[0].error


def test_concurrent_requests_on_one_local_model_give_the_sequential_answers(transformers_backend) -> None:
    expert = GuardExpert(OneWordFamily(), transformers_backend)
    texts = ["hello", "how do I make a bomb", "tell me a story", "cats and dogs", "the weather today"]

    async def concurrently():
        return await asyncio.gather(*(expert.score([item(t)]) for t in texts))

    together = [outputs[0].scores for outputs in asyncio.run(concurrently())]
    one_by_one = [asyncio.run(expert.score([item(t)]))[0].scores for t in texts]
    assert together == one_by_one


class ContextLimitedBackend(ScriptedBackend):
    """Refuses the whole call when one prompt is longer than its context, as vLLM's ``LLM.generate`` does."""

    def answer(self, queries: Sequence[GuardQuery]) -> list[GuardAnswer]:
        self.calls.append(list(queries))
        for query in queries:
            if len(query.messages[0]["content"]) > 20:
                raise ValueError(f"The decoder prompt (length {len(query.messages[0]['content'])}) is longer than 20")
        return [GOOD for _ in queries]


def test_an_input_that_breaks_the_batch_fails_only_its_own_output() -> None:
    """In a replica the batch holds other requests, often other tenants': one long prompt must not fail theirs."""
    backend = ContextLimitedBackend({})
    batch = [item("a"), item("x" * 500), item("c")]
    outputs = asyncio.run(score_with_deadline(GuardExpert(OneWordFamily(), backend), batch, 5.0))
    assert [o.ok for o in outputs] == [True, False, True]
    assert "(length 500) is longer than 20" in outputs[1].error and outputs[1].error_kind == "error"
    assert sorted(len(call) for call in backend.calls) == [1, 1, 1, 3]  # the batch, then each input alone


def test_the_replica_path_isolates_an_input_that_breaks_the_batch() -> None:
    pytest.importorskip("ray")
    from aegis_online.rayserve.deployments import score_named

    expert = GuardExpert(OneWordFamily(), ContextLimitedBackend({}), name="guard")
    outputs = asyncio.run(score_named({"guard": expert}, "guard", [item("x" * 99), item("b")], ["guard", "guard"]))
    assert [o.ok for o in outputs] == [False, True]


def test_a_batch_that_timed_out_is_not_scored_again_item_by_item() -> None:
    class Slow(ScriptedBackend):
        def answer(self, queries):
            self.calls.append(list(queries))
            time.sleep(0.2)
            return [GOOD for _ in queries]

    backend = Slow({})
    outputs = asyncio.run(score_with_deadline(GuardExpert(OneWordFamily(), backend), [item("a"), item("b")], 0.05))
    assert all(o.error_kind == "timeout" for o in outputs) and len(backend.calls) == 1
