"""The local-process flavour: one machine, its own GPUs (or simulated ones)."""

from __future__ import annotations

from typing import ClassVar

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import Bool, Dict, Integer, Unicode

from quota_service.client import QuotaServiceClient

from .base import GPUSpawnerMixin
from .gpu import (
    Device,
    DeviceAllocator,
    Vendor,
    detect_devices,
    simulated_devices,
    visible_devices_environment,
)
from .notebook import QUOTA_URL_ENV, notebook_environment
from .options import GPURequest


class LocalGPUSpawner(GPUSpawnerMixin, SimpleLocalProcessSpawner):
    """Runs ``jupyterhub-singleuser`` as a local process that sees only its own GPUs."""

    detect_gpus = Bool(
        True,
        help="Look for real GPUs with nvidia-smi, amd-smi or rocm-smi at the first spawn, e.g. True.",
    ).tag(config=True)

    simulated_inventory = Dict(
        key_trait=Unicode(),
        value_trait=Integer(),
        default_value={"nvidia": 4, "amd": 4},
        help="""Simulated devices per vendor when the machine has no real GPU, e.g.
        {"nvidia": 4, "amd": 4}. Every page and log line marks them as simulated.""",
    ).tag(config=True)

    # one inventory per hub process, shared by every user's spawner
    _allocator: ClassVar[DeviceAllocator | None] = None

    @property
    def allocator(self) -> DeviceAllocator:
        cls = type(self)
        if cls._allocator is None:
            devices = detect_devices() if self.detect_gpus else []
            if devices:
                self.log.info("GPUs found: %s", "; ".join(d.describe() for d in devices))
            else:
                devices = simulated_devices(self.simulated_inventory)
                self.log.warning(
                    "No real GPU found: using SIMULATED devices %s",
                    "; ".join(d.describe() for d in devices),
                )
            cls._allocator = DeviceAllocator(devices)
        return cls._allocator

    @property
    def owner_key(self) -> str:
        return f"{self.user.name}/{self.name}"

    def device_availability(self, vendor: Vendor) -> tuple[int, int, bool]:
        allocator = self.allocator
        simulated = any(d.simulated for d in allocator.devices if d.vendor is vendor)
        return len(allocator.free(vendor)), allocator.count(vendor), simulated

    def claim_devices(self, request: GPURequest) -> list[Device]:
        return self.allocator.claim(self.owner_key, request.vendor, request.count)

    def release_devices(self) -> None:
        released = self.allocator.release(self.owner_key)
        if released:
            self.log.info("Released %s", "; ".join(d.describe() for d in released))

    def restore_devices(self, keys: list[str]) -> list[Device]:
        return self.allocator.restore(self.owner_key, keys)

    def get_env(self):
        env = super().get_env()
        if self.gpu_request is not None:
            env.update(visible_devices_environment(self.gpu_request.vendor, self.devices))
            env["AIPOWER_GPU_VENDOR"] = self.gpu_request.vendor.value
            env["AIPOWER_GPU_COUNT"] = str(self.gpu_request.count)
            env["AIPOWER_GPU_SIMULATED"] = "1" if any(d.simulated for d in self.devices) else "0"
            env["AIPOWER_NOTEBOOK_IMAGE"] = self.images.get(self.gpu_request.vendor.value, "")
        # the project's balance in JupyterLab's status bar (spawner/notebook): the server
        # reaches the quota service where the hub does, unless c.Spawner.environment says
        quota_url = env.get(QUOTA_URL_ENV) or QuotaServiceClient.instance(parent=self).url
        env.update(notebook_environment(quota_url, base=env))
        return env
