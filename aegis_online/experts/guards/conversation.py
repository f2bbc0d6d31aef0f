"""Which turns of a conversation a guard model is shown, the same way for every family.

Guard models judge one turn in its context. The turn under check is the last user message (prompt check) or the
last assistant message (response check); anything after it is dropped, because Meta's prompt guide warns that an
agent reply must not be present when the user turn is judged. System and tool turns are dropped too: no family
here was trained with them. Families trained on one exchange (ShieldGemma, NemoGuard, WildGuard, Granite Guardian)
take ``last_exchange``; Llama Guard takes the whole ``dialogue``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aegis_online.experts.base import ExpertInput

CHAT_ROLES = ("user", "assistant")


def checked_index(item: ExpertInput) -> int:
    """Index in ``item.messages`` of the turn under check."""
    role = "user" if item.check == "prompt" else "assistant"
    for index in range(len(item.messages) - 1, -1, -1):
        if item.messages[index].role == role:
            return index
    raise ValueError(f"a {item.check} check needs at least one {role} message")


def dialogue(item: ExpertInput) -> list[tuple[str, str]]:
    """(role, stripped content) of the user/assistant turns up to and including the turn under check."""
    end = checked_index(item)
    return [(m.role, m.content.strip()) for m in item.messages[: end + 1] if m.role in CHAT_ROLES]


@dataclass(frozen=True)
class Exchange:
    """The user turn and, for a response check, the assistant turn that answers it (``None`` for a prompt check).

    ``user`` is ``""`` when a response check has no user turn before the checked assistant turn.
    """

    user: str
    assistant: str | None


def last_exchange(item: ExpertInput) -> Exchange:
    """The single exchange a one-turn guard judges: the checked turn and, for responses, the user turn before it."""
    turns = dialogue(item)
    if item.check == "prompt":
        return Exchange(user=turns[-1][1], assistant=None)
    user = next((content for role, content in reversed(turns[:-1]) if role == "user"), "")
    return Exchange(user=user, assistant=turns[-1][1])


def exchange_messages(item: ExpertInput) -> tuple[dict[str, str], ...]:
    """The last exchange as plain chat messages, for families whose chat template carries the instruction:
    ``[user]`` for a prompt check, ``[user, assistant]`` for a response check."""
    exchange = last_exchange(item)
    messages: tuple[dict[str, str], ...] = ({"role": "user", "content": exchange.user},)
    if item.check == "response":
        messages += ({"role": "assistant", "content": exchange.assistant or ""},)
    return messages
