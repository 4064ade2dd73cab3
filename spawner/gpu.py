"""GPU vendors, device inventory and exclusive allocation.

Detection asks the vendors' own tools (``nvidia-smi``; ``amd-smi``, else ``rocm-smi``).
On a machine with neither, a declared inventory of *simulated* devices stands in, and
everything that shows a device says that it is simulated.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Vendor(enum.StrEnum):
    NVIDIA = "nvidia"
    AMD = "amd"

    @property
    def stack(self) -> str:
        return "CUDA" if self is Vendor.NVIDIA else "ROCm"

    @property
    def label(self) -> str:
        return "NVIDIA" if self is Vendor.NVIDIA else "AMD"

    @property
    def visible_devices_env(self) -> tuple[str, ...]:
        """Environment variables that restrict a process to some of this vendor's GPUs."""
        if self is Vendor.NVIDIA:
            return ("CUDA_VISIBLE_DEVICES",)
        return ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


@dataclass(frozen=True)
class Device:
    vendor: Vendor
    index: int
    name: str
    uuid: str = ""
    simulated: bool = False

    @property
    def key(self) -> str:
        return f"{self.vendor.value}:{self.index}"

    def describe(self) -> str:
        tag = " (simulated)" if self.simulated else ""
        return f"{self.vendor.label} #{self.index} {self.name}{tag}"


def parse_nvidia_smi(output: str) -> list[Device]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader``."""
    devices = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        devices.append(Device(Vendor.NVIDIA, int(parts[0]), parts[2], uuid=parts[1]))
    return devices


def parse_amd_smi(output: str) -> list[Device]:
    """Parse ``amd-smi static --asic --json`` (a list, or ``{"gpu_data": [...]}`` in ROCm 6.4+)."""
    data = json.loads(output)
    if isinstance(data, dict):
        data = data.get("gpu_data", [])
    devices = []
    for entry in data:
        asic = entry.get("asic", {})
        devices.append(
            Device(
                Vendor.AMD,
                int(entry["gpu"]),
                str(asic.get("market_name") or "AMD GPU"),
                uuid=str(asic.get("asic_serial", "")),
            )
        )
    return devices


def parse_rocm_smi(output: str) -> list[Device]:
    """Parse ``rocm-smi --showproductname --json``: ``{"card0": {"Card Series": ...}}``."""
    data = json.loads(output)
    devices = []
    for card, fields in data.items():
        if not card.startswith("card") or not card[4:].isdigit():
            continue
        name = fields.get("Card Series") or fields.get("Card series") or "AMD GPU"
        devices.append(Device(Vendor.AMD, int(card[4:]), str(name)))
    return sorted(devices, key=lambda d: d.index)


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("GPU detection: %s failed: %s", argv[0], e)
        return None


def detect_devices(run: Callable[[list[str]], str | None] = _run) -> list[Device]:
    """The real GPUs of this machine, of both vendors (empty when there are none)."""
    devices: list[Device] = []
    out = run(["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"])
    if out:
        devices += parse_nvidia_smi(out)
    out = run(["amd-smi", "static", "--asic", "--json"])
    if out:
        devices += parse_amd_smi(out)
    else:
        out = run(["rocm-smi", "--showproductname", "--json"])
        if out:
            devices += parse_rocm_smi(out)
    return devices


def simulated_devices(counts: dict[str, int]) -> list[Device]:
    devices = []
    for vendor_name, count in counts.items():
        vendor = Vendor(vendor_name)
        name = "Simulated H100" if vendor is Vendor.NVIDIA else "Simulated MI300X"
        devices += [Device(vendor, i, name, simulated=True) for i in range(count)]
    return devices


class NotEnoughDevices(Exception):
    def __init__(self, vendor: Vendor, wanted: int, free: int):
        self.vendor, self.wanted, self.free = vendor, wanted, free
        super().__init__(f"{wanted} {vendor.label} GPU(s) wanted, {free} free")


@dataclass
class DeviceAllocator:
    """Gives each server its own devices: never one device to two servers at once."""

    devices: list[Device]
    _owner_of: dict[str, str] = field(default_factory=dict)  # device key -> owner

    def count(self, vendor: Vendor) -> int:
        return sum(1 for d in self.devices if d.vendor is vendor)

    def free(self, vendor: Vendor) -> list[Device]:
        return [d for d in self.devices if d.vendor is vendor and d.key not in self._owner_of]

    def held_by(self, owner: str) -> list[Device]:
        return [d for d in self.devices if self._owner_of.get(d.key) == owner]

    def claim(self, owner: str, vendor: Vendor, count: int) -> list[Device]:
        if self.held_by(owner):
            raise ValueError(f"{owner} already holds devices")
        free = self.free(vendor)
        if len(free) < count:
            raise NotEnoughDevices(vendor, count, len(free))
        chosen = free[:count]
        for device in chosen:
            self._owner_of[device.key] = owner
        return chosen

    def restore(self, owner: str, keys: Iterable[str]) -> list[Device]:
        """Re-claim the devices of a server that survived a hub restart."""
        by_key = {d.key: d for d in self.devices}
        restored = []
        for key in keys:
            holder = self._owner_of.get(key)
            if key in by_key and holder in (None, owner):
                self._owner_of[key] = owner
                restored.append(by_key[key])
            else:
                log.warning("GPU %s of %s cannot be restored (held by %s)", key, owner, holder)
        return restored

    def release(self, owner: str) -> list[Device]:
        released = self.held_by(owner)
        for device in released:
            del self._owner_of[device.key]
        return released


def visible_devices_environment(vendor: Vendor, devices: list[Device]) -> dict[str, str]:
    """Environment that shows a process exactly ``devices`` and none of the other vendor's."""
    indices = ",".join(str(d.index) for d in devices)
    env = {name: indices for name in vendor.visible_devices_env}
    other = Vendor.AMD if vendor is Vendor.NVIDIA else Vendor.NVIDIA
    # -1 is an index no runtime accepts, so the other vendor's runtime sees no device
    env.update({name: "-1" for name in other.visible_devices_env})
    return env
