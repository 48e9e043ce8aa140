"""Per-device worker processes: one per device of the plan, each pinned to its device before any
ML framework is imported, supervised and restarted by the front end.

``protocol`` (typed messages and framing), ``worker`` (the child's main), ``launcher`` (the
seam where workers start: ``WorkerLauncher``, ``WorkerHandle``, ``Clock``), ``client`` (the local
launcher: a child process per worker, and the front end's proxy of it), ``supervisor``
(restarts, reloads, give-ups), ``restart`` (its policy and states), ``blame`` (which model a
death is charged to), ``heartbeat`` (stuck or busy), ``loader`` (``WorkerLoader``, the
controller's ``Loader``), ``progress`` (load progress per device).
"""
