"""aegis-online: an online-learning ensemble of content-safety experts.

The code layers, and what each may import, are declared once: the ``layers`` contract of ``[tool.importlinter]``
in ``pyproject.toml`` (checked by ``lint-imports``; README.md quotes it, ``docs/architecture.md`` maps it).
"""

__version__ = "0.1.0"
