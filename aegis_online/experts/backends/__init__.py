"""Where guard models run: in-process transformers, offline vLLM, or an OpenAI-compatible HTTP server.

Every backend answers ``GuardQuery``s with ``GuardAnswer``s and reads verdicts through ``verdict_logprobs``;
``GuardExpert`` joins one to a family. The backends are exported lazily: importing this package pulls in neither
torch, vllm nor httpx, which belong to optional extras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aegis_online.experts.backends.guard_expert import GuardBackend, GuardExpert
from aegis_online.experts.backends.verdict_logprobs import Step, verdict_probability

if TYPE_CHECKING:
    from aegis_online.experts.backends.http_client import GuardHTTPError
    from aegis_online.experts.backends.openai_http import OpenAIChatGuardBackend, OpenAIModerationsExpert
    from aegis_online.experts.backends.transformers_backend import TransformersGuardBackend
    from aegis_online.experts.backends.vllm_backend import VLLMGuardBackend

_LAZY = {
    "GuardHTTPError": "http_client",
    "OpenAIChatGuardBackend": "openai_http",
    "OpenAIModerationsExpert": "openai_http",
    "TransformersGuardBackend": "transformers_backend",
    "VLLMGuardBackend": "vllm_backend",
}

__all__ = [
    "GuardBackend",
    "GuardExpert",
    "GuardHTTPError",
    "OpenAIChatGuardBackend",
    "OpenAIModerationsExpert",
    "Step",
    "TransformersGuardBackend",
    "VLLMGuardBackend",
    "verdict_probability",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
