"""GPU-utilisation culling: servers whose GPUs all stay idle are warned, then stopped.

jupyterhub-idle-culler stops servers idle by *Jupyter* activity; a server can be busy in
Jupyter's eyes (a kernel polling, a terminal open) while its GPUs do nothing. This module
closes that gap, in four parts (docs/gpu-idle.md):

- **Samples.** Parsers of what the vendor tools print (``nvidia-smi``, ``amd-smi``,
  ``rocm-smi``) and of the Prometheus results of the DCGM exporter and AMD's device
  metrics exporter, each giving ``GPUSample`` rows.
- **Sources** behind one interface (``GPUSource.sample``): ``LocalToolSource`` runs the
  vendor tools (the embedded default), ``PrometheusSource`` asks Prometheus (Kubernetes).
  A source that fails yields no sample; a server without a sample of each of its GPUs is
  not judged, so a broken source never stops a server (fail open, logged).
- **The rule**, a pure function: ``decide`` moves a server's ``IdleTrack`` through the
  ``TRANSITIONS`` table from what its GPUs show at a moment. Idle means every GPU of the
  server under the threshold; the owner is warned once after ``warn_after`` of it and the
  server stopped after ``stop_after`` (and never sooner than ``stop_after - warn_after``
  after the warning); any GPU at or above the threshold starts the count over.
- **The job** (``GPUIdleCuller.run_once``): samples, decides, writes the warning into the
  notices outbox and the stop reason, each with its audit row in one transaction, and asks
  the hub to stop the server; metering then closes its session, so its points stop.

The tracks are kept in memory only. A restart of the service forgets them, so every idle
count starts over: a server is then stopped later than the rule says, never sooner, and
its owner is warned again before it is (the new count has a new warning key).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import urlencode

from kubespawner.slugs import multi_slug, safe_slug
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from . import audit, notifications
from .access import Refusal
from .db import transaction
from .models import Account, Notice, NoticeStatus, Project, UsageSession
from .timewindow import taipei, utcnow

log = logging.getLogger(__name__)

NVIDIA, AMD = "nvidia", "amd"
NOTICE_KIND = "gpu-idle"
ACTOR = "gpu-idle"
GPU_IDLE = Refusal(
    "gpu-idle",
    "伺服器的 GPU 持續閒置，已由平台停止。",
    "The server's GPUs stayed idle, so the platform stopped it.",
)

# ---- samples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GPUSample:
    """One GPU at one moment: how busy it is (percent), and what names it."""

    vendor: str
    utilization: float
    index: int | None = None  # the device index on its machine
    memory_used_mib: int | None = None
    uuid: str = ""
    pod: str = ""
    namespace: str = ""

    @property
    def device_key(self) -> str:
        """As ``spawner.gpu.Device.key`` names it in a session's devices, e.g. nvidia:3."""
        return f"{self.vendor}:{self.index}"

    def evidence(self) -> dict:
        where = {"device": self.device_key} if not self.pod else {"pod": self.pod}
        if self.pod and self.index is not None:
            where["gpu"] = self.index
        memory = {} if self.memory_used_mib is None else {"memory_used_mib": self.memory_used_mib}
        return where | {"utilization_percent": self.utilization} | memory


def _percent(value: object) -> float | None:
    """A utilisation as the tools print it ("3", 3, 2.5); None for "[N/A]", "N/A" and the
    like, which a GPU reports when it cannot tell (MIG mode, a GPU that fell off the bus)."""
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and 0 <= number <= 100 else None


def parse_nvidia_smi_utilization(output: str) -> list[GPUSample]:
    """``nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used
    --format=csv,noheader,nounits``: one line a GPU, e.g. ``2, GPU-7b2e…, 97, 71234``. A GPU
    whose utilisation reads ``[N/A]`` gets no sample."""
    samples = []
    for line in output.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        utilization = _percent(parts[2])
        if utilization is None:
            continue
        memory = int(parts[3]) if parts[3].isdigit() else None
        samples.append(GPUSample(NVIDIA, utilization, int(parts[0]), memory, uuid=parts[1]))
    return samples


def parse_amd_smi_usage(output: str) -> list[GPUSample]:
    """``amd-smi metric --usage --json``: a list of GPUs (ROCm 6.2, 6.3) or
    ``{"gpu_data": [...]}`` (ROCm 6.4 and later); each ``usage.gfx_activity`` is
    ``{"value": 0, "unit": "%"}`` or ``"N/A"``."""
    data = json.loads(output)
    if isinstance(data, dict):
        data = data["gpu_data"]
    samples = []
    for entry in data:
        activity = entry.get("usage", {}).get("gfx_activity")
        value = activity.get("value") if isinstance(activity, dict) else activity
        utilization = _percent(value)
        if utilization is not None:
            samples.append(GPUSample(AMD, utilization, int(entry["gpu"])))
    return samples


def parse_rocm_smi_use(output: str) -> list[GPUSample]:
    """``rocm-smi --showuse --json``: ``{"card0": {"GPU use (%)": "0", "GFX Activity":
    "465307149"}}``; "GFX Activity" is a cycle counter, not a percentage, and is not read."""
    samples = []
    for card, fields in json.loads(output).items():
        if not card.startswith("card") or not card[4:].isdigit():
            continue
        utilization = _percent(fields.get("GPU use (%)"))
        if utilization is not None:
            samples.append(GPUSample(AMD, utilization, int(card[4:])))
    return sorted(samples, key=lambda s: s.index)


def parse_amd_usage(output: str) -> list[GPUSample]:
    """Either AMD tool's output, told apart by its shape (rocm-smi's keys are cards)."""
    data = json.loads(output)
    if isinstance(data, dict) and any(key.startswith("card") for key in data):
        return parse_rocm_smi_use(output)
    return parse_amd_smi_usage(output)


@dataclass(frozen=True)
class ExporterLabels:
    """Where an exporter's series name the GPU and the pod it is given to."""

    index: str
    uuid: str
    pod: str = "pod"
    namespace: str = "namespace"


# DCGM exporter: gpu, UUID, and pod/namespace/container when it maps GPUs to pods;
# AMD device metrics exporter: gpu_id, gpu_uuid, and pod/namespace/container (always set)
EXPORTER_LABELS = {NVIDIA: ExporterLabels("gpu", "UUID"), AMD: ExporterLabels("gpu_id", "gpu_uuid")}


def _sample_from_labels(
    vendor: str, labels: dict[str, str], value: object, names: ExporterLabels
) -> GPUSample | None:
    utilization = _percent(value)
    if utilization is None:
        return None
    index = labels.get(names.index, "")
    return GPUSample(
        vendor,
        utilization,
        int(index) if index.isdigit() else None,
        uuid=labels.get(names.uuid, ""),
        pod=labels.get(names.pod, ""),
        namespace=labels.get(names.namespace, ""),
    )


def parse_prometheus_text(
    text: str, metric: str, vendor: str, names: ExporterLabels
) -> list[GPUSample]:
    """The Prometheus text format (an exporter's /metrics page): the series of ``metric``."""
    samples = []
    for family in text_string_to_metric_families(text):
        for series in family.samples:
            if series.name == metric:
                sample = _sample_from_labels(vendor, series.labels, series.value, names)
                if sample is not None:
                    samples.append(sample)
    return samples


def parse_prometheus_query(body: str, vendor: str, names: ExporterLabels) -> list[GPUSample]:
    """A Prometheus HTTP API answer to an instant query (``/api/v1/query``): a vector of
    ``{"metric": {labels}, "value": [time, "12"]}``."""
    answer = json.loads(body)
    if answer.get("status") != "success" or answer["data"]["resultType"] != "vector":
        raise ValueError(f"not an instant vector: {body[:200]}")
    samples = []
    for series in answer["data"]["result"]:
        sample = _sample_from_labels(vendor, series["metric"], series["value"][1], names)
        if sample is not None:
            samples.append(sample)
    return samples


# ---- sources -----------------------------------------------------------------------------


class GPUSource(Protocol):
    """Where GPU samples come from. ``sample`` never raises: a failure is logged and gives
    no sample of that vendor's GPUs."""

    name: str

    async def sample(self, vendors: Iterable[str]) -> list[GPUSample]: ...


class _FailureLog:
    """Log a source's failure when it starts or changes, not at every pass."""

    def __init__(self, source: str):
        self.source = source
        self.last: dict[str, str] = {}

    def failed(self, vendor: str, why: str) -> None:
        if self.last.get(vendor) != why:
            log.warning(
                "GPU-idle source %s: no %s data (servers are not judged): %s",
                self.source,
                vendor,
                why,
            )
        self.last[vendor] = why

    def worked(self, vendor: str) -> None:
        if self.last.pop(vendor, None) is not None:
            log.info("GPU-idle source %s: %s data again", self.source, vendor)


# what the local source runs by default (rocm-smi --showuse --json is read too)
DEFAULT_COMMANDS = {
    NVIDIA: [
        "nvidia-smi",
        "--query-gpu=index,uuid,utilization.gpu,memory.used",
        "--format=csv,noheader,nounits",
    ],
    AMD: ["amd-smi", "metric", "--usage", "--json"],
}


class _PerVendorSource:
    """A source that answers for each vendor on its own (a failure costs that vendor only)."""

    name: str

    def __init__(self):
        self._failures = _FailureLog(self.name)

    async def sample(self, vendors: Iterable[str]) -> list[GPUSample]:
        samples = []
        for vendor in sorted(set(vendors)):
            samples += await self._sample_vendor(vendor)
        return samples

    async def _sample_vendor(self, vendor: str) -> list[GPUSample]:
        raise NotImplementedError


LOCAL_PARSERS: dict[str, Callable[[str], list[GPUSample]]] = {
    NVIDIA: parse_nvidia_smi_utilization,
    AMD: parse_amd_usage,
}


class LocalToolSource(_PerVendorSource):
    """The vendor tools of this machine, one command per vendor, each with a time limit."""

    name = "local"

    def __init__(self, commands: dict[str, list[str]], timeout: float = 20):
        super().__init__()
        self.commands, self.timeout = commands, timeout

    async def _sample_vendor(self, vendor: str) -> list[GPUSample]:
        argv = self.commands.get(vendor)
        if not argv:
            self._failures.failed(vendor, "no command configured")
            return []
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
        except OSError as e:
            self._failures.failed(vendor, f"{argv[0]} cannot run: {e}")
            return []
        try:
            out, err = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            self._failures.failed(vendor, f"{argv[0]} gave no answer in {self.timeout} s")
            return []
        if process.returncode != 0:
            tail = err.decode(errors="replace").strip()[-300:]
            self._failures.failed(vendor, f"{argv[0]} exited {process.returncode}: {tail}")
            return []
        try:
            samples = [s for s in LOCAL_PARSERS[vendor](out.decode()) if s.vendor == vendor]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._failures.failed(vendor, f"{argv[0]} printed what is not understood: {e!r}")
            return []
        if not samples:
            self._failures.failed(vendor, f"{argv[0]} reported no GPU's utilisation")
            return []
        self._failures.worked(vendor)
        return samples


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class PrometheusSource(_PerVendorSource):
    """Prometheus' HTTP API, one instant query per vendor: the highest utilisation of each
    GPU over the last ``window`` seconds, so that a burst between two samples counts as use.
    A URL that answers in the text format instead (an exporter's /metrics page) is read as
    such: the vendor's metric as it is now."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        metrics: dict[str, str],
        *,
        namespace: str = "",
        pod_label: str = "pod",
        namespace_label: str = "namespace",
        window: int = 60,
        timeout: float = 20,
    ):
        self.url, self.metrics, self.namespace = url, metrics, namespace
        self.window, self.timeout = window, timeout
        self.labels = {
            vendor: replace(labels, pod=pod_label, namespace=namespace_label)
            for vendor, labels in EXPORTER_LABELS.items()
        }
        super().__init__()

    def query(self, vendor: str) -> str:
        """e.g. ``max_over_time(DCGM_FI_DEV_GPU_UTIL{namespace="aipower"}[60s])``."""
        selector = ""
        if self.namespace:
            selector = f"{{{self.labels[vendor].namespace}={_promql_string(self.namespace)}}}"
        return f"max_over_time({self.metrics[vendor]}{selector}[{self.window}s])"

    async def _sample_vendor(self, vendor: str) -> list[GPUSample]:
        if not self.url or vendor not in self.metrics:
            self._failures.failed(vendor, "no Prometheus URL or metric configured")
            return []
        separator = "&" if "?" in self.url else "?"
        try:
            response = await AsyncHTTPClient().fetch(
                f"{self.url}{separator}{urlencode({'query': self.query(vendor)})}",
                request_timeout=self.timeout,
            )
        except (HTTPClientError, OSError) as e:
            self._failures.failed(vendor, f"{self.url}: {e}")
            return []
        body = response.body.decode(errors="replace")
        labels = self.labels[vendor]
        try:
            if response.headers.get("Content-Type", "").startswith("application/json"):
                samples = parse_prometheus_query(body, vendor, labels)
            else:
                samples = parse_prometheus_text(body, self.metrics[vendor], vendor, labels)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            self._failures.failed(vendor, f"{self.url} answered what is not understood: {e!r}")
            return []
        if self.namespace:
            samples = [s for s in samples if s.namespace == self.namespace]
        if not samples:
            self._failures.failed(vendor, f"no series of {self.query(vendor)} at {self.url}")
            return []
        self._failures.worked(vendor)
        return samples


# ---- servers and their GPUs ------------------------------------------------------------

KUBE_POD_NAME_TEMPLATE = "jupyter-{user_server}"


def kube_pod_name(username: str, server_name: str, template: str = KUBE_POD_NAME_TEMPLATE) -> str:
    """The pod KubeSpawner 7 names for a server, with its default "safe" slug scheme:
    ``{username}``, ``{servername}`` and ``{user_server}`` as in
    ``KubeSpawner._expand_user_properties`` (tests/test_gpu_idle.py holds the two together)."""
    max_length = 48
    safe_username = safe_slug(username, max_length=max_length)
    safe_servername = safe_slug(server_name, max_length=max_length) if server_name else ""
    if len(safe_username) + len(safe_servername) + 2 > max_length:
        user_server = multi_slug([username, server_name], max_length=max_length)
    elif server_name:
        user_server = f"{safe_username}--{safe_servername}"
    else:
        user_server = safe_username
    rendered = template.format(
        username=safe_username, servername=safe_servername, user_server=user_server
    )
    return rendered if template.endswith("-") else rendered.rstrip("-")


@dataclass(frozen=True)
class Server:
    """A metered server, and whom to warn about it."""

    session_id: int
    project_id: int
    project_name: str
    username: str
    server_name: str
    email: str
    gpu_vendor: str
    gpu_count: int
    devices: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.username}/{self.server_name}" if self.server_name else self.username


def open_servers(db: Session) -> list[Server]:
    rows = db.execute(
        select(UsageSession, Account.email, Project.name)
        .join(Account, Account.id == UsageSession.account_id)
        .join(Project, Project.id == UsageSession.project_id)
        .where(UsageSession.stopped_at.is_(None))
        .order_by(UsageSession.id)
    )
    return [
        Server(
            session.id,
            session.project_id,
            project_name,
            session.username,
            session.server_name,
            email,
            session.gpu_vendor,
            session.gpu_count,
            tuple(d for d in session.devices.split(",") if d),
        )
        for session, email, project_name in rows
    ]


def gpus_of(
    server: Server,
    samples: Sequence[GPUSample],
    *,
    pod_name_template: str = KUBE_POD_NAME_TEMPLATE,
) -> tuple[GPUSample, ...] | None:
    """The samples of each of the server's GPUs, or None unless every one has a sample.

    A server with devices (the local flavour) is matched by device index; one without (on
    Kubernetes the device plugin places GPUs) by its pod, which must show ``gpu_count``
    distinct GPUs of the server's vendor."""
    mine = [s for s in samples if s.vendor == server.gpu_vendor]
    if server.devices:
        by_key = {s.device_key: s for s in mine if s.index is not None}
        found = tuple(by_key.get(key) for key in server.devices)
        return None if None in found else found
    pod = kube_pod_name(server.username, server.server_name, pod_name_template)
    by_gpu = {(s.uuid, s.index): s for s in mine if s.pod == pod}
    if len(by_gpu) != server.gpu_count:
        return None
    return tuple(by_gpu[key] for key in sorted(by_gpu, key=lambda k: (k[1] is None, k[1], k[0])))


# ---- the rule -------------------------------------------------------------------------------


class IdleState(enum.StrEnum):
    IN_USE = "in-use"  # a GPU at or above the threshold, or nothing known yet
    IDLE = "idle"  # every GPU under the threshold since idle_since
    WARNED = "warned"  # and the owner was warned
    STOPPING = "stopping"  # and the hub was asked to stop the server


# the only moves there are: a server is warned before it is stopped, and use in between
# starts the count over (STOPPING is final: the session closes with the server)
TRANSITIONS: dict[IdleState, frozenset[IdleState]] = {
    IdleState.IN_USE: frozenset({IdleState.IDLE}),
    IdleState.IDLE: frozenset({IdleState.IN_USE, IdleState.WARNED}),
    IdleState.WARNED: frozenset({IdleState.IN_USE, IdleState.STOPPING}),
    IdleState.STOPPING: frozenset(),
}


class TransitionRefused(Exception):
    pass


@dataclass(frozen=True)
class IdleRule:
    threshold_percent: int = 5
    warn_after: timedelta = timedelta(minutes=30)
    stop_after: timedelta = timedelta(minutes=60)
    # a longer time between two idle observations starts the count over: what was not
    # seen is not counted as idle
    max_gap: timedelta = timedelta(minutes=3)

    def __post_init__(self):
        if not 1 <= self.threshold_percent <= 100:
            raise ValueError("the threshold is a percentage from 1 to 100")
        if not timedelta(0) < self.warn_after < self.stop_after:
            raise ValueError("warn_after must be positive and shorter than stop_after")
        if self.max_gap <= timedelta(0):
            raise ValueError("max_gap must be positive")

    @property
    def notice(self) -> timedelta:
        """The least time between the warning and the stop."""
        return self.stop_after - self.warn_after


@dataclass(frozen=True)
class IdleTrack:
    """What the rule knows of one server's current idle stretch."""

    state: IdleState = IdleState.IN_USE
    idle_since: datetime | None = None
    last_idle_at: datetime | None = None
    warned_at: datetime | None = None
    observations: int = 0
    peak_percent: float = 0.0
    latest: tuple[GPUSample, ...] = field(default=())

    def idle_for(self, now: datetime) -> timedelta:
        return timedelta(0) if self.idle_since is None else now - self.idle_since

    def stop_due_at(self, rule: IdleRule) -> datetime:
        """When the server will be stopped if it stays idle (as the warning says)."""
        return max(self.idle_since + rule.stop_after, self.warned_at + rule.notice)

    def reset(self) -> IdleTrack:
        """A fresh count, in this track's state."""
        return IdleTrack(state=self.state)

    def move(self, state: IdleState, **changes) -> IdleTrack:
        if state not in TRANSITIONS[self.state]:
            raise TransitionRefused(f"{self.state} → {state}")
        return replace(self, state=state, **changes)


def decide(
    track: IdleTrack, gpus: Sequence[GPUSample] | None, *, now: datetime, rule: IdleRule
) -> IdleTrack:
    """The server's track after seeing ``gpus`` (every GPU of it) at ``now``; ``None``
    means no data, which changes nothing. Pure: the caller acts on the new state."""
    if gpus is None or not gpus or track.state is IdleState.STOPPING:
        return track
    if any(g.utilization >= rule.threshold_percent for g in gpus):
        return track if track.state is IdleState.IN_USE else track.move(IdleState.IN_USE).reset()
    peak = max(g.utilization for g in gpus)
    if track.state is not IdleState.IN_USE and now - track.last_idle_at > rule.max_gap:
        track = track.move(IdleState.IN_USE).reset()
    if track.state is IdleState.IN_USE:
        track = track.move(IdleState.IDLE, idle_since=now)
    track = replace(
        track,
        last_idle_at=now,
        observations=track.observations + 1,
        peak_percent=max(track.peak_percent, peak),
        latest=tuple(gpus),
    )
    idle_for = track.idle_for(now)
    if track.state is IdleState.IDLE and idle_for >= rule.warn_after:
        return track.move(IdleState.WARNED, warned_at=now)
    if (
        track.state is IdleState.WARNED
        and idle_for >= rule.stop_after
        and now - track.warned_at >= rule.notice
    ):
        return track.move(IdleState.STOPPING)
    return track


# ---- the job: warn through the outbox, stop through the hub, audited ------------------------


def _taipei_text(moment: datetime) -> str:
    return taipei(moment).strftime("%Y-%m-%d %H:%M:%S")


def warning_key(server: Server, track: IdleTrack) -> str:
    """One warning per idle stretch of a server: a re-run decides nothing twice."""
    return f"{server.session_id}@{int(track.idle_since.timestamp())}"


def warning_text(server: Server, track: IdleTrack, rule: IdleRule) -> tuple[str, str]:
    """The warning's subject and body, Traditional Chinese first."""
    since, stop = _taipei_text(track.idle_since), _taipei_text(track.stop_due_at(rule))
    count, vendor = len(track.latest), "NVIDIA" if server.gpu_vendor == NVIDIA else "AMD"
    threshold, peak = rule.threshold_percent, f"{track.peak_percent:g}"
    subject = (
        f"{notifications.SUBJECT_PREFIX} GPU 閒置，伺服器將停止 / idle GPUs, the server will "
        f"stop: {server.label}"
    )
    zh = (
        f"您的伺服器「{server.label}」（計畫「{server.project_name}」）的 {count} 顆 {vendor} GPU "
        f"自 {since}（台北時間）起使用率皆低於 {threshold}%（期間最高 {peak}%）。若到 {stop} 仍未"
        f"使用 GPU，平台將停止這台伺服器，點數隨之停止計算；請先儲存您的工作。再次使用 GPU 即取消停止。"
    )
    en = (
        f"The {count} {vendor} GPU(s) of your server {server.label} (project "
        f"{server.project_name}) have all been under {threshold}% busy since {since} "
        f"(Asia/Taipei; at most {peak}%). Unless the GPUs are used, the platform stops the "
        f"server at {stop}, and its points stop with it: please save your work. Using the GPUs "
        f"again cancels the stop."
    )
    return subject, f"{zh}\n{en}\n"


def evidence(server: Server, track: IdleTrack, rule: IdleRule, source: str, now: datetime) -> dict:
    """What the audit row keeps of a decision: the figures, the span, the rule."""
    return {
        "project_id": server.project_id,
        "username": server.username,
        "server_name": server.server_name,
        "source": source,
        "threshold_percent": rule.threshold_percent,
        "idle_since": track.idle_since,
        "idle_seconds": int(track.idle_for(now).total_seconds()),
        "observations": track.observations,
        "peak_percent": track.peak_percent,
        "gpus": [g.evidence() for g in track.latest],
    }


def record_warning(
    db: Session, server: Server, track: IdleTrack, rule: IdleRule, *, source: str, now: datetime
) -> Notice | None:
    """The warning into the outbox (to the server's owner; to the project's lead and contact
    when the owner has no address) with its audit row; None if it was decided before."""
    key = warning_key(server, track)
    decided = db.scalar(
        select(Notice.id).where(
            Notice.project_id == server.project_id,
            Notice.kind == NOTICE_KIND,
            Notice.key == key,
        )
    )
    if decided is not None:
        return None
    recipients = (
        [server.email] if server.email else notifications.recipients_of(db, server.project_id)
    )
    subject, body = warning_text(server, track, rule)
    notice = Notice(
        project_id=server.project_id,
        kind=NOTICE_KIND,
        key=key,
        status=NoticeStatus.PENDING,
        recipients=",".join(recipients),
        subject=subject,
        body=body,
        created_at=now,
    )
    db.add(notice)
    audit.record(
        db,
        actor=ACTOR,
        action="gpu_idle.warn",
        subject_type="usage_session",
        subject_id=server.session_id,
        at=now,
        stop_due_at=track.stop_due_at(rule),
        **evidence(server, track, rule, source, now),
    )
    return notice


def record_stop(
    db: Session, server: Server, track: IdleTrack, rule: IdleRule, *, source: str, now: datetime
) -> bool:
    """The stop's reason on the session, with its audit row; False if the session closed
    meanwhile (then there is nothing to stop)."""
    session = db.get(UsageSession, server.session_id, with_for_update=True)
    if session is None or session.stopped_at is not None:
        return False
    if not session.stop_reason:
        session.stop_reason = GPU_IDLE.message
    audit.record(
        db,
        actor=ACTOR,
        action="gpu_idle.stop",
        subject_type="usage_session",
        subject_id=server.session_id,
        at=now,
        warned_at=track.warned_at,
        **evidence(server, track, rule, source, now),
    )
    return True


StopServer = Callable[[str, str], Awaitable[bool]]


class GPUIdleCuller:
    """The periodic job. ``stop_server(username, server_name)`` asks the hub to stop a
    server (``HubAPI.stop_server``). Re-running it is safe: a warning is decided once per
    idle stretch, and a stop already decided is only asked of the hub again until the
    server's session closes."""

    def __init__(
        self,
        source: GPUSource,
        rule: IdleRule,
        factory: sessionmaker[Session],
        stop_server: StopServer,
        *,
        pod_name_template: str = KUBE_POD_NAME_TEMPLATE,
    ):
        self.source, self.rule, self.factory = source, rule, factory
        self.stop_server, self.pod_name_template = stop_server, pod_name_template
        self.tracks: dict[int, IdleTrack] = {}  # by session id

    async def run_once(self, now: datetime | None = None) -> dict[int, IdleTrack]:
        now = now or utcnow()
        with self.factory() as db:
            servers = open_servers(db)
        # a server no longer metered is forgotten: its session closed
        self.tracks = {
            s.session_id: self.tracks[s.session_id] for s in servers if s.session_id in self.tracks
        }
        if not servers:
            return {}
        samples = await self.source.sample({s.gpu_vendor for s in servers})
        for server in servers:
            before = self.tracks.get(server.session_id, IdleTrack())
            gpus = gpus_of(server, samples, pod_name_template=self.pod_name_template)
            after = decide(before, gpus, now=now, rule=self.rule)
            await self._act(server, before, after, now)
            self.tracks[server.session_id] = after
        return dict(self.tracks)

    async def _act(self, server: Server, before: IdleTrack, after: IdleTrack, now: datetime):
        if after.state is IdleState.WARNED and before.state is not IdleState.WARNED:
            with transaction(self.factory) as db:
                record_warning(db, server, after, self.rule, source=self.source.name, now=now)
            log.info(
                "GPU-idle: warned %s, idle since %s, stop due at %s",
                server.label,
                after.idle_since.isoformat(),
                after.stop_due_at(self.rule).isoformat(),
            )
        elif after.state is IdleState.STOPPING:
            if before.state is not IdleState.STOPPING:
                with transaction(self.factory) as db:
                    due = record_stop(
                        db, server, after, self.rule, source=self.source.name, now=now
                    )
                if not due:
                    return
                log.info(
                    "GPU-idle: stopping %s, idle for %s s",
                    server.label,
                    int(after.idle_for(now).total_seconds()),
                )
            # asked again at every run until the session closes (the hub may have refused)
            await self.stop_server(server.username, server.server_name)
        elif before.state is IdleState.WARNED and after.state is not IdleState.WARNED:
            log.info("GPU-idle: %s is in use again; its count starts over", server.label)
