"""Show, with numbers and plots, that the ensemble adapts: drift scenarios, traffic replay, oracles and reports.

The outer ring of the package (nothing imports it). ``scenario`` + ``schedules`` describe synthetic stories (YAML in
``simulators/``) and ``synthetic`` draws them as a ``stream.Stream``; ``traffic`` + ``expert_outputs`` + ``cache``
turn real labelled data into one, and ``replay`` sends it through the engine (or ``service_client`` over HTTP).
``runner`` drives the learners over a stream exactly as the engine would; ``oracles`` and ``metrics`` measure;
``report`` and ``plots`` write; ``simulation`` and ``replay_run`` tie each path together for ``cli`` and ``results``
(the results page). ``demo`` is the embedded demo of ``aegis-online demo``.
"""
