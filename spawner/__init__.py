"""GPU spawners for aipower-hub.

The vendor, device and points logic lives in plain modules (``gpu``, ``options``,
``points``) that every flavour shares; ``local`` holds the local-process flavour.
Import the flavours from their modules: this package imports nothing on purpose, so
that the quota service can use ``spawner.points`` without loading JupyterHub.
"""
