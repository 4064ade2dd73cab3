"""GPU detection from the vendors' tools, exclusive allocation, and the visible-devices env.

The vendor tools (nvidia-smi, amd-smi, rocm-smi) cannot run here: this machine has no GPU.
Their outputs were recorded into tests/data/ and are fed to the parsers, and to
``detect_devices`` through its ``run`` parameter, which is the seam for exactly this.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from spawner.gpu import (
    Device,
    DeviceAllocator,
    NotEnoughDevices,
    Vendor,
    detect_devices,
    parse_amd_smi,
    parse_nvidia_smi,
    parse_rocm_smi,
    simulated_devices,
    visible_devices_environment,
)

DATA = Path(__file__).parent / "data"
NVIDIA_8XH100 = (DATA / "nvidia-smi_8xH100.csv").read_text()
AMD_SMI_LIST = (DATA / "amd-smi_static_asic_mi300x_list.json").read_text()
AMD_SMI_GPU_DATA = (DATA / "amd-smi_static_asic_mi300x_gpu_data.json").read_text()
ROCM_SMI = (DATA / "rocm-smi_showproductname_mi300x.json").read_text()

NVIDIA_ARGV = ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"]
AMD_SMI_ARGV = ["amd-smi", "static", "--asic", "--json"]
ROCM_SMI_ARGV = ["rocm-smi", "--showproductname", "--json"]


# --- parsers ------------------------------------------------------------------------------


def test_parse_nvidia_smi_eight_h100():
    devices = parse_nvidia_smi(NVIDIA_8XH100)
    assert [d.index for d in devices] == list(range(8))
    assert {d.name for d in devices} == {"NVIDIA H100 80GB HBM3"}
    assert all(d.vendor is Vendor.NVIDIA and not d.simulated for d in devices)
    assert devices[0].uuid == "GPU-5f3e2a1c-8b7d-4e2f-9a61-0c3d5e7f9b21"
    assert devices[7].uuid == "GPU-4f1e7d03-b8c2-4a5f-9d16-c3a0e8b5d724"
    assert len({d.uuid for d in devices}) == 8
    assert devices[3].key == "nvidia:3"
    assert devices[3].describe() == "NVIDIA #3 NVIDIA H100 80GB HBM3"


def test_parse_nvidia_smi_skips_what_is_not_a_device_line():
    output = (
        "index, uuid, name\n"  # a header, had someone left out noheader
        "\n"
        "No devices were found\n"
        "1, GPU-a1c49d02-3e6b-47f1-b8d5-2f90c1e6a734, NVIDIA H100 80GB HBM3\r\n"
    )
    devices = parse_nvidia_smi(output)
    assert devices == [
        Device(
            Vendor.NVIDIA, 1, "NVIDIA H100 80GB HBM3", "GPU-a1c49d02-3e6b-47f1-b8d5-2f90c1e6a734"
        )
    ]
    assert parse_nvidia_smi("") == []


@pytest.mark.parametrize(
    ("output", "count"), [(AMD_SMI_LIST, 4), (AMD_SMI_GPU_DATA, 2)], ids=["list", "gpu_data"]
)
def test_parse_amd_smi_both_forms(output, count):
    devices = parse_amd_smi(output)
    assert [d.index for d in devices] == list(range(count))
    assert all(d.vendor is Vendor.AMD for d in devices)
    assert {d.name for d in devices} == {"AMD Instinct MI300X"}
    assert devices[0].uuid == "0x8E2C41F09A7D35B6"
    assert devices[1].uuid == "0x3B7F90D2C15E84A0"
    assert devices[1].key == "amd:1"
    assert devices[1].describe() == "AMD #1 AMD Instinct MI300X"


def test_parse_amd_smi_without_a_market_name_or_serial():
    output = json.dumps([{"gpu": 5, "asic": {"market_name": ""}}, {"gpu": 6}])
    devices = parse_amd_smi(output)
    assert [(d.index, d.name, d.uuid) for d in devices] == [(5, "AMD GPU", ""), (6, "AMD GPU", "")]
    assert parse_amd_smi('{"gpu_data": []}') == []
    assert parse_amd_smi("[]") == []


def test_parse_rocm_smi_eight_cards_and_skips_the_system_entry():
    devices = parse_rocm_smi(ROCM_SMI)
    assert [d.index for d in devices] == list(range(8))
    assert {d.name for d in devices} == {"AMD Instinct MI300X"}
    assert all(d.vendor is Vendor.AMD and d.uuid == "" for d in devices)


def test_parse_rocm_smi_older_key_spelling_and_numeric_order():
    # older rocm-smi spelled it "Card series"; card10 must sort after card2, not before
    output = json.dumps(
        {
            "card10": {"Card series": "AMD Instinct MI250X"},
            "card2": {"Card Series": "AMD Instinct MI300X"},
            "card3": {"Card Model": "0x74a1"},
            "cardX": {"Card Series": "not a card"},
            "system": {"Driver version": "6.8.5"},
        }
    )
    devices = parse_rocm_smi(output)
    assert [(d.index, d.name) for d in devices] == [
        (2, "AMD Instinct MI300X"),
        (3, "AMD GPU"),
        (10, "AMD Instinct MI250X"),
    ]


# --- detection with recorded outputs ------------------------------------------------------


class Recorded:
    """Stands in for the tools: answers each command with its recorded output (None: absent)."""

    def __init__(self, outputs: dict[str, str | None]):
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str | None:
        self.calls.append(argv)
        return self.outputs.get(argv[0])


def test_detect_nvidia_only():
    run = Recorded({"nvidia-smi": NVIDIA_8XH100})
    devices = detect_devices(run)
    assert len(devices) == 8 and all(d.vendor is Vendor.NVIDIA for d in devices)
    # the commands asked are exactly those whose outputs were recorded
    assert run.calls == [NVIDIA_ARGV, AMD_SMI_ARGV, ROCM_SMI_ARGV]


def test_detect_amd_with_amd_smi_does_not_ask_rocm_smi():
    run = Recorded({"amd-smi": AMD_SMI_GPU_DATA, "rocm-smi": ROCM_SMI})
    devices = detect_devices(run)
    assert [d.key for d in devices] == ["amd:0", "amd:1"]
    assert run.calls == [NVIDIA_ARGV, AMD_SMI_ARGV]


def test_detect_amd_falls_back_to_rocm_smi():
    for amd_smi_answer in (None, ""):
        run = Recorded({"amd-smi": amd_smi_answer, "rocm-smi": ROCM_SMI})
        devices = detect_devices(run)
        assert [d.key for d in devices] == [f"amd:{i}" for i in range(8)]
        assert run.calls == [NVIDIA_ARGV, AMD_SMI_ARGV, ROCM_SMI_ARGV]


def test_detect_both_vendors_on_one_machine():
    run = Recorded({"nvidia-smi": NVIDIA_8XH100, "amd-smi": AMD_SMI_LIST})
    devices = detect_devices(run)
    assert [d.key for d in devices] == [f"nvidia:{i}" for i in range(8)] + [
        f"amd:{i}" for i in range(4)
    ]
    allocator = DeviceAllocator(devices)
    assert allocator.count(Vendor.NVIDIA) == 8
    assert allocator.count(Vendor.AMD) == 4


def test_detect_nothing_when_no_tool_is_installed():
    assert detect_devices(Recorded({})) == []


# --- simulated devices --------------------------------------------------------------------


def test_simulated_devices_say_so():
    devices = simulated_devices({"nvidia": 2, "amd": 1})
    assert [d.key for d in devices] == ["nvidia:0", "nvidia:1", "amd:0"]
    assert all(d.simulated for d in devices)
    assert devices[0].describe() == "NVIDIA #0 Simulated H100 (simulated)"
    assert devices[2].describe() == "AMD #0 Simulated MI300X (simulated)"
    assert simulated_devices({}) == []
    with pytest.raises(ValueError):
        simulated_devices({"intel": 1})


def test_real_devices_do_not_say_simulated():
    for device in parse_nvidia_smi(NVIDIA_8XH100) + parse_rocm_smi(ROCM_SMI):
        assert "simulated" not in device.describe()


# --- exclusive allocation -----------------------------------------------------------------


@pytest.fixture
def allocator():
    return DeviceAllocator(parse_nvidia_smi(NVIDIA_8XH100) + parse_amd_smi(AMD_SMI_LIST))


def test_claim_gives_distinct_free_devices(allocator):
    alice = allocator.claim("alice", Vendor.NVIDIA, 2)
    bob = allocator.claim("bob", Vendor.NVIDIA, 3)
    assert [d.key for d in alice] == ["nvidia:0", "nvidia:1"]
    assert [d.key for d in bob] == ["nvidia:2", "nvidia:3", "nvidia:4"]
    assert allocator.held_by("alice") == alice
    assert [d.key for d in allocator.free(Vendor.NVIDIA)] == ["nvidia:5", "nvidia:6", "nvidia:7"]
    assert len(allocator.free(Vendor.AMD)) == 4  # the other vendor is untouched


def test_claim_more_than_free_raises_and_takes_nothing(allocator):
    allocator.claim("alice", Vendor.AMD, 3)
    with pytest.raises(NotEnoughDevices) as refused:
        allocator.claim("bob", Vendor.AMD, 2)
    assert (refused.value.vendor, refused.value.wanted, refused.value.free) == (Vendor.AMD, 2, 1)
    assert str(refused.value) == "2 AMD GPU(s) wanted, 1 free"
    assert allocator.held_by("bob") == []
    assert len(allocator.free(Vendor.AMD)) == 1
    with pytest.raises(NotEnoughDevices):
        allocator.claim("carol", Vendor.NVIDIA, 9)


def test_one_owner_cannot_claim_twice(allocator):
    allocator.claim("alice", Vendor.NVIDIA, 1)
    with pytest.raises(ValueError):
        allocator.claim("alice", Vendor.AMD, 1)
    assert [d.key for d in allocator.held_by("alice")] == ["nvidia:0"]


def test_release_then_reclaim(allocator):
    first = allocator.claim("alice", Vendor.NVIDIA, 8)
    with pytest.raises(NotEnoughDevices):
        allocator.claim("bob", Vendor.NVIDIA, 1)
    assert allocator.release("alice") == first
    assert allocator.release("alice") == []  # releasing twice is harmless
    assert allocator.held_by("alice") == []
    bob = allocator.claim("bob", Vendor.NVIDIA, 8)
    assert bob == first
    assert allocator.held_by("bob") == bob


def test_release_frees_only_the_owners_devices(allocator):
    allocator.claim("alice", Vendor.NVIDIA, 2)
    allocator.claim("bob", Vendor.NVIDIA, 2)
    allocator.release("alice")
    assert [d.key for d in allocator.held_by("bob")] == ["nvidia:2", "nvidia:3"]
    carol = allocator.claim("carol", Vendor.NVIDIA, 3)
    assert [d.key for d in carol] == ["nvidia:0", "nvidia:1", "nvidia:4"]


def test_never_one_device_to_two_owners_under_random_claims_and_releases(allocator):
    rng = random.Random(8)
    owners = [f"user{i}" for i in range(10)]
    for _ in range(3000):
        owner = rng.choice(owners)
        if allocator.held_by(owner) and rng.random() < 0.5:
            allocator.release(owner)
        elif not allocator.held_by(owner):
            vendor = rng.choice(list(Vendor))
            wanted = rng.randint(1, 4)
            free_before = len(allocator.free(vendor))
            try:
                got = allocator.claim(owner, vendor, wanted)
            except NotEnoughDevices:
                assert free_before < wanted
            else:
                assert len(got) == wanted and all(d.vendor is vendor for d in got)
        held = [d.key for o in owners for d in allocator.held_by(o)]
        assert len(held) == len(set(held))  # no device has two owners
        free = [d.key for v in Vendor for d in allocator.free(v)]
        assert sorted(held + free) == sorted(d.key for d in allocator.devices)


def test_restore_after_a_restart(allocator):
    # the hub restarted: a new allocator, and the surviving servers say what they held
    restored = allocator.restore("alice", ["nvidia:4", "nvidia:5"])
    assert [d.key for d in restored] == ["nvidia:4", "nvidia:5"]
    assert [d.key for d in allocator.held_by("alice")] == ["nvidia:4", "nvidia:5"]
    # a new claim does not get them
    bob = allocator.claim("bob", Vendor.NVIDIA, 6)
    assert {d.key for d in bob}.isdisjoint({"nvidia:4", "nvidia:5"})
    # restoring what one already holds is idempotent
    assert [d.key for d in allocator.restore("alice", ["nvidia:4"])] == ["nvidia:4"]


def test_restore_refuses_a_device_held_by_another_owner_and_unknown_keys(allocator):
    allocator.claim("bob", Vendor.AMD, 2)  # amd:0, amd:1
    restored = allocator.restore("alice", ["amd:1", "amd:2", "amd:9", "intel:0"])
    assert [d.key for d in restored] == ["amd:2"]
    assert [d.key for d in allocator.held_by("bob")] == ["amd:0", "amd:1"]
    assert [d.key for d in allocator.held_by("alice")] == ["amd:2"]


# --- the environment that hides the other devices -----------------------------------------


def test_nvidia_environment_hides_amd():
    devices = parse_nvidia_smi(NVIDIA_8XH100)[:2]
    assert visible_devices_environment(Vendor.NVIDIA, devices) == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "ROCR_VISIBLE_DEVICES": "-1",
        "HIP_VISIBLE_DEVICES": "-1",
    }


def test_amd_environment_hides_nvidia():
    devices = parse_rocm_smi(ROCM_SMI)[5:8]
    assert visible_devices_environment(Vendor.AMD, devices) == {
        "ROCR_VISIBLE_DEVICES": "5,6,7",
        "HIP_VISIBLE_DEVICES": "5,6,7",
        "CUDA_VISIBLE_DEVICES": "-1",
    }


def test_environment_from_an_allocation_names_the_claimed_indices(allocator):
    allocator.claim("alice", Vendor.NVIDIA, 3)
    bob = allocator.claim("bob", Vendor.NVIDIA, 2)
    env = visible_devices_environment(Vendor.NVIDIA, bob)
    assert env["CUDA_VISIBLE_DEVICES"] == "3,4"
