"""Run a Python module as the hub's managed service, and stop it when the hub is gone.

``python -m hub_config.with_parent jupyterhub_idle_culler --timeout=3600`` runs the module
as ``python -m jupyterhub_idle_culler --timeout=3600`` would, and ends it (SIGTERM to itself)
once the process that started it is no longer its parent. The hub starts its services in a
session of their own, so a hub killed with SIGKILL leaves them running: a lingering culler
would keep acting with a token of a hub that is gone, next to the restarted hub's own.
The quota service watches its parent the same way (``QuotaService.serve``).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

CHECK_EVERY_SECONDS = 1.0


def watch_parent(parent: int, check_every: float = CHECK_EVERY_SECONDS) -> None:
    while os.getppid() == parent:
        time.sleep(check_every)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m hub_config.with_parent MODULE [ARGS...]")
    module = sys.argv[1]
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
