"""The moderation service's HTTP API: a thin FastAPI layer over an ``Engine``, without Ray (``rayserve`` hosts it
on Ray Serve; the tests and benchmarks also run it in one process).

Modules, one job each:

* ``auth``, ``access``: API keys -> (tenant, role), and who may act for or administer a tenant.
* ``moderate``, ``openai_moderations``, ``feedback``, ``tenants``: one serving class per endpoint family (bodies in
  ``aegis_online.api_models``).
* ``admission``, ``quotas``: admission control under overload; per-tenant rate limits.
* ``resilience``: store wrappers that keep answering from cache when the store is unreachable.
* ``health``, ``metrics``, ``errors``, ``middleware``: readiness, Prometheus, JSON errors, body limits and timing.
* ``service``: builds what the app serves from a config; ``app``: the FastAPI app factory (thin).
"""
