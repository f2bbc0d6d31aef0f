"""The moderation service on Ray Serve: one deployment per expert and the FastAPI ingress of ``serve``.

Ray is imported only here (``deployments``, ``runtime``, ``loopback``), so the HTTP API runs and is tested without
it. Modules, one job each:

* ``deployments``: the Ray Serve deployments, their resources and placement groups, and ``build_app``;
  ``kuberay``: the application builder a RayService's ``serveConfigV2`` names; ``batching``: how an expert replica
  batches concurrent requests (no Ray import).
* ``runtime``: start and stop a local Ray + Serve closed to other users (loopback, per-start token);
  ``loopback``: the worker hook that keeps Serve's replicas on loopback.
* ``launch``: ``serve``'s options and what they resolve to; ``supervisor``: serve's main process (no Ray), which
  runs ``driver`` (the Ray driver) as a child and stops it on signals; ``sessions``: Ray session folders and their
  processes, stale ones removed.
* ``cli``: ``aegis-online serve`` and ``serve-demo``.
"""
