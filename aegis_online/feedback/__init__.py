"""The feedback path: a bus (Kafka, or an in-process queue) from the feedback API to workers that validate events,
join their logged predictions and apply them to the learner store in batches, exactly once.

Modules: ``records`` (what moves), ``bus`` (interfaces), ``processor`` (validate, join, apply one batch),
``worker`` (the poll-process-commit loop), ``inprocess`` and ``kafka`` (the two buses), ``service`` and ``cli``
(the ``feedback-worker`` command), ``loadgen`` (synthetic traffic), ``failpoints`` (crash points for fault tests).
Kafka and Redis are imported only by the modules that use them.
"""
