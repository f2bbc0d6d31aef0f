"""The moderation service: a Ray Serve application (one deployment per expert, a FastAPI ingress) and its HTTP API.

The outer ring of the architecture: it may import every layer below it (engine, experts, state, feedback) and
nothing imports it but the command line. Ray is imported only by ``deployments``, ``runtime`` and ``loopback``, so
the HTTP app (``app.create_app``) runs and is tested without Ray, over an ``Engine`` whose experts live in the same
process.

Modules, one job each:

* ``config``: the validated settings tree (YAML + ``AEGIS_SERVE_*`` environment), ``load_config``.
* ``auth``: API keys -> (tenant, role); open development mode on loopback only.
* ``protocol``: OpenAI's moderation wire format; ``models``: the other bodies of the native API.
* ``moderate``, ``openai_moderations``, ``feedback``, ``tenants``: one serving class per endpoint family.
* ``resilience``: store wrappers that keep answering from cache when the store is unreachable.
* ``health``, ``metrics``, ``errors``, ``middleware``: readiness, Prometheus, JSON errors, body limits and timing.
* ``service``: builds what the app serves from a config; ``app``: the FastAPI app factory (thin).
* ``deployments``: the Ray Serve deployments and ``build_app``; ``runtime``: start and stop local Ray + Serve,
  closed to other users (loopback, token); ``loopback``: the worker hook that keeps Serve's replicas on loopback.
* ``cli``: ``aegis-online serve`` and ``serve-demo``; ``demo``, ``demo_data``: the HTTP demo.
* ``launch``: serve's options and what they resolve to; ``supervisor``: serve's main process (no Ray), which runs
  ``driver`` (the Ray driver) as a child and stops it on signals; ``sessions``: Ray session folders and their
  processes, stale ones removed.
"""
