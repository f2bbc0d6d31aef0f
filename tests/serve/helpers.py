"""Helpers of the service tests: experts that answer instantly (or fail, or sleep), API keys, service builders, a
uvicorn server in a thread."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from aegis_online.config import ApiKey, ServiceConfig
from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput
from aegis_online.serve.auth import KeyTable
from aegis_online.serve.service import ModerationService, build_service
from tests.helpers import wait_until

ADMIN_KEY = "test-admin-key-0000000000000001"
ACME_KEY = "test-acme-client-key-000000001"
GLOBEX_KEY = "test-globex-client-key-0000001"
ACME_ADMIN_KEY = "test-acme-admin-key-0000000001"

KEYS = [
    ApiKey(name="ops", key=ADMIN_KEY, role="admin"),
    ApiKey(name="acme-app", key=ACME_KEY, tenant="acme", role="client"),
    ApiKey(name="globex-app", key=GLOBEX_KEY, tenant="globex", role="client"),
    ApiKey(name="acme-ops", key=ACME_ADMIN_KEY, tenant="acme", role="admin"),
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class KeywordExpert(Expert):
    """Scores ``high`` for a category when the checked turn contains one of its words, else ``low``; instant."""

    def __init__(
        self,
        name: str,
        words: dict[str, Sequence[str]],
        *,
        high: float = 0.9,
        low: float = 0.05,
        delay_s: float = 0.0,
        fail: bool = False,
        free_form: bool = False,
    ) -> None:
        self.name = name
        self.words = {c: tuple(w.lower() for w in ws) for c, ws in words.items()}
        self.categories = frozenset(words)
        self.free_form = free_form
        self.high, self.low = high, low
        self.delay_s = delay_s
        self.fail = fail
        self.calls = 0

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError(f"{self.name} is broken")
        outputs = []
        for item in batch:
            text = item.checked_text.lower()
            scores = {
                c.id: (self.high if any(w in text for w in self.words.get(c.id, ())) else self.low)
                for c in item.categories
                if self.covers(c)
            }
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=0.1))
        return outputs


VIOLENT_WORDS = ("kill", "stab", "shoot")
PROFANE_WORDS = ("damn", "fuck", "shit")


def default_experts(**overrides: Any) -> list[Expert]:
    """Two experts that agree on the obvious cases: enough for the API's behaviour, instant."""
    return [
        KeywordExpert("words-a", {"S1": VIOLENT_WORDS, "S12": PROFANE_WORDS, "S10": ("idiot",)}, **overrides),
        KeywordExpert(
            "words-b", {"S1": VIOLENT_WORDS, "S12": PROFANE_WORDS, "S8": ("vermin",), "S6": ("suicide",)}, **overrides
        ),
    ]


def make_config(**sections: Any) -> ServiceConfig:
    """A service config for tests: memory only unless ``store`` says ``persist`` (never an ``aegis-data/`` here)."""
    # 5 s: a loaded CI machine (a Ray cluster shutting down beside the test) can take 0.5 s for a keyword expert;
    # the tests of missed deadlines set their own.
    base: dict[str, Any] = {"limits": {"deadline_ms": 5000}}
    base.update(sections)
    base["store"] = {"persist": False, **base.get("store", {})}
    return ServiceConfig.model_validate(base)


def make_service(
    experts: Sequence[Expert] | None = None, *, keys: Sequence[ApiKey] | None = KEYS, **sections: Any
) -> ModerationService:
    config = make_config(**sections)
    return build_service(config, list(experts or default_experts()), KeyTable.from_keys(keys or []))


def conversation(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a spare loopback port in a thread; yields its base URL."""
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    if not wait_until(lambda: server.started or not thread.is_alive(), 20):
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
