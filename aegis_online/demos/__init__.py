"""What a new user runs first: ``service`` (``make demo``: the service over HTTP with the CPU experts, tenants
sending traffic and delayed feedback through the project's client; prompts from ``prompts``) and ``drift``
(``make demo-drift``: the embedded engine on a synthetic stream whose best expert changes)."""
