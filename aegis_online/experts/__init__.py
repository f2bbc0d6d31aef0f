"""Safety experts: one interface, many backends. Depends only on ``taxonomy`` and ``schemas``."""

from aegis_online.experts.base import Expert, ExpertInput, score_with_deadline

__all__ = ["Expert", "ExpertInput", "score_with_deadline"]
