"""What every GPU spawner flavour shares: the form, the checks, devices and metering.

A flavour mixes ``GPUSpawnerMixin`` in front of a JupyterHub spawner class and, where it
places devices itself, overrides ``claim_devices``/``release_devices``. The sequence of a
start is: ask the quota service what the person may do → check the user options →
claim devices → prepare the server (``prepare_server``: what it really gets is what is
metered) → open a metered session → start the server. Any refusal raises a
``SpawnException`` before anything runs or is charged.
"""

from __future__ import annotations

import asyncio
import html
from typing import NoReturn

from tornado import web
from tornado.ioloop import IOLoop
from traitlets import Dict, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from quota_service.client import QuotaRefusal, QuotaServiceClient, QuotaServiceUnavailable

from .gpu import Device, NotEnoughDevices, Vendor
from .options import GPURequest, InvalidOptions, options_from_form
from .points import burn_rate_points_per_hour

try:  # JupyterHub >= 6
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub 5.x
    SpawnException = None

UNAVAILABLE = (
    "配額服務暫時無法使用，伺服器未啟動。 / The quota service is unavailable, so no server was "
    "started (nothing runs unmetered); please try again shortly."
)


# refusal reports in flight: a reference keeps each task alive until it is done
_REPORTS: set[asyncio.Future] = set()


class GPUSpawnerMixin(LoggingConfigurable):
    """GPU vendor and count, device claims and points metering for a JupyterHub spawner."""

    images = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={
            "nvidia": "ghcr.io/aipower-hub/cuda-notebook:latest",
            "amd": "ghcr.io/aipower-hub/rocm-notebook:latest",
        },
        help="""Notebook image per vendor, e.g. {"nvidia": "registry/cuda-notebook:2026.11",
        "amd": "registry/rocm-notebook:2026.11"}. The local flavour records it only.""",
    ).tag(config=True)

    close_retries = Integer(
        3,
        help="""Attempts to report a stop to the quota service, e.g. 3; after that the
        service's reconciliation with the hub's server list closes the session.""",
    ).tag(config=True)

    session_id: int | None = None
    gpu_request: GPURequest | None = None
    devices: list[Device] = []

    @property
    def quota(self):
        return QuotaServiceClient.instance(parent=self).client()

    # ---- the spawn form and user options -------------------------------------------

    async def _options_form(self, spawner) -> str:
        try:
            access = await self.quota.access(self.user.name)
        except (QuotaServiceUnavailable, QuotaRefusal):
            return f'<p class="alert alert-danger">{html.escape(UNAVAILABLE)}</p>'
        project = access.get("project") or {}
        limit = int(project.get("max_gpus_per_server") or 0)
        vendors = []
        for vendor in Vendor:
            availability = self.device_availability(vendor)
            shown = ""
            if availability is not None:
                free, total, simulated = availability
                tag = " · 模擬 simulated" if simulated else ""
                shown = f" — 可用 free {free}/{total}{tag}"
            checked = " checked" if vendor is Vendor.NVIDIA else ""
            vendors.append(
                f'<div class="form-check"><input class="form-check-input" type="radio" '
                f'name="gpu_vendor" id="gpu-vendor-{vendor.value}" value="{vendor.value}"{checked}>'
                f'<label class="form-check-label" for="gpu-vendor-{vendor.value}">'
                f"{vendor.label} ({vendor.stack} 映像 image){shown}</label></div>"
            )
        counts = "".join(f'<option value="{n}">{n}</option>' for n in range(1, limit + 1))
        name = html.escape(str(project.get("name", "")))
        balance = html.escape(str(project.get("balance_points", "")))
        return (
            f"<p>計畫 Project: <strong>{name}</strong> · 剩餘點數 Balance: <strong>{balance}</strong> "
            f"· 每顆 GPU 每小時 {burn_rate_points_per_hour(1)} 點 / {burn_rate_points_per_hour(1)} points "
            "per GPU-hour</p>"
            f"<fieldset><legend>GPU 廠牌 / Vendor</legend>{''.join(vendors)}</fieldset>"
            f'<label for="gpu-count">GPU 數量 / GPUs (1–{limit})</label>'
            f'<select class="form-select" name="gpu_count" id="gpu-count">{counts}</select>'
        )

    @default("options_form")
    def _default_options_form(self):
        return self._options_form

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # the options are checked in start(), against the project's limit that only the
        # quota service knows at that moment; JupyterHub need not apply them itself
        return lambda spawner, user_options: None

    def options_from_form(self, formdata):
        return options_from_form(formdata)

    def device_availability(self, vendor: Vendor) -> tuple[int, int, bool] | None:
        """(free, total, simulated) for the form; None where the flavour does not place
        devices itself (on Kubernetes the device plugin does), so the form shows no count."""
        return None

    # ---- refusals ------------------------------------------------------------------

    def refuse(
        self, message: str, *, reason: str, status_code: int = 403, report: bool = True
    ) -> NoReturn:
        """Refuse a spawn without counting it as a hub failure. ``report``: tell the quota
        service (metrics, audit trail) — not for refusals that came from it, or when it is
        unreachable."""
        self.log.info("Refusing %s's server (%s): %s", self.user.name, reason, message)
        if report:
            task = asyncio.ensure_future(self._report_refusal(reason))
            _REPORTS.add(task)
            task.add_done_callback(_REPORTS.discard)
        if SpawnException is not None:
            raise SpawnException(message, reason=reason, status_code=status_code)
        self._forgive_refusal_on_jupyterhub5()
        raise web.HTTPError(status_code, message)

    async def _report_refusal(self, reason: str) -> None:
        try:
            await self.quota.report_refusal(
                username=self.user.name, server_name=self.name, reason=reason
            )
        except (QuotaServiceUnavailable, QuotaRefusal) as e:
            self.log.warning("Refusal of %s's server not reported: %s", self.user.name, e)

    def _forgive_refusal_on_jupyterhub5(self):
        # JupyterHub 5 counts every failed spawn toward consecutive_failure_limit and exits
        # at the limit. A refusal is policy, not a failure: lift the limit while the hub
        # counts this one, then take it back off the count.
        limit = self.consecutive_failure_limit
        self.consecutive_failure_limit = 0
        settings = self.user.settings

        def forgive():
            settings["failure_count"] = max(0, settings.get("failure_count", 0) - 1)
            self.consecutive_failure_limit = limit

        IOLoop.current().call_later(1, forgive)

    # ---- devices (flavours override) -------------------------------------------------

    def claim_devices(self, request: GPURequest) -> list[Device]:
        return []

    def release_devices(self) -> None:
        return None

    def restore_devices(self, keys: list[str]) -> list[Device]:
        return []

    async def prepare_server(self, request: GPURequest) -> GPURequest:
        """Set the server up for ``request`` before its session opens, and return what it
        will really get: that is what gets metered. Flavours that build the server from a
        manifest (Kubernetes) override this and may refuse through ``refuse()``."""
        return request

    # ---- start and stop --------------------------------------------------------------

    async def start(self):
        try:
            access = await self.quota.access(self.user.name)
        except (QuotaServiceUnavailable, QuotaRefusal) as e:
            self.log.warning("Quota service unavailable for %s's spawn: %s", self.user.name, e)
            self.refuse(UNAVAILABLE, reason="quota-unavailable", status_code=503, report=False)
        if not access.get("may_spawn"):
            refusal = access.get("refusal") or {}
            self.refuse(
                f"{refusal.get('zh', '')} / {refusal.get('en', '')}",
                reason=refusal.get("code", "no-access"),
            )
        limit = int(access["project"]["max_gpus_per_server"])
        try:
            request = GPURequest.from_user_options(self.user_options or {}, limit)
        except InvalidOptions as e:
            self.refuse(str(e), reason=e.reason, status_code=400)
        try:
            devices = self.claim_devices(request)
        except NotEnoughDevices as e:
            self.refuse(
                f"目前可用的 {e.vendor.label} GPU 只有 {e.free} 顆 / only {e.free} {e.vendor.label} GPU(s) "
                f"are free, {e.wanted} requested",
                reason="gpus-busy",
                status_code=409,
            )
        try:
            request = await self.prepare_server(request)
        except BaseException:
            self.release_devices()
            raise
        try:
            session = await self.quota.open_session(
                username=self.user.name,
                server_name=self.name,
                gpu_vendor=request.vendor.value,
                gpu_count=request.count,
                devices=[d.key for d in devices],
                simulated=any(d.simulated for d in devices),
            )
        except QuotaRefusal as e:
            self.release_devices()
            self.refuse(e.message, reason=e.code, status_code=403, report=False)
        except QuotaServiceUnavailable:
            self.release_devices()
            self.refuse(UNAVAILABLE, reason="quota-unavailable", status_code=503, report=False)
        self.session_id = session["session_id"]
        self.gpu_request = request
        self.devices = devices
        self.log.info(
            "Starting %s's server %r with %d %s GPU(s) [%s], metered as session %s",
            self.user.name,
            self.name,
            request.count,
            request.vendor.label,
            ", ".join(d.describe() for d in devices) or "devices placed by the cluster",
            self.session_id,
        )
        try:
            return await super().start()
        except Exception:
            await self._close_session(reason="start failed", void=True)
            raise

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            await self._close_session(reason="")

    async def poll(self):
        status = await super().poll()
        if status is not None and self.session_id is not None:
            # the server ended on its own (crash, exit): JupyterHub will not call stop()
            await self._close_session(reason="server exited")
        return status

    async def _close_session(self, *, reason: str, void: bool = False):
        session_id, self.session_id = self.session_id, None
        self.release_devices()
        self.devices = []
        if session_id is None:
            return
        for attempt in range(1, self.close_retries + 1):
            try:
                closed = await self.quota.close_session(session_id, reason=reason, void=void)
                self.log.info(
                    "Metering of %s's server %r ended: session %s, %s s charged",
                    self.user.name,
                    self.name,
                    session_id,
                    closed.get("charged_seconds"),
                )
                return
            except (QuotaServiceUnavailable, QuotaRefusal) as e:
                self.log.warning("Closing session %s failed (try %d): %s", session_id, attempt, e)
                if attempt < self.close_retries:
                    await asyncio.sleep(min(2**attempt, 10))
        # the quota service's next pass finds the server gone from the hub and closes the
        # session where it last saw it running
        self.log.error("Session %s left open: the quota service will settle it", session_id)

    # ---- state across hub restarts -----------------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self.session_id is not None:
            state["aipower"] = {
                "session_id": self.session_id,
                "devices": [d.key for d in self.devices],
                "gpu": self.gpu_request.as_user_options() if self.gpu_request else None,
            }
        return state

    def load_state(self, state):
        super().load_state(state)
        saved = state.get("aipower")
        if saved:
            self.session_id = saved["session_id"]
            self.devices = self.restore_devices(saved.get("devices", []))
            if saved.get("gpu"):
                self.gpu_request = GPURequest.from_user_options(
                    saved["gpu"], saved["gpu"]["gpu_count"]
                )

    # clear_state() is left alone on purpose: JupyterHub's local spawner calls it from
    # poll() while stopping, before stop() returns; the session must outlive that, and
    # _close_session() is what ends it.
