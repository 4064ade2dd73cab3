"""The scheduled banned-model scan on Kubernetes: scan pods that mount each person's volumes.

No Kubernetes API server can run on these machines, so ``FakeCluster`` stands in for it: it
answers the requests that ``spawner.kube.KubeScanPods`` sends (list claims and pods by label
selector, create a pod, 409 for a second one of the same name, read a log, delete) and records
them. What the kubelet would do is done by the test: ``run_scan`` runs the pod's own command
(the real ``aipower-scan-models``) over copies of the sample models standing for the mounted
volumes, and gives the pod the exit status and log that command produced. Scheduling and
volume attachment are not simulated; the pods sent are validated against the Kubernetes
schema (``kubernetes-validate --strict``). The database is real (SQLite and PostgreSQL).
The in-cluster transport itself is checked against a local HTTPS server with a throw-away
certificate, standing in for the API server (JSON bodies, a text log, the token re-read).
"""

from __future__ import annotations

import copy
import json
import shutil
import ssl
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest
from kubespawner.slugs import is_valid_label, safe_slug

from hub_config.seed import seed_demo
from quota_service import banned_models, model_scans
from quota_service import db as database
from quota_service.models import AuditEvent, Project, ProjectStatus
from spawner import kube
from spawner.kube import SCAN_ROOT, KubeScanPods, ScanPodSettings, scan_pod_name
from tests.conftest import at
from tests.kube_offline import validate

NAMESPACE = "aipower"
SAMPLES = Path(__file__).parent / "data" / "models"
DAY = timedelta(days=1)
DEADLINE = timedelta(minutes=30)
IMAGE = "registry.example.tw/aipower/hub:2026.11"
RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}
GPU_NODE_TOLERATIONS = [
    {"key": "hub.jupyter.org/dedicated", "operator": "Equal", "value": "user", "effect": "NoSchedule"},
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
]  # fmt: skip


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(obj: dict, query: dict) -> bool:
    (selector,) = query["labelSelector"]
    wanted = dict(term.split("=") for term in unquote(selector).split(","))
    return wanted.items() <= obj["metadata"].get("labels", {}).items()


class FakeCluster:
    """The API server's side of KubeScanPods' requests, for one namespace."""

    def __init__(self):
        self.now = at("2026-11-28 03:00")
        self.claims: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.logs: dict[str, str] = {}
        self.volumes: dict[str, Path] = {}  # claim -> what is on the volume
        self.created: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.failing_deletes = 0

    def __call__(self, method: str, path: str, body: dict | None = None):
        self.requests.append((method, path))
        path, _, query = path.partition("?")
        prefix = f"/api/v1/namespaces/{NAMESPACE}/"
        assert path.startswith(prefix)
        kind, _, rest = path[len(prefix) :].partition("/")
        params = parse_qs(query)
        if kind == "persistentvolumeclaims" and method == "GET" and not rest:
            return 200, {"items": [c for c in self.claims.values() if matches(c, params)]}
        assert kind == "pods", path
        if method == "GET" and not rest:
            return 200, {
                "items": [copy.deepcopy(p) for p in self.pods.values() if matches(p, params)]
            }
        if method == "POST":
            validate(body)
            name = body["metadata"]["name"]
            if name in self.pods:
                return 409, {"reason": "AlreadyExists"}
            self.created.append(copy.deepcopy(body))
            pod = copy.deepcopy(body)
            pod["metadata"]["creationTimestamp"] = stamp(self.now)
            pod["status"] = {"phase": "Pending"}
            self.pods[name] = pod
            return 201, pod
        name = unquote(rest.removesuffix("/log"))
        if method == "GET" and rest.endswith("/log"):
            assert params["container"] == ["scan"]
            return (200, self.logs[name]) if name in self.logs else (404, {})
        assert method == "DELETE"
        if self.failing_deletes:
            self.failing_deletes -= 1
            return 503, {}
        self.logs.pop(name, None)
        return (200, {}) if self.pods.pop(name, None) is not None else (404, {})

    # ---- what the rest of the cluster does -----------------------------------------------

    def home(self, username: str, claim: str, *samples: str, tmp: Path) -> None:
        """A volume claim as KubeSpawner labels it, holding copies of sample models."""
        self.claims[claim] = {
            "metadata": {
                "name": claim,
                "labels": {"component": "singleuser-storage", "hub.jupyter.org/username": username},
            }
        }
        volume = tmp / "volumes" / claim
        volume.mkdir(parents=True)
        for sample in samples:
            shutil.copytree(SAMPLES / sample, volume / "models" / sample)
        self.volumes[claim] = volume

    def server(self, username: str, node: str) -> None:
        self.pods[f"jupyter-{username}"] = {
            "metadata": {
                "name": f"jupyter-{username}",
                "labels": {"component": "singleuser-server", "hub.jupyter.org/username": username},
            },
            "spec": {"nodeName": node, "tolerations": GPU_NODE_TOLERATIONS},
            "status": {"phase": "Running"},
        }

    def run_scan(self, name: str, tmp: Path, started: datetime) -> int:
        """The kubelet's part: the pod's command over its mounted volumes; its exit status
        and output become the pod's status and log."""
        pod = self.pods[name]
        (container,) = pod["spec"]["containers"]
        root = tmp / "mounts" / name
        for mount in container["volumeMounts"]:
            (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
            source = self.volumes[volume["persistentVolumeClaim"]["claimName"]]
            shutil.copytree(source, root / Path(mount["mountPath"]).relative_to(SCAN_ROOT))
        command = container["command"]
        assert command[:2] == ["aipower-scan-models", SCAN_ROOT]
        done = subprocess.run(
            [sys.executable, "-m", "quota_service.banned_models", str(root), *command[2:]],
            capture_output=True,
            text=True,
        )
        self.end(name, done.returncode, started, log=done.stderr + done.stdout)
        return done.returncode

    def end(self, name: str, exit_code: int, started: datetime, log: str = "", reason: str = ""):
        pod = self.pods[name]
        pod["status"] = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "scan",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "startedAt": stamp(started),
                            "finishedAt": stamp(started + timedelta(seconds=40)),
                            "reason": "Completed" if exit_code == 0 else "Error",
                        }
                    },
                }
            ],
        }
        if reason:
            pod["status"]["reason"] = reason
        self.logs[name] = log


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def seeded(session_factory):
    with database.transaction(session_factory) as db:
        seed_demo(db, now=at("2026-11-01 09:00"))
    return session_factory


def scanner(cluster: FakeCluster, rules: list[dict] | None = None) -> model_scans.PodScans:
    settings = ScanPodSettings(
        image=IMAGE,
        rules=banned_models.DEFAULT_RULES if rules is None else rules,
        deadline=DEADLINE,
        resources=RESOURCES,
        uid=1000,
        gid=100,
    )
    pods = KubeScanPods(NAMESPACE, settings, transport=cluster)
    return model_scans.PodScans(pods, deadline=DEADLINE)


def run(session_factory, cluster: FakeCluster, now: datetime, rules=None) -> list[str]:
    cluster.now = now
    return scanner(cluster, rules).scan_due(session_factory, now=now, every=DAY)


def scans(session_factory) -> list[AuditEvent]:
    with database.transaction(session_factory) as db:
        events = db.query(AuditEvent).filter_by(action=model_scans.SCANNED).order_by(AuditEvent.id)
        return [(e.subject_id, e.at, e.detail) for e in events]


def latest(session_factory) -> model_scans.LatestScan:
    with database.transaction(session_factory) as db:
        (scan,) = model_scans.latest_scans(db)
    return scan


# ---- phase 1: the scan pod -----------------------------------------------------------------


def test_the_scan_pod_mounts_the_home_read_only_without_token_or_network_on_the_servers_node(
    seeded, cluster, tmp_path
):
    cluster.home("trainee", "aipower-home-trainee", "qwen2-7b", tmp=tmp_path)
    cluster.server("trainee", node="gpu-a1")
    assert run(seeded, cluster, at("2026-11-28 03:00")) == []  # started, nothing recorded yet
    (pod,) = cluster.created
    spec = pod["spec"]
    assert pod["metadata"]["name"] == scan_pod_name("trainee") == "aipower-scan-trainee"
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "aipower-hub",
        "app.kubernetes.io/component": "model-scan",
        "hub.jupyter.org/username": "trainee",
    }
    assert pod["metadata"]["annotations"] == {"aipower.tw/username": "trainee"}
    (volume,) = spec["volumes"]
    assert volume["persistentVolumeClaim"] == {
        "claimName": "aipower-home-trainee",
        "readOnly": True,
    }
    (container,) = spec["containers"]
    (mount,) = container["volumeMounts"]
    assert mount == {
        "name": volume["name"],
        "mountPath": "/homes/aipower-home-trainee",
        "readOnly": True,
    }
    assert container["image"] == IMAGE and container["resources"] == RESOURCES
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (
        1000,
        100,
    )
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 1800
    # pinned to the node of the running server, with the tolerations that let it run there
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term == {
        "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-a1"]}]
    }
    assert spec["tolerations"] == GPU_NODE_TOLERATIONS


def test_without_a_running_server_the_pod_goes_where_the_scheduler_puts_it(
    seeded, cluster, tmp_path
):
    cluster.home("trainee", "aipower-home-trainee", tmp=tmp_path)
    cluster.server("trainee", node="gpu-a1")
    cluster.pods["jupyter-trainee"]["status"]["phase"] = "Succeeded"  # a stopped server
    run(seeded, cluster, at("2026-11-28 03:00"))
    (pod,) = cluster.created
    assert "affinity" not in pod["spec"] and "tolerations" not in pod["spec"]


@pytest.mark.parametrize("username", ["王小明@example.tw", "Trainee.Two", "a" * 70])
def test_any_username_makes_a_valid_pod_that_names_the_person(cluster, username):
    pods = scanner(cluster).pods
    assert pods.create(username, ["aipower-home-x"]) is True
    (pod,) = cluster.created  # validated by FakeCluster against the Kubernetes schema
    slug = safe_slug(username, is_valid=is_valid_label)
    assert pod["metadata"]["labels"]["hub.jupyter.org/username"] == slug
    assert pod["metadata"]["name"] == f"aipower-scan-{slug}"
    (state,) = pods.scan_pods()
    assert state.username == username and state.claims == ("aipower-home-x",)
    assert not state.finished
    assert pods.create(username, ["aipower-home-x"]) is False  # the API server's 409


def test_one_scan_pod_per_person_however_often_the_job_runs(seeded, cluster, tmp_path):
    cluster.home("trainee", "aipower-home-trainee", "gemma-2-9b", tmp=tmp_path)
    for minute in ("03:00", "03:05", "03:10"):
        assert run(seeded, cluster, at(f"2026-11-28 {minute}")) == []
    assert [p["metadata"]["name"] for p in cluster.created] == ["aipower-scan-trainee"]
    assert [m for m, _ in cluster.requests].count("POST") == 1
    assert scans(seeded) == []


# ---- phase 2: finished pods ----------------------------------------------------------------


def test_a_finished_scan_is_recorded_with_its_evidence_and_the_pod_deleted(
    seeded, cluster, tmp_path
):
    cluster.home("trainee", "aipower-home-trainee", "qwen2-7b", "gemma-2-9b", tmp=tmp_path)
    run(seeded, cluster, at("2026-11-28 03:00"))
    # exit 1: findings, still a report
    assert (
        cluster.run_scan("aipower-scan-trainee", tmp_path, started=at("2026-11-28 03:00:07")) == 1
    )
    assert run(seeded, cluster, at("2026-11-28 03:05")) == ["trainee"]
    assert "aipower-scan-trainee" not in cluster.pods and cluster.logs == {}
    scan = latest(seeded)
    # the time the scan started: the next one is due a day after it, to the second
    assert scan.at == at("2026-11-28 03:00:07")
    assert scan.flagged and scan.detail["home"] == "pvc aipower/aipower-home-trainee"
    assert scan.detail["home_found"] is True and scan.detail["model_folders"] == 2
    assert scan.detail["flagged_folders"] == ["aipower-home-trainee/models/qwen2-7b"]
    assert scan.detail["project_ids"] and scan.detail["companies"] == ["示範智能股份有限公司"]
    evidence = {(f["field"], f["value"], f["path"]) for f in scan.detail["findings"]}
    assert (
        "architectures",
        "Qwen2ForCausalLM",
        "aipower-home-trainee/models/qwen2-7b/config.json",
    ) in evidence
    # re-runs: nobody due, no pod, no second record; a day after the start, a new pod
    assert run(seeded, cluster, at("2026-11-28 03:10")) == []
    assert run(seeded, cluster, at("2026-11-29 03:00:06")) == []
    assert len(cluster.created) == 1
    run(seeded, cluster, at("2026-11-29 03:00:07"))
    assert len(cluster.created) == 2 and len(scans(seeded)) == 1


def test_a_clean_home_exits_0_and_is_recorded_clean(seeded, cluster, tmp_path):
    cluster.home("trainee", "aipower-home-trainee", "llama-3.1-8b", "yield-model", tmp=tmp_path)
    run(seeded, cluster, at("2026-11-28 03:00"))
    assert (
        cluster.run_scan("aipower-scan-trainee", tmp_path, started=at("2026-11-28 03:00:05")) == 0
    )
    assert run(seeded, cluster, at("2026-11-28 03:05")) == ["trainee"]
    scan = latest(seeded)
    assert not scan.flagged and scan.detail["model_folders"] == 2 and scan.detail["errors"] == []


def test_the_operators_rules_reach_the_pod(seeded, cluster, tmp_path):
    cluster.home("trainee", "aipower-home-trainee", "gemma-2-9b", tmp=tmp_path)
    gemma = [{"name": "gemma", "maker": "Google (test rule)", "patterns": ["gemma-\\d"]}]
    run(seeded, cluster, at("2026-11-28 03:00"), rules=gemma)
    assert (
        cluster.run_scan("aipower-scan-trainee", tmp_path, started=at("2026-11-28 03:00:05")) == 1
    )
    run(seeded, cluster, at("2026-11-28 03:05"))
    assert latest(seeded).detail["rules_matched"] == ["gemma"]


@pytest.mark.parametrize(
    "exit_code, reason, log",
    [
        (2, "", '{"error": "not a folder: /homes"}\n'),  # the scanner's own error
        (137, "DeadlineExceeded", ""),  # killed at activeDeadlineSeconds
        (137, "", ""),  # OOMKilled
        (0, "", "Traceback (most recent call last):\n"),  # no report in the log
    ],
)
def test_a_failed_pod_is_deleted_nothing_recorded_and_the_person_due_again(
    seeded, cluster, tmp_path, caplog, exit_code, reason, log
):
    cluster.home("trainee", "aipower-home-trainee", "qwen2-7b", tmp=tmp_path)
    run(seeded, cluster, at("2026-11-28 03:00"))
    cluster.end(
        "aipower-scan-trainee", exit_code, at("2026-11-28 03:00:05"), log=log, reason=reason
    )
    assert run(seeded, cluster, at("2026-11-28 03:35")) == []
    assert scans(seeded) == [] and "aipower-scan-trainee" in caplog.text
    assert [m for m, _ in cluster.requests].count("DELETE") == 1
    # the same run found the person due again: a new pod (the name is free once deleted)
    assert len(cluster.created) == 2 and "aipower-scan-trainee" in cluster.pods


@pytest.mark.parametrize(
    "log, findings",
    [
        ('{"findings": [], "clean": true}\n', []),
        (
            '<frozen runpy>:128: RuntimeWarning: ...\n{\n  "findings": [{"rule": "qwen"}]\n}\n',
            [{"rule": "qwen"}],
        ),
        ("", None),
        ("[]\n", None),
        ('{"error": "rules: bad"}\n', None),  # exit 2's message, not a report
        ('{"findings": [', None),  # cut short
    ],
)
def test_the_report_is_read_from_the_log_past_any_warning(log, findings):
    report = model_scans.parse_report(log)
    assert (report["findings"] if report is not None else None) == findings


def test_a_pod_never_scheduled_is_given_up_after_its_deadline_and_grace(seeded, cluster, tmp_path):
    cluster.home("trainee", "aipower-home-trainee", tmp=tmp_path)
    run(seeded, cluster, at("2026-11-28 03:00"))
    give_up = at("2026-11-28 03:00") + DEADLINE + model_scans.SCHEDULING_GRACE
    run(seeded, cluster, give_up - timedelta(seconds=1))
    assert [m for m, _ in cluster.requests].count("DELETE") == 0
    run(seeded, cluster, give_up)
    assert [m for m, _ in cluster.requests].count("DELETE") == 1 and scans(seeded) == []


def test_a_delete_that_failed_after_recording_never_records_twice(seeded, cluster, tmp_path):
    cluster.home("trainee", "aipower-home-trainee", "qwen2-7b", tmp=tmp_path)
    run(seeded, cluster, at("2026-11-28 03:00"))
    cluster.run_scan("aipower-scan-trainee", tmp_path, started=at("2026-11-28 03:00:05"))
    cluster.failing_deletes = 1
    with pytest.raises(RuntimeError, match="HTTP 503"):
        run(seeded, cluster, at("2026-11-28 03:05"))  # recorded, then the delete failed
    assert len(scans(seeded)) == 1 and "aipower-scan-trainee" in cluster.pods
    assert run(seeded, cluster, at("2026-11-28 03:10")) == []  # the restart-safe re-run
    assert len(scans(seeded)) == 1 and cluster.pods.keys() == set()


def test_a_person_without_a_volume_is_recorded_as_scanned_with_nothing_in_it(seeded, cluster):
    assert run(seeded, cluster, at("2026-11-28 03:00")) == ["trainee"]
    assert cluster.created == []
    scan = latest(seeded)
    assert scan.detail["home_found"] is False and scan.detail["home"] == "pvc aipower/(none)"
    assert not scan.flagged


def test_a_person_no_longer_due_when_the_pod_ends_is_not_recorded(seeded, cluster, tmp_path):
    cluster.home("trainee", "aipower-home-trainee", "qwen2-7b", tmp=tmp_path)
    run(seeded, cluster, at("2026-11-28 03:00"))
    cluster.run_scan("aipower-scan-trainee", tmp_path, started=at("2026-11-28 03:00:05"))
    with database.transaction(seeded) as db:  # the project closed while the pod ran
        db.query(Project).filter_by(status=ProjectStatus.APPROVED).update(
            {"status": ProjectStatus.CLOSED}
        )
    assert run(seeded, cluster, at("2026-11-28 03:05")) == []
    assert scans(seeded) == [] and cluster.pods == {}


# ---- the in-cluster transport: JSON bodies out, JSON or text back ---------------------------


class APIServerStandIn(BaseHTTPRequestHandler):
    """Over TLS like the API server: the pod create echoed as JSON, a log as text/plain."""

    seen: list[tuple[str, str, str, dict | None]] = []

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        sent = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, self.headers["Authorization"], sent))
        assert self.headers["Content-Type"] == "application/json"
        self._answer(201, json.dumps(sent).encode(), "application/json")

    def do_GET(self):
        self.seen.append(("GET", self.path, self.headers["Authorization"], None))
        if self.path.endswith("/log?container=scan"):
            self._answer(200, b'{"findings": []}\n', "text/plain")
        else:
            self._answer(403, b'{"kind": "Status"}', "application/json")

    def log_message(self, *args):
        pass


def test_the_in_cluster_transport_posts_json_and_reads_logs_as_text(tmp_path, monkeypatch):
    account = tmp_path / "serviceaccount"
    account.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=kubernetes", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(account / "ca.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    (account / "token").write_text("token-1\n")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(account / "ca.crt", tmp_path / "key.pem")
    server = HTTPServer(("127.0.0.1", 0), APIServerStandIn)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", str(account))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
    APIServerStandIn.seen = []
    try:
        settings = ScanPodSettings(IMAGE, [], DEADLINE, RESOURCES, uid=1000, gid=100)
        pods = KubeScanPods(NAMESPACE, settings)  # the pod's service account transport
        pod = kube.scan_pod("trainee", ["aipower-home-trainee"], settings)
        assert pods.transport("POST", pods.path("pods"), pod) == (201, pod)
        (account / "token").write_text("token-2\n")  # rotated by the kubelet: read each time
        assert pods.log("aipower-scan-trainee") == '{"findings": []}\n'
        with pytest.raises(RuntimeError, match="HTTP 403"):
            pods.scan_pods()
    finally:
        server.shutdown()
    assert [(m, p, a) for m, p, a, _ in APIServerStandIn.seen] == [
        ("POST", "/api/v1/namespaces/aipower/pods", "Bearer token-1"),
        (
            "GET",
            "/api/v1/namespaces/aipower/pods/aipower-scan-trainee/log?container=scan",
            "Bearer token-2",
        ),
        (
            "GET",
            "/api/v1/namespaces/aipower/pods?labelSelector=app.kubernetes.io%2Fname%3Daipower-hub"
            "%2Capp.kubernetes.io%2Fcomponent%3Dmodel-scan",
            "Bearer token-2",
        ),
    ]
