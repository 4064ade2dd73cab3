"""Inside JupyterLab: the project's balance and burn rate, without leaving the notebook.

Two small parts run in the single-user server (never in the hub):

- a jupyter_server extension (:mod:`spawner.notebook.usage`) that serves
  ``GET <base_url>aipower/usage`` to the server's owner. It asks the quota service's
  ``GET /api/v1/projects`` with the server's own ``JUPYTERHUB_API_TOKEN`` (which holds
  ``access:services!service=quota``, see :func:`server_token_scopes`) and answers
  ``{project, balance_points, burn_rate_points_per_hour, window_end,
  hours_left_at_current_rate}``;
- a prebuilt JupyterLab 4 extension (``share/jupyter/labextensions/aipower-hub-usage``,
  TypeScript source in ``labextension/``, rebuilt with ``make labextension``): the status-bar
  item "點數 Points 996.667 · 4/h", refreshed every 60 s from that endpoint.

How a spawner flavour turns them on: put :func:`notebook_environment` into the server's
environment. It adds this package's ``etc/jupyter`` to ``JUPYTER_CONFIG_PATH`` (a
``jupyter_server_config.d`` file enables the server extension), its ``share/jupyter`` to
``JUPYTER_PATH`` (JupyterLab finds the prebuilt extension there) and sets
``AIPOWER_QUOTA_URL``. The local flavour does it in ``LocalGPUSpawner.get_env``. The
Kubernetes flavour and its notebook images can reuse the same helper: install this package
in the image and pass ``package_dir`` = where it lies *in the image*, since the hub's own
path means nothing inside a pod, and a quota URL that pods can reach.

This package imports nothing from the hub or the quota service, so that a notebook image can
ship it with only jupyter_server and JupyterLab.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LABEXTENSION_NAME = "aipower-hub-usage"
QUOTA_URL_ENV = "AIPOWER_QUOTA_URL"


def _jupyter_server_extension_points():
    return [{"module": "spawner.notebook"}]


def _load_jupyter_server_extension(serverapp):
    from .usage import setup_handlers

    setup_handlers(serverapp.web_app)
    serverapp.log.info("aipower-hub: serving the project's balance at aipower/usage")


def _prepend(path: str, current: str | None) -> str:
    return os.pathsep.join([path, current]) if current else path


def notebook_environment(
    quota_url: str,
    *,
    package_dir: str | os.PathLike | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment variables that turn on the balance in JupyterLab for one server.

    ``quota_url``: the quota service's prefix as the server can reach it, e.g.
    ``http://127.0.0.1:10101/services/quota``. ``package_dir``: this package's folder where
    the server runs (default: here, right when hub and servers share an installation).
    ``base``: the environment being built, whose ``JUPYTER_PATH``/``JUPYTER_CONFIG_PATH`` are
    kept after ours.
    """
    folder = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    base = base or {}
    return {
        "JUPYTER_PATH": _prepend(str(folder / "share" / "jupyter"), base.get("JUPYTER_PATH")),
        "JUPYTER_CONFIG_PATH": _prepend(
            str(folder / "etc" / "jupyter"), base.get("JUPYTER_CONFIG_PATH")
        ),
        QUOTA_URL_ENV: quota_url.rstrip("/"),
    }


def server_token_scopes(quota_service: str = "quota") -> list[str]:
    """Scopes for ``Spawner.server_token_scopes``: JupyterHub's default (the ``server`` role:
    ``users:activity!user``, ``access:servers!server`` on JupyterHub 5.5 and 6.1) plus
    ``access:services!service=<quota_service>``, so that the server's own token may read its
    owner's projects from the quota service, and nothing more."""
    from jupyterhub.roles import get_default_roles

    server_role = next(role for role in get_default_roles() if role["name"] == "server")
    return sorted({*server_role["scopes"], f"access:services!service={quota_service}"})
