"""Per-device worker processes: one per device of the plan, each pinned to its device before any
ML framework is imported, supervised and restarted by the front end.

``protocol`` (typed messages and framing), ``worker`` (the child's main), ``client`` (the front
end's proxy of one worker process), ``supervisor`` (restarts, reloads, give-ups), ``loader``
(``WorkerLoader``, the controller's ``Loader``), ``progress`` (load progress per device).
"""
