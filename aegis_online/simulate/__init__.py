"""Show, with numbers and plots, that the ensemble adapts: drift scenarios, traffic replay, oracles and reports.

The outer ring of the package (nothing imports it). ``scenario`` + ``schedules`` describe synthetic stories (YAML in
``simulators/``) and ``synthetic`` draws them as a ``stream.Stream``; ``traffic`` + ``expert_outputs`` + ``cache``
turn real labelled data into one, and ``replay`` sends it through the engine (or, through ``service_client``, the
project's HTTP client). ``runner`` drives the learners over a stream with the engine's own update code;
``oracles`` and ``predictor_metrics`` measure; ``report`` and ``plots`` write; ``simulation`` and ``replay_run``
tie each path together for ``cli`` and ``results`` (the results page). ``evaluation`` (+ ``evaluation_report``) is
the offline ``eval``: each expert and the ensemble per data set, no learning; ``data_options`` parses the data options
``replay`` and ``eval`` share.
"""
