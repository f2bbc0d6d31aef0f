"""aegis-online: an online-learning ensemble of content-safety experts.

Layers (imports point one way, down this list): ``taxonomy`` and ``schemas``; ``learn`` (pure numpy);
``ensemble`` and ``policy``; ``engine``; then the outer ring (``simulate``, ``cli``, and later the servers).
"""

__version__ = "0.1.0"
