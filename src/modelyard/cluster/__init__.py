"""Past one machine: the same planner over every device of a Ray cluster (docs/cluster.md).

With ``cluster: {engine: ray, address: ...}`` in the config (or ``--ray-address``), the
composition root (``Server.from_config``) and ``modelyard plan`` join the cluster and:

- ``nodes``: probe every alive node once (a Ray task pinned to it) for its GPUs and host memory;
- ``inventory``: turn the config's ``devices:`` into ``Device`` values on those nodes (each
  device's ``node`` set; ``devices: auto`` names them ``<node>/gpuN``);
- ``launcher``: ``RayLauncher``, the ``WorkerLauncher`` (``modelyard.workers.launcher``) whose
  workers run on their device's node, started by a Ray actor pinned there, speaking the same
  frame protocol over TCP;
- ``watch``: notice a node lost or back, and have the controller re-plan the lost devices'
  models onto the devices left.

Import rule: nothing here is imported unless a cluster is configured, and this ``__init__``
imports nothing from its modules, so importing ``modelyard.cluster`` never imports ``ray``.
``ray`` itself is imported only through ``modelyard.cluster.connect.import_ray``, which says
what to install when it is missing.
"""
