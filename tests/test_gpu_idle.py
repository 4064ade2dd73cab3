"""GPU-utilisation culling: parsers, sources, the mapping to servers, the rule and the job.

No GPU on these machines: the vendor tools' and exporters' outputs are recorded samples in
tests/data, in the exact formats the tools print (nvidia-smi's CSV, amd-smi's and
rocm-smi's JSON, the DCGM exporter's and AMD's device metrics exporter's text format).
Everything that reads them is real: the local source runs a real command (``cat`` of a
recorded sample, standing in for the vendor tool); the Prometheus source asks a real
Prometheus server (Debian's ``prometheus``) that scrapes the recorded exporter pages, and
tests/data/prometheus_query_*.json are its answers, recorded. The hub's stop is a recorder
here; tests/test_gpu_idle_e2e.py stops a real server through the real hub.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from sqlalchemy import func, select

from quota_service import db as database
from quota_service import gpu_idle, ledger, metering
from quota_service.gpu_idle import (
    GPUIdleCuller,
    GPUSample,
    IdleRule,
    IdleState,
    IdleTrack,
    LocalToolSource,
    PrometheusSource,
    Server,
    TransitionRefused,
    decide,
    gpus_of,
    kube_pod_name,
)
from quota_service.metering import ServerRequest
from quota_service.models import (
    Account,
    AuditEvent,
    Company,
    LedgerEntry,
    Membership,
    Notice,
    Project,
    ProjectStatus,
    UsageSession,
)
from quota_service.timewindow import window_for_notice
from tests.conftest import at
from tests.stack import free_port

DATA = Path(__file__).parent / "data"
T0 = at("2026-12-01 10:00:00")
RULE = IdleRule(
    threshold_percent=5,
    warn_after=timedelta(minutes=30),
    stop_after=timedelta(minutes=60),
    max_gap=timedelta(minutes=3),
)


def t(minutes: float = 0, seconds: float = 0):
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def read(name: str) -> str:
    return (DATA / name).read_text()


def figures(samples) -> list[tuple]:
    return [(s.index, s.utilization) for s in samples]


# ---- parsers, against the recorded samples ------------------------------------------------


def test_nvidia_smi_utilization_and_memory_of_eight_h100():
    samples = gpu_idle.parse_nvidia_smi_utilization(read("nvidia-smi_utilization_8xH100.csv"))
    assert [(s.index, s.utilization, s.memory_used_mib) for s in samples] == [
        (0, 0.0, 45872),
        (1, 3.0, 45870),
        (2, 97.0, 71234),
        (3, 100.0, 71240),
        (4, 0.0, 0),
        (5, 0.0, 0),
        (6, 12.0, 30211),
        (7, 4.0, 1024),
    ]
    assert samples[2].uuid == "GPU-7b2e8f15-c4d9-4a03-9e72-d615b8a0f3c9"
    assert {s.vendor for s in samples} == {"nvidia"}
    assert samples[0].device_key == "nvidia:0"


def test_a_gpu_that_reports_no_utilization_gets_no_sample():
    # MIG mode: nvidia-smi prints [N/A] for the whole GPU's utilisation
    samples = gpu_idle.parse_nvidia_smi_utilization(read("nvidia-smi_utilization_mig_2xH100.csv"))
    assert [(s.index, s.utilization, s.memory_used_mib) for s in samples] == [(1, 0.0, 0)]


def test_amd_smi_usage_in_both_shapes_and_rocm_smi():
    new = gpu_idle.parse_amd_usage(read("amd-smi_metric_usage_mi300x_gpu_data.json"))
    assert figures(new) == [(0, 0), (1, 2), (2, 100), (3, 98), (4, 0), (5, 0), (6, 7), (7, 3)]
    old = gpu_idle.parse_amd_usage(read("amd-smi_metric_usage_mi300x_list.json"))
    assert figures(old) == [(0, 0), (1, 61)]
    rocm = gpu_idle.parse_amd_usage(read("rocm-smi_showuse_mi300x.json"))
    assert figures(rocm) == figures(new)  # the same moment through the older tool
    assert {s.vendor for s in new + old + rocm} == {"amd"}
    # "GFX Activity" (a cycle counter in the billions) is never taken for a percentage
    assert max(s.utilization for s in rocm) == 100


def test_the_dcgm_exporters_text_gives_each_gpu_its_pod():
    samples = gpu_idle.parse_prometheus_text(
        read("dcgm-exporter_metrics_8xH100.txt"),
        "DCGM_FI_DEV_GPU_UTIL",
        "nvidia",
        gpu_idle.EXPORTER_LABELS["nvidia"],
    )
    assert [(s.index, s.utilization, s.pod, s.namespace) for s in samples] == [
        (0, 0, "jupyter-alice", "aipower"),
        (1, 3, "jupyter-alice", "aipower"),
        (2, 98, "jupyter-bob--train", "aipower"),
        (3, 0, "jupyter-bob--train", "aipower"),
        (4, 0, "jupyter-alice", "staging"),  # another installation's namespace
        (5, 0, "", ""),  # free GPUs: no pod labels
        (6, 0, "", ""),
        (7, 0, "", ""),
    ]
    assert samples[1].uuid == "GPU-a1c49d02-3e6b-47f1-b8d5-2f90c1e6a734"


def test_the_amd_exporters_text_gives_each_gpu_its_pod():
    samples = gpu_idle.parse_prometheus_text(
        read("amd-device-metrics-exporter_metrics_8xMI300X.txt"),
        "gpu_gfx_activity",
        "amd",
        gpu_idle.EXPORTER_LABELS["amd"],
    )
    assert [(s.index, s.utilization, s.pod) for s in samples] == [
        (0, 0, "jupyter-carol"),
        (1, 1, "jupyter-carol"),
        (2, 0, "jupyter-dave--eval"),
        (3, 0, "jupyter-dave--eval"),
        (4, 100, "jupyter-dave--eval"),
        (5, 0, "jupyter-dave--eval"),
        (6, 0, ""),
        (7, 0, ""),
    ]
    assert samples[0].uuid == "ccff74a1-0000-1000-80e0-c6d49f5b0d86"


# what Prometheus answers for the recorded exporter pages in namespace aipower
PROMETHEUS_GPUS = {
    "nvidia": [
        ("jupyter-alice", 0, 0),
        ("jupyter-alice", 1, 3),
        ("jupyter-bob--train", 2, 98),
        ("jupyter-bob--train", 3, 0),
    ],
    "amd": [
        ("jupyter-carol", 0, 0),
        ("jupyter-carol", 1, 1),
        ("jupyter-dave--eval", 2, 0),
        ("jupyter-dave--eval", 3, 0),
        ("jupyter-dave--eval", 4, 100),
        ("jupyter-dave--eval", 5, 0),
    ],
}


def pods(samples, vendor: str) -> list[tuple]:
    return sorted((s.pod, s.index, s.utilization) for s in samples if s.vendor == vendor)


@pytest.mark.parametrize(
    "vendor, recorded",
    [
        ("nvidia", "prometheus_query_dcgm_gpu_util.json"),
        ("amd", "prometheus_query_amd_gfx_activity.json"),
    ],
)
def test_prometheus_query_answers_recorded_from_a_real_prometheus(vendor, recorded):
    labels = gpu_idle.EXPORTER_LABELS[vendor]
    samples = gpu_idle.parse_prometheus_query(read(recorded), vendor, labels)
    assert pods(samples, vendor) == PROMETHEUS_GPUS[vendor]
    refused = '{"status":"error","errorType":"bad_data","error":"parse error"}'
    with pytest.raises(ValueError):
        gpu_idle.parse_prometheus_query(refused, vendor, labels)


# ---- servers and their GPUs ----------------------------------------------------------------


def server(
    devices=(), *, username="alice", server_name="", vendor="nvidia", count=None, session_id=1
) -> Server:
    return Server(
        session_id,
        7,
        "測試計畫",
        username,
        server_name,
        f"{username}@example.tw",
        vendor,
        count or len(devices),
        tuple(devices),
    )


def test_a_local_server_is_matched_by_its_device_indices():
    samples = gpu_idle.parse_nvidia_smi_utilization(read("nvidia-smi_utilization_8xH100.csv"))
    pair = gpus_of(server(["nvidia:1", "nvidia:0"]), samples)
    assert figures(pair) == [(1, 3), (0, 0)]
    # a device without a sample (or another vendor's) leaves the server without data
    mig = gpu_idle.parse_nvidia_smi_utilization(read("nvidia-smi_utilization_mig_2xH100.csv"))
    assert gpus_of(server(["nvidia:0", "nvidia:1"]), mig) is None
    assert gpus_of(server(["amd:0"], vendor="amd"), samples) is None


def test_a_kubernetes_server_is_matched_by_its_pod_with_all_its_gpus():
    samples = [
        s
        for s in gpu_idle.parse_prometheus_text(
            read("dcgm-exporter_metrics_8xH100.txt"),
            "DCGM_FI_DEV_GPU_UTIL",
            "nvidia",
            gpu_idle.EXPORTER_LABELS["nvidia"],
        )
        if s.namespace == "aipower"  # what the Prometheus source keeps
    ]
    assert figures(gpus_of(server(count=2), samples)) == [(0, 0), (1, 3)]
    assert figures(gpus_of(server(username="bob", server_name="train", count=2), samples)) == [
        (2, 98),
        (3, 0),
    ]
    # a pod showing fewer GPUs than the session meters is not judged
    assert gpus_of(server(count=3), samples) is None
    assert gpus_of(server(username="nobody", count=1), samples) is None


@pytest.mark.parametrize(
    "username, server_name",
    [
        ("alice", ""),
        ("bob", "train"),
        ("王小明", ""),
        ("Alice.Chen@corp.tw", "實驗-1"),
        ("a" * 40, "b" * 20),
        ("x-", "--y"),
    ],
)
def test_pod_names_are_the_ones_kubespawner_gives(monkeypatch, username, server_name):
    import kubespawner.spawner as ks
    from kubespawner import KubeSpawner

    monkeypatch.setattr(ks, "load_config", lambda **kwargs: None)
    monkeypatch.setattr(ks, "shared_client", lambda *args, **kwargs: None)
    spawner = KubeSpawner(
        _mock=True,
        user=SimpleNamespace(name=username, id=1, url="/", settings={}),
        orm_spawner=SimpleNamespace(name=server_name, server=None),
        namespace="aipower",
    )
    assert kube_pod_name(username, server_name) == spawner.pod_name
    spawner.pod_name_template = "gpu-{username}-{servername}"
    expected = spawner._expand_user_properties(spawner.pod_name_template)
    assert kube_pod_name(username, server_name, "gpu-{username}-{servername}") == expected


# ---- the rule, on a controlled clock -------------------------------------------------------


def gpus(*utilizations: float) -> list[GPUSample]:
    return [GPUSample("nvidia", u, i) for i, u in enumerate(utilizations)]


def run(observations, rule=RULE) -> IdleTrack:
    """The track after observations [(minutes, seconds, gpus or None)]."""
    track = IdleTrack()
    for minutes, seconds, seen in observations:
        track = decide(track, seen, now=t(minutes, seconds), rule=rule)
    return track


def every_minute(until_minutes: int, seen, start: int = 0):
    return [(m, 0, seen) for m in range(start, until_minutes + 1)]


def test_warned_at_30_minutes_not_at_29_59():
    early = run(every_minute(29, gpus(0, 3)) + [(29, 59, gpus(0, 3))])
    assert (early.state, early.idle_since, early.warned_at) == (IdleState.IDLE, t(0), None)
    warned = run(every_minute(30, gpus(0, 3)))
    assert (warned.state, warned.warned_at) == (IdleState.WARNED, t(30))
    assert warned.observations == 31 and warned.peak_percent == 3
    assert warned.stop_due_at(RULE) == t(60)


def test_stopped_at_60_minutes_not_at_59_59():
    before = run(every_minute(59, gpus(4.9)) + [(59, 59, gpus(4.9))])
    assert before.state is IdleState.WARNED
    stopped = run(every_minute(60, gpus(4.9)))
    assert stopped.state is IdleState.STOPPING and stopped.idle_for(t(60)) == timedelta(hours=1)


def test_the_threshold_itself_is_use():
    assert run(every_minute(45, gpus(5))).state is IdleState.IN_USE


def test_a_spike_starts_the_count_over_even_after_the_warning():
    seen = every_minute(40, gpus(0, 0)) + [(41, 0, gpus(0, 37))] + every_minute(71, gpus(0, 0), 42)
    track = run(seen)
    # warned at 30; the spike at 41 resets; idle again from 42, so 29 minutes at 71
    assert (track.state, track.idle_since, track.warned_at) == (IdleState.IDLE, t(42), None)
    assert run(seen + [(72, 0, gpus(0, 0))]).state is IdleState.WARNED
    assert run(seen + every_minute(101, gpus(0, 0), 72)).state is IdleState.WARNED
    assert run(seen + every_minute(102, gpus(0, 0), 72)).state is IdleState.STOPPING


def test_a_multi_gpu_server_is_idle_only_when_all_its_gpus_are():
    assert run(every_minute(90, gpus(0, 0, 0, 64))).state is IdleState.IN_USE
    assert run(every_minute(90, gpus(0, 1, 2, 4))).state is IdleState.STOPPING


def test_no_data_never_stops_a_server():
    warned = run(every_minute(30, gpus(0)))
    blind = run(every_minute(30, gpus(0)) + every_minute(600, None, 31))
    assert blind == warned  # nothing moves while nothing is known


def test_a_gap_in_the_data_starts_the_count_over():
    # 3 minutes without data are bridged; 4 are not
    bridged = run([(0, 0, gpus(0)), (3, 0, gpus(0))])
    assert bridged.idle_since == t(0)
    gap = run(every_minute(29, gpus(0)) + [(29, 0, None), (33, 0, gpus(0))])
    assert (gap.state, gap.idle_since, gap.observations) == (IdleState.IDLE, t(33), 1)


def test_the_stop_never_comes_sooner_than_the_notice_after_the_warning():
    sparse = IdleRule(5, timedelta(minutes=30), timedelta(minutes=60), timedelta(hours=2))
    seen = [(0, 0, gpus(0)), (45, 0, gpus(0))]
    assert run(seen, sparse).warned_at == t(45)  # the first look after 30 minutes
    assert run(seen + [(74, 59, gpus(0))], sparse).state is IdleState.WARNED
    assert run(seen + [(75, 0, gpus(0))], sparse).state is IdleState.STOPPING


def test_a_server_is_never_stopped_without_a_warning():
    with pytest.raises(TransitionRefused):
        IdleTrack(state=IdleState.IDLE).move(IdleState.STOPPING)
    with pytest.raises(TransitionRefused):
        IdleTrack(state=IdleState.STOPPING).move(IdleState.IN_USE)


def test_rules_that_make_no_sense_are_refused():
    with pytest.raises(ValueError):
        IdleRule(5, timedelta(minutes=60), timedelta(minutes=60))
    with pytest.raises(ValueError):
        IdleRule(0, timedelta(minutes=30), timedelta(minutes=60))


# ---- sources -------------------------------------------------------------------------------


async def test_the_local_source_runs_the_tools_of_the_vendors_asked():
    source = LocalToolSource(
        {
            "nvidia": ["cat", str(DATA / "nvidia-smi_utilization_8xH100.csv")],
            "amd": ["cat", str(DATA / "rocm-smi_showuse_mi300x.json")],
        }
    )
    both = await source.sample({"nvidia", "amd"})
    assert [(s.vendor, s.index) for s in both][:2] == [("amd", 0), ("amd", 1)]
    assert len(both) == 16
    assert {s.vendor for s in await source.sample({"nvidia"})} == {"nvidia"}


@pytest.mark.parametrize(
    "command, why",
    [
        (["/nonexistent/nvidia-smi"], "cannot run"),
        (
            [
                "sh",
                "-c",
                "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                'driver." >&2; exit 9',
            ],
            "exited 9: NVIDIA-SMI has failed",
        ),
        (["sleep", "5"], "no answer in 0.5 s"),
        (["cat", str(DATA / "rocm-smi_showuse_mi300x.json")], "reported no GPU's utilisation"),
    ],
)
async def test_a_failing_tool_gives_no_data_and_is_logged_once(command, why, caplog):
    source = LocalToolSource({"nvidia": command}, timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="quota_service.gpu_idle"):
        assert await source.sample({"nvidia"}) == []
        assert await source.sample({"nvidia"}) == []
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and why in logged[0] and "not judged" in logged[0]


async def test_an_amd_tool_that_prints_garbage_gives_no_data(caplog):
    source = LocalToolSource({"amd": ["echo", "AMDSMI_STATUS_DRM_ERROR"]})
    with caplog.at_level(logging.WARNING, logger="quota_service.gpu_idle"):
        assert await source.sample({"amd"}) == []
    assert "not understood" in caplog.text


@pytest.fixture(scope="module")
def exporters():
    """The recorded exporter pages on a real HTTP server, as the exporters serve them."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=DATA,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/dcgm-exporter_metrics_8xH100.txt", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield SimpleNamespace(port=port, base=base)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def prometheus(exporters, tmp_path_factory):
    """A real Prometheus scraping the recorded DCGM and AMD exporter pages every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Prometheus is missing: apt-get install -y prometheus (.ci/run does it)")
    folder = tmp_path_factory.mktemp("prometheus")
    jobs = {
        "nvidia-dcgm-exporter": "/dcgm-exporter_metrics_8xH100.txt",
        "amd-device-metrics-exporter": "/amd-device-metrics-exporter_metrics_8xMI300X.txt",
    }
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": path,
                "static_configs": [{"targets": [f"127.0.0.1:{exporters.port}"]}],
            }
            for job, path in jobs.items()
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    log_file = open(folder / "prometheus.log", "wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api/v1/query"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            series = [
                requests.get(url, params={"query": metric}, timeout=2).json()["data"]["result"]
                for metric in ("DCGM_FI_DEV_GPU_UTIL", "gpu_gfx_activity")
            ]
            if all(series):
                break
        except (requests.ConnectionError, KeyError, ValueError):
            pass
        time.sleep(0.3)
    else:
        process.terminate()
        raise TimeoutError((folder / "prometheus.log").read_text()[-3000:])
    yield url
    process.terminate()
    process.wait(30)
    log_file.close()


def prometheus_source(url: str, **kwargs) -> PrometheusSource:
    return PrometheusSource(
        url,
        {"nvidia": "DCGM_FI_DEV_GPU_UTIL", "amd": "gpu_gfx_activity"},
        namespace="aipower",
        **kwargs,
    )


async def test_the_prometheus_source_asks_a_real_prometheus(prometheus):
    source = prometheus_source(prometheus)
    assert source.query("nvidia") == 'max_over_time(DCGM_FI_DEV_GPU_UTIL{namespace="aipower"}[60s])'
    samples = await source.sample({"nvidia", "amd"})
    assert {vendor: pods(samples, vendor) for vendor in PROMETHEUS_GPUS} == PROMETHEUS_GPUS
    carol = server(username="carol", vendor="amd", count=2)
    assert figures(gpus_of(carol, samples)) == [(0, 0), (1, 1)]
    # a label Prometheus does not have: every GPU without its pod, so no server is judged
    renamed = prometheus_source(prometheus, pod_label="exported_pod")
    assert {s.pod for s in await renamed.sample({"nvidia"})} == {""}


async def test_an_exporter_page_is_read_in_the_text_format(exporters):
    source = prometheus_source(exporters.base + "/dcgm-exporter_metrics_8xH100.txt")
    samples = await source.sample({"nvidia"})
    # the namespace filter keeps out the other installation's jupyter-alice (GPU 4)
    assert pods(samples, "nvidia") == PROMETHEUS_GPUS["nvidia"]


async def test_prometheus_unreachable_or_wrong_gives_no_data(exporters, caplog):
    with caplog.at_level(logging.WARNING, logger="quota_service.gpu_idle"):
        down = prometheus_source(f"http://127.0.0.1:{free_port()}/api/v1/query", timeout=2)
        assert await down.sample({"nvidia", "amd"}) == []
        missing = prometheus_source(exporters.base + "/no-such-page")
        assert await missing.sample({"nvidia"}) == []
        unset = prometheus_source("")
        assert await unset.sample({"nvidia"}) == []
        # the exporter's page has no series of this metric (say, a prefix was configured)
        prefixed = PrometheusSource(
            exporters.base + "/amd-device-metrics-exporter_metrics_8xMI300X.txt",
            {"amd": "amd_gpu_gfx_activity"},
        )
        assert await prefixed.sample({"amd"}) == []
    assert caplog.text.count("not judged") == 5
    assert "no series of max_over_time(amd_gpu_gfx_activity[60s])" in caplog.text


# ---- the job, on SQLite and PostgreSQL ------------------------------------------------------

START, END = window_for_notice(date(2026, 11, 28))
_numbers = itertools.count(30_000_000)


class HubStops:
    """Stands in for HubAPI.stop_server (the end-to-end test uses the real hub)."""

    def __init__(self):
        self.asked: list[tuple[str, str]] = []

    async def __call__(self, username: str, server_name: str) -> bool:
        self.asked.append((username, server_name))
        return True


def open_server(factory, username: str, devices: list[str], *, now=T0, email=True) -> int:
    """A member of an approved project starts a server: its session opens as metering does."""
    with database.transaction(factory) as db:
        company = Company(name="閒置測試", business_number=str(next(_numbers)), created_at=START)
        project = Project(
            company=company,
            name=f"計畫 {username}",
            status=ProjectStatus.APPROVED,
            window_start=START,
            window_end=END,
            max_gpus_per_server=4,
            created_at=START,
        )
        account = Account(
            username=username, email=f"{username}@example.tw" if email else "", created_at=START
        )
        lead = Account(
            username=f"lead-{username}", email=f"lead-{username}@example.tw", created_at=START
        )
        db.add_all([company, project, account, lead])
        db.add(Membership(project=project, account=account, role="trainee", created_at=START))
        db.add(Membership(project=project, account=lead, role="lead", created_at=START))
        db.flush()
        ledger.grant(db, project, 1_000_000, actor="operator", reason="L1", now=START)
        request = ServerRequest(username, "", "nvidia", len(devices), devices, True)
        return metering.open_session(db, request, now=now, interval_seconds=60).id


def culler(factory, sample: Path, hub: HubStops, rule=None) -> GPUIdleCuller:
    source = LocalToolSource({"nvidia": ["cat", str(sample)]})
    rule = rule or IdleRule(5, timedelta(minutes=30), timedelta(minutes=60), timedelta(hours=2))
    return GPUIdleCuller(source, rule, factory, hub)


def notices(factory) -> list[Notice]:
    with factory() as db:
        return list(db.scalars(select(Notice).where(Notice.kind == "gpu-idle").order_by(Notice.id)))


def audits(factory, action: str) -> list[dict]:
    with factory() as db:
        rows = db.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )
        return [json.loads(row.detail) | {"subject_id": row.subject_id} for row in rows]


@pytest.fixture
def sample(tmp_path) -> Path:
    """What the stand-in tool prints; a test copies recorded samples into it."""
    path = tmp_path / "nvidia-smi.csv"
    shutil.copy(DATA / "nvidia-smi_utilization_8xH100.csv", path)
    return path


async def test_an_idle_server_is_warned_once_then_stopped_and_its_points_stop(
    session_factory, sample
):
    idle = open_server(session_factory, "alice", ["nvidia:0", "nvidia:1"])  # 0 % and 3 %
    busy = open_server(session_factory, "bob", ["nvidia:2", "nvidia:7"])  # 97 % and 4 %
    hub = HubStops()
    job = culler(session_factory, sample, hub)

    for minutes, seconds in [(0, 0), (29, 59)]:
        await job.run_once(t(minutes, seconds))
    assert notices(session_factory) == []
    tracks = await job.run_once(t(30))
    assert (tracks[idle].state, tracks[busy].state) == (IdleState.WARNED, IdleState.IN_USE)
    await job.run_once(t(30))  # a re-run decides nothing twice
    [warning] = notices(session_factory)
    assert (warning.recipients, warning.key) == (
        "alice@example.tw",
        f"{idle}@{int(T0.timestamp())}",
    )
    assert "GPU 閒置" in warning.subject and "idle GPUs" in warning.subject
    zh, en = warning.body.splitlines()[:2]
    assert (
        "2 顆 NVIDIA GPU 自 2026-12-01 10:00:00（台北時間）起使用率皆低於 5%（期間最高 3%）" in zh
    )
    assert "若到 2026-12-01 11:00:00 仍未使用 GPU" in zh
    assert "stops the server at 2026-12-01 11:00:00" in en
    [warned] = audits(session_factory, "gpu_idle.warn")
    assert warned["subject_id"] == str(idle)
    assert (warned["idle_seconds"], warned["observations"], warned["peak_percent"]) == (
        1800,
        3,
        3.0,
    )
    assert warned["gpus"] == [
        {"device": "nvidia:0", "utilization_percent": 0.0, "memory_used_mib": 45872},
        {"device": "nvidia:1", "utilization_percent": 3.0, "memory_used_mib": 45870},
    ]
    assert warned["source"] == "local" and warned["threshold_percent"] == 5

    await job.run_once(t(59, 59))
    assert hub.asked == []
    await job.run_once(t(60))
    assert hub.asked == [("alice", "")]
    with session_factory() as db:
        assert db.get(UsageSession, idle).stop_reason == gpu_idle.GPU_IDLE.message
        assert db.get(UsageSession, busy).stop_reason == ""
    [stopped] = audits(session_factory, "gpu_idle.stop")
    assert (stopped["idle_seconds"], stopped["warned_at"]) == (3600, "2026-12-01 02:30:00+00:00")
    await job.run_once(t(61))  # still running: the hub is asked again, nothing is recorded twice
    assert hub.asked == [("alice", ""), ("alice", "")]
    assert len(audits(session_factory, "gpu_idle.stop")) == 1

    # the hub stops the server; the spawner closes its session (POST /sessions/<id>/close)
    with database.transaction(session_factory) as db:
        metering.close_session(db, db.get(UsageSession, idle), now=t(61, 30))
    assert set(await job.run_once(t(62))) == {busy}
    assert hub.asked == [("alice", ""), ("alice", "")]
    with database.transaction(session_factory) as db:
        metering.meter(db, now=t(240))
    with session_factory() as db:
        charged = db.scalar(
            select(func.sum(LedgerEntry.amount_millipoints)).where(LedgerEntry.session_id == idle)
        )
        session = db.get(UsageSession, idle)
        assert session.charged_seconds == 61 * 60 + 30  # up to the stop, not a second more
    with database.transaction(session_factory) as db:
        metering.meter(db, now=t(600))
    with session_factory() as db:
        later = db.scalar(
            select(func.sum(LedgerEntry.amount_millipoints)).where(LedgerEntry.session_id == idle)
        )
    assert later == charged < 0


async def test_use_after_the_warning_starts_over_with_a_new_warning(session_factory, sample):
    idle = open_server(session_factory, "carol", ["nvidia:4"], email=False)
    hub = HubStops()
    job = culler(session_factory, sample, hub)
    for minutes in (0, 30):
        await job.run_once(t(minutes))
    shutil.copy(DATA / "nvidia-smi_utilization_8xH100.csv", sample)
    sample.write_text(
        sample.read_text().replace(
            ", GPU-e93f1b40-7a25-4c6d-91e8-3b0c5d6f2a18, 0, 0",
            ", GPU-e93f1b40-7a25-4c6d-91e8-3b0c5d6f2a18, 88, 40960",
        )
    )
    assert (await job.run_once(t(45)))[idle].state is IdleState.IN_USE
    shutil.copy(DATA / "nvidia-smi_utilization_idle_8xH100.csv", sample)
    for minutes in (46, 75, 76, 105):
        await job.run_once(t(minutes))
    assert hub.asked == []  # idle since 46: warned at 76, stop due at 106
    await job.run_once(t(106))
    assert hub.asked == [("carol", "")]
    # two warnings, one per idle stretch; without an address of her own, to the project's lead
    assert [(n.key, n.recipients) for n in notices(session_factory)] == [
        (f"{idle}@{int(t(0).timestamp())}", "lead-carol@example.tw"),
        (f"{idle}@{int(t(46).timestamp())}", "lead-carol@example.tw"),
    ]


async def test_a_failing_source_never_stops_a_server(session_factory, sample):
    open_server(session_factory, "dave", ["nvidia:0"])
    hub = HubStops()
    job = culler(session_factory, sample, hub)
    await job.run_once(t(0))
    await job.run_once(t(30))  # warned
    job.source.commands["nvidia"] = ["sh", "-c", "exit 12"]
    for minutes in range(31, 300, 7):
        await job.run_once(t(minutes))
    assert hub.asked == [] and len(notices(session_factory)) == 1
    assert audits(session_factory, "gpu_idle.stop") == []


async def test_a_restart_starts_every_count_over(session_factory, sample):
    session_id = open_server(session_factory, "erin", ["nvidia:5"])
    hub = HubStops()
    first = culler(session_factory, sample, hub)
    await first.run_once(t(0))
    await first.run_once(t(30))
    # the service restarts: the new job knows nothing of the first one's count
    second = culler(session_factory, sample, hub)
    await second.run_once(t(31))
    for minutes in (60, 61, 90):
        await second.run_once(t(minutes))
    assert hub.asked == []  # idle since 31 for the new job: warned at 61, stop due at 91
    await second.run_once(t(91))
    assert hub.asked == [("erin", "")]
    assert [n.key for n in notices(session_factory)] == [
        f"{session_id}@{int(t(0).timestamp())}",
        f"{session_id}@{int(t(31).timestamp())}",
    ]
