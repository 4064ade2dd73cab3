"""The quota service: a JupyterHub-managed tornado application.

Started by the hub (``c.JupyterHub.services``), it reads the JupyterHub service
environment (``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX``,
``JUPYTERHUB_API_URL``, ``JUPYTERHUB_API_TOKEN``) and its own settings from a config
file or the environment variables named in each trait's help.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlparse

from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback
from tornado.web import Application as WebApplication
from traitlets import Bool, Bytes, Dict, Enum, Integer, List, Unicode, default, validate
from traitlets.config import Application

from . import (
    applications,
    closing,
    gpu_idle,
    handlers,
    i18n,
    idle_rule,
    lifecycle,
    metering,
    model_scans,
    notifications,
    review,
)
from . import db as database
from .awards import AwardSettings
from .banned_models import BannedModels
from .hub_api import HubAPI
from .metrics import ServiceMetrics
from .timewindow import utcnow


def _when(iso: str | None) -> str:
    """An ISO time from the read models, as people read it: 2026-11-28 11:47:06 (Taipei)."""
    return "—" if not iso else iso[:19].replace("T", " ")


@pass_context
def _bilingual(context, text: str) -> str:
    """A domain's "中文 / English" text in the page's language."""
    return context["translator"].bilingual(text)


class QuotaService(Application):
    name = "aipower-quota-service"

    @default("log_level")
    def _default_log_level(self):
        return logging.INFO

    description = "aipower-hub quota service: projects, points ledger, metering"

    config_file = Unicode(
        "",
        help="Python config file to load (e.g. /srv/aipower/quota_config.py).",
    ).tag(config=True)

    db_url = Unicode(
        help="""Database URL. SQLite by default, PostgreSQL for production, e.g.
        ``postgresql://quota:secret@db.internal:5432/quota``. Env: AIPOWER_QUOTA_DB_URL.""",
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return os.environ.get("AIPOWER_QUOTA_DB_URL", "sqlite:///quota.sqlite")

    metering_interval = Integer(
        help="""Seconds between metering passes, and the length of a charged interval,
        e.g. 60. Env: AIPOWER_METERING_INTERVAL.""",
    ).tag(config=True)

    @default("metering_interval")
    def _default_metering_interval(self):
        return int(os.environ.get("AIPOWER_METERING_INTERVAL", "60"))

    @validate("metering_interval")
    def _check_interval(self, proposal):
        if not 1 <= proposal.value <= 3600:
            raise ValueError("metering_interval must be between 1 and 3600 seconds")
        return proposal.value

    service_prefix = Unicode(
        help="URL prefix the proxy routes to the service, e.g. /services/quota/.",
    ).tag(config=True)

    @default("service_prefix")
    def _default_prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/quota/")

    service_url = Unicode(
        help="Where the service listens, e.g. http://127.0.0.1:10101.",
    ).tag(config=True)

    @default("service_url")
    def _default_service_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    notice_interval = Integer(
        help="""Seconds between runs of the notice job (low-balance warnings, window
        reminders), e.g. 300. Env: AIPOWER_NOTICE_INTERVAL.""",
    ).tag(config=True)

    @default("notice_interval")
    def _default_notice_interval(self):
        return int(os.environ.get("AIPOWER_NOTICE_INTERVAL", "300"))

    low_balance_percents = List(
        Integer(),
        [20, 5],
        help="Warn when the balance falls to these percentages of the points awarded, e.g. [20, 5].",
    ).tag(config=True)

    window_reminder_days = List(
        Integer(),
        [14, 7, 1],
        help="Remind this many days before the window ends, e.g. [14, 7, 1].",
    ).tag(config=True)

    idle_counting = Enum(
        [idle_rule.CUMULATIVE, idle_rule.CONSECUTIVE],
        idle_rule.CUMULATIVE,
        help="""How the idle-allocation rule counts a project's unused weeks, e.g.
        "cumulative" (every unused week of the window so far; the default) or "consecutive"
        (the current run of unused weeks). See docs/rules-of-use.md.""",
    ).tag(config=True)

    idle_min_gpu_minutes = Integer(
        0,
        help="""GPU-minutes of metered use that make a week "used" for the idle-allocation
        rule, e.g. 60 (one GPU-hour); 0, the default: any use at all.""",
    ).tag(config=True)

    @validate("idle_min_gpu_minutes")
    def _check_idle_min_gpu_minutes(self, proposal):
        if not 0 <= proposal.value <= 7 * 24 * 60:
            raise ValueError("idle_min_gpu_minutes must be between 0 and 10080 (a GPU-week)")
        return proposal.value

    idle_nudges = List(
        Unicode(),
        ["1/4", "3/8"],
        help="""Reminders before the idle-allocation notice, as fractions of the window's
        weeks unused, e.g. ["1/4", "3/8"] (4 and 5 unused weeks of 13); [] for none. Each at
        most 1/2 (the notice itself comes at more than half).""",
    ).tag(config=True)

    @validate("idle_nudges")
    def _check_idle_nudges(self, proposal):
        for text in proposal.value:
            try:
                level = Fraction(text)
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"idle_nudges: {text!r} is not a fraction like 1/4") from None
            if not 0 < level <= Fraction(1, 2):
                raise ValueError(f"idle_nudges: {text} is not between 0 and 1/2")
        return proposal.value

    idle_grace_days = Integer(
        3,
        help="""Calendar days, counted from the day after the idle-allocation notice (Asia/
        Taipei), by whose end use must resume, e.g. 3 (the rules of use): a notice on day D
        leaves until D+3 23:59:59.""",
    ).tag(config=True)

    @validate("idle_grace_days")
    def _check_idle_grace_days(self, proposal):
        if not 1 <= proposal.value <= 30:
            raise ValueError("idle_grace_days must be between 1 and 30")
        return proposal.value

    @property
    def idle_reading(self) -> idle_rule.Reading:
        return idle_rule.Reading(
            counting=self.idle_counting,
            min_gpu_minutes=self.idle_min_gpu_minutes,
            nudges=tuple(Fraction(n) for n in self.idle_nudges),
            grace_days=self.idle_grace_days,
        )

    smtp_host = Unicode(
        help="""SMTP server for notices, e.g. smtp.example.gov.tw; empty: notices wait in
        the outbox. Env: AIPOWER_SMTP_HOST.""",
    ).tag(config=True)

    @default("smtp_host")
    def _default_smtp_host(self):
        return os.environ.get("AIPOWER_SMTP_HOST", "")

    smtp_port = Integer(
        help="SMTP port, e.g. 587. Env: AIPOWER_SMTP_PORT.",
    ).tag(config=True)

    @default("smtp_port")
    def _default_smtp_port(self):
        return int(os.environ.get("AIPOWER_SMTP_PORT", "25"))

    smtp_starttls = Bool(
        help="Use STARTTLS, e.g. True in production. Env: AIPOWER_SMTP_STARTTLS=1.",
    ).tag(config=True)

    @default("smtp_starttls")
    def _default_smtp_starttls(self):
        return os.environ.get("AIPOWER_SMTP_STARTTLS", "0") == "1"

    smtp_username = Unicode(
        help="SMTP user, e.g. aipower-notices. Env: AIPOWER_SMTP_USERNAME.",
    ).tag(config=True)

    @default("smtp_username")
    def _default_smtp_username(self):
        return os.environ.get("AIPOWER_SMTP_USERNAME", "")

    smtp_password = Unicode(
        help="SMTP password. Env: AIPOWER_SMTP_PASSWORD. Never logged.",
    ).tag(config=True)

    @default("smtp_password")
    def _default_smtp_password(self):
        return os.environ.get("AIPOWER_SMTP_PASSWORD", "")

    mail_from = Unicode(
        help="Sender of notices, e.g. 'AI 算力平台 <noreply@aipower.example.tw>'. Env: AIPOWER_MAIL_FROM.",
    ).tag(config=True)

    @default("mail_from")
    def _default_mail_from(self):
        return os.environ.get("AIPOWER_MAIL_FROM", "AI 算力平台 <noreply@aipower.example.tw>")

    homes_dir = Unicode(
        help="""Folder of the people's home folders on this machine, which the end-of-window
        purge clears, e.g. /srv/aipower/state/homes; empty: no local purge (on Kubernetes the
        volumes are deleted instead). Env: AIPOWER_HOMES_DIR.""",
    ).tag(config=True)

    @default("homes_dir")
    def _default_homes_dir(self):
        return os.environ.get("AIPOWER_HOMES_DIR", "")

    volumes_namespace = Unicode(
        help="""Kubernetes namespace whose per-person home volumes the end-of-window purge
        deletes (the chart sets POD_NAMESPACE), e.g. aipower; takes precedence over
        homes_dir. Env: AIPOWER_VOLUMES_NAMESPACE, else POD_NAMESPACE.""",
    ).tag(config=True)

    @default("volumes_namespace")
    def _default_volumes_namespace(self):
        return os.environ.get("AIPOWER_VOLUMES_NAMESPACE") or os.environ.get("POD_NAMESPACE", "")

    model_scan_hours = Integer(
        24,
        help="""Hours between scans of each project member's home for banned models (their
        folder under homes_dir, or on Kubernetes their volumes, see model_scan_image), e.g. 24;
        0 turns the scan off. Env: AIPOWER_MODEL_SCAN_HOURS.""",
    ).tag(config=True)

    @default("model_scan_hours")
    def _default_model_scan_hours(self):
        return int(os.environ.get("AIPOWER_MODEL_SCAN_HOURS", "24"))

    @validate("model_scan_hours")
    def _check_model_scan_hours(self, proposal):
        if proposal.value < 0:
            raise ValueError("model_scan_hours cannot be negative (0 turns the scan off)")
        return proposal.value

    model_scan_image = Unicode(
        help="""On Kubernetes (volumes_namespace set): the image of the pods that scan each
        person's volumes, one that has ``aipower-scan-models`` (the hub image), e.g.
        "ghcr.io/aipower-hub/hub:0.1.0"; empty: no scan on Kubernetes. Env:
        AIPOWER_MODEL_SCAN_IMAGE.""",
    ).tag(config=True)

    @default("model_scan_image")
    def _default_model_scan_image(self):
        return os.environ.get("AIPOWER_MODEL_SCAN_IMAGE", "")

    model_scan_deadline = Integer(
        1800,
        help="""Seconds a scan pod may run (its activeDeadlineSeconds), e.g. 1800; a pod that
        runs out is deleted and its person scanned again at the next housekeeping run.""",
    ).tag(config=True)

    @validate("model_scan_deadline")
    def _check_model_scan_deadline(self, proposal):
        if proposal.value < 60:
            raise ValueError("model_scan_deadline is at least 60 seconds")
        return proposal.value

    model_scan_resources = Dict(
        help="""Kubernetes resources of a scan pod, e.g. {"requests": {"cpu": "100m",
        "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}} (the default).""",
    ).tag(config=True)

    @default("model_scan_resources")
    def _default_model_scan_resources(self):
        return {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        }

    @validate("model_scan_resources")
    def _check_model_scan_resources(self, proposal):
        if not proposal.value.get("limits"):
            raise ValueError(
                'model_scan_resources needs limits, e.g. {"limits": {"memory": "512Mi"}}'
            )
        return proposal.value

    model_scan_uid = Integer(
        1000,
        help="""User id a scan pod runs as: the servers' (z2jh singleuser.uid), so that it
        reads what their owners can, e.g. 1000; never 0.""",
    ).tag(config=True)

    model_scan_gid = Integer(
        100,
        help="""Group id a scan pod runs as: the servers' file group (z2jh singleuser.fsGid),
        e.g. 100.""",
    ).tag(config=True)

    @validate("model_scan_uid")
    def _check_model_scan_uid(self, proposal):
        if proposal.value <= 0:
            raise ValueError("scan pods never run as root: model_scan_uid must be above 0")
        return proposal.value

    purge_grace_days = Integer(
        0,
        help="""Days after the window ends before storage is purged, e.g. 0 (the guideline:
        cleared at the end of the window).""",
    ).tag(config=True)

    audit_retention_days = Integer(
        1096,
        help="""Days audit records are kept, e.g. 1096 (three years, the guideline's minimum;
        smaller values are refused).""",
    ).tag(config=True)

    @validate("audit_retention_days")
    def _check_retention(self, proposal):
        if timedelta(days=proposal.value) < lifecycle.AUDIT_RETENTION_MINIMUM:
            raise ValueError("audit records are kept at least three years (1096 days)")
        return proposal.value

    files_dir = Unicode(
        help="""Folder for uploaded files (closing reports, slides, applications' supporting
        files), kept outside the database, e.g. /srv/aipower/state/files. Default: a ``files``
        folder next to the SQLite database; with PostgreSQL, in AIPOWER_STATE_DIR (else the
        working folder). Env: AIPOWER_FILES_DIR.""",
    ).tag(config=True)

    @default("files_dir")
    def _default_files_dir(self):
        if os.environ.get("AIPOWER_FILES_DIR"):
            return os.environ["AIPOWER_FILES_DIR"]
        url = self.db_url
        if url.startswith("sqlite:///") and ":memory:" not in url:
            return str(Path(url.removeprefix("sqlite:///")).resolve().parent / "files")
        return str(Path(os.environ.get("AIPOWER_STATE_DIR", ".")).resolve() / "files")

    closing_max_file_mb = Integer(
        help="""Largest final-report or slides file, in MB of 1,048,576 bytes, e.g. 50. The
        HTTP server takes request bodies up to twice this plus 1 MB (both files in one form).
        Env: AIPOWER_CLOSING_MAX_MB.""",
    ).tag(config=True)

    @default("closing_max_file_mb")
    def _default_closing_max_file_mb(self):
        return int(os.environ.get("AIPOWER_CLOSING_MAX_MB", "50"))

    @validate("closing_max_file_mb")
    def _check_closing_max_file_mb(self, proposal):
        if not 1 <= proposal.value <= 1024:
            raise ValueError("closing_max_file_mb must be between 1 and 1024")
        return proposal.value

    closing_file_types = List(
        Unicode(),
        ["pdf", "pptx", "odp", "docx"],
        help="""File types (extensions) accepted for the final report and the slides, e.g.
        ["pdf", "pptx", "odp", "docx"]. PDF, DOCX, PPTX, ODP and ODT files are also checked by
        their content.""",
    ).tag(config=True)

    application_max_file_mb = Integer(
        help="""Largest supporting file of an application (the field-partner MOU, the product
        material), in MB of 1,048,576 bytes, e.g. 20. Env: AIPOWER_APPLICATION_MAX_MB.""",
    ).tag(config=True)

    @default("application_max_file_mb")
    def _default_application_max_file_mb(self):
        return int(os.environ.get("AIPOWER_APPLICATION_MAX_MB", "20"))

    @validate("application_max_file_mb")
    def _check_application_max_file_mb(self, proposal):
        if not 1 <= proposal.value <= 1024:
            raise ValueError("application_max_file_mb must be between 1 and 1024")
        return proposal.value

    application_file_types = List(
        Unicode(),
        ["pdf", "docx", "pptx", "odt", "odp"],
        help="""File types (extensions) accepted as an application's supporting files, e.g.
        ["pdf", "pptx"]. Each file is checked by its content, so only types whose content the
        service can check may be listed: pdf, docx, pptx, odt, odp.""",
    ).tag(config=True)

    @validate("application_file_types")
    def _check_application_file_types(self, proposal):
        types = [t.lower().lstrip(".") for t in proposal.value]
        unchecked = sorted(set(types) - set(closing.SNIFF))
        if unchecked or not types:
            raise ValueError(
                f"application_file_types: {unchecked or 'none'} cannot be checked by content; "
                f"choose from {sorted(closing.SNIFF)}"
            )
        return types

    @property
    def max_body_size(self) -> int:
        """The largest request body: two files of the largest size (a closing form or an
        application form) and the form fields."""
        largest = max(self.closing_max_file_mb, self.application_max_file_mb)
        return (2 * largest + 1) * 1024 * 1024

    cookie_secret = Bytes(
        help="""Secret that signs the service's cookies (hex in the environment), kept across
        restarts so that people stay signed in to its pages, e.g. the output of
        ``openssl rand -hex 32``. Env: AIPOWER_QUOTA_COOKIE_SECRET. Default: random per start.""",
    ).tag(config=True)

    @default("cookie_secret")
    def _default_cookie_secret(self):
        secret = os.environ.get("AIPOWER_QUOTA_COOKIE_SECRET", "")
        return bytes.fromhex(secret) if secret else os.urandom(32)

    # ---- GPU-utilisation culling (docs/gpu-idle.md) ----------------------------------

    gpu_idle_source = Unicode(
        help="""Where GPU utilisation comes from: "local" (the vendor tools of this machine,
        gpu_idle_commands: the embedded default), "prometheus" (gpu_idle_prometheus_url: on
        Kubernetes) or "" (no GPU-utilisation culling), e.g. "prometheus".
        Env: AIPOWER_GPU_IDLE_SOURCE.""",
    ).tag(config=True)

    @default("gpu_idle_source")
    def _default_gpu_idle_source(self):
        return os.environ.get("AIPOWER_GPU_IDLE_SOURCE", "local")

    @validate("gpu_idle_source")
    def _check_gpu_idle_source(self, proposal):
        if proposal.value not in ("local", "prometheus", ""):
            raise ValueError('gpu_idle_source is "local", "prometheus" or ""')
        return proposal.value

    gpu_idle_interval = Integer(
        help="""Seconds between GPU-utilisation samples, e.g. 60; also the window over which
        Prometheus is asked for each GPU's highest utilisation. Env: AIPOWER_GPU_IDLE_INTERVAL.""",
    ).tag(config=True)

    @default("gpu_idle_interval")
    def _default_gpu_idle_interval(self):
        return int(os.environ.get("AIPOWER_GPU_IDLE_INTERVAL", "60"))

    @validate("gpu_idle_interval")
    def _check_gpu_idle_interval(self, proposal):
        if not 1 <= proposal.value <= 3600:
            raise ValueError("gpu_idle_interval must be between 1 and 3600 seconds")
        return proposal.value

    gpu_idle_threshold_percent = Integer(
        help="""A GPU under this utilisation (percent) is idle, e.g. 5; a server is idle when
        all its GPUs are. Env: AIPOWER_GPU_IDLE_THRESHOLD.""",
    ).tag(config=True)

    @default("gpu_idle_threshold_percent")
    def _default_gpu_idle_threshold(self):
        return int(os.environ.get("AIPOWER_GPU_IDLE_THRESHOLD", "5"))

    @validate("gpu_idle_threshold_percent")
    def _check_gpu_idle_threshold(self, proposal):
        if not 1 <= proposal.value <= 100:
            raise ValueError("gpu_idle_threshold_percent must be between 1 and 100")
        return proposal.value

    gpu_idle_warn_after = Integer(
        help="""Seconds of idle GPUs after which the server's owner is warned by e-mail, e.g.
        1800. Env: AIPOWER_GPU_IDLE_WARN_AFTER.""",
    ).tag(config=True)

    @default("gpu_idle_warn_after")
    def _default_gpu_idle_warn_after(self):
        return int(os.environ.get("AIPOWER_GPU_IDLE_WARN_AFTER", "1800"))

    gpu_idle_stop_after = Integer(
        help="""Seconds of idle GPUs after which the server is stopped, e.g. 3600; longer
        than gpu_idle_warn_after, and never less than their difference after the warning.
        Env: AIPOWER_GPU_IDLE_STOP_AFTER.""",
    ).tag(config=True)

    @default("gpu_idle_stop_after")
    def _default_gpu_idle_stop_after(self):
        return int(os.environ.get("AIPOWER_GPU_IDLE_STOP_AFTER", "3600"))

    gpu_idle_commands = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="""The local source's command per vendor, e.g. {"nvidia": ["nvidia-smi",
        "--query-gpu=index,uuid,utilization.gpu,memory.used",
        "--format=csv,noheader,nounits"], "amd": ["amd-smi", "metric", "--usage", "--json"]};
        ["rocm-smi", "--showuse", "--json"] is read too. Env: AIPOWER_GPU_IDLE_COMMANDS, a JSON
        object whose vendors replace the defaults'.""",
    ).tag(config=True)

    @default("gpu_idle_commands")
    def _default_gpu_idle_commands(self):
        return gpu_idle.DEFAULT_COMMANDS | json.loads(
            os.environ.get("AIPOWER_GPU_IDLE_COMMANDS", "{}")
        )

    gpu_idle_command_timeout = Integer(
        20,
        help="Seconds a local GPU tool may take before its answer counts as no data, e.g. 20.",
    ).tag(config=True)

    gpu_idle_prometheus_url = Unicode(
        help="""Prometheus' instant-query endpoint, e.g.
        http://prometheus-operated.monitoring:9090/api/v1/query (an exporter's /metrics page,
        which answers in the text format, is read too). Env: AIPOWER_GPU_IDLE_PROMETHEUS_URL.""",
    ).tag(config=True)

    @default("gpu_idle_prometheus_url")
    def _default_gpu_idle_prometheus_url(self):
        return os.environ.get("AIPOWER_GPU_IDLE_PROMETHEUS_URL", "")

    gpu_idle_prometheus_metrics = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={"nvidia": "DCGM_FI_DEV_GPU_UTIL", "amd": "gpu_gfx_activity"},
        help="""The utilisation metric (percent) per vendor, e.g. {"nvidia":
        "DCGM_FI_DEV_GPU_UTIL", "amd": "gpu_gfx_activity"} (the DCGM exporter's and AMD's
        device metrics exporter's; with the AMD exporter's MetricsFieldPrefix "amd_":
        "amd_gpu_gfx_activity").""",
    ).tag(config=True)

    gpu_idle_pod_label = Unicode(
        "pod",
        help="""The label that names the pod a GPU is given to, e.g. "pod" ("exported_pod"
        when Prometheus scrapes the exporter without honor_labels).""",
    ).tag(config=True)

    gpu_idle_namespace_label = Unicode(
        "namespace",
        help='The label that names that pod\'s namespace, e.g. "namespace" (or "exported_namespace").',
    ).tag(config=True)

    gpu_idle_namespace = Unicode(
        help="""Namespace of the servers' pods on Kubernetes, e.g. aipower; empty: any.
        Env: AIPOWER_GPU_IDLE_NAMESPACE, else POD_NAMESPACE (set by the chart).""",
    ).tag(config=True)

    @default("gpu_idle_namespace")
    def _default_gpu_idle_namespace(self):
        return os.environ.get("AIPOWER_GPU_IDLE_NAMESPACE") or os.environ.get("POD_NAMESPACE", "")

    gpu_idle_pod_name_template = Unicode(
        gpu_idle.KUBE_POD_NAME_TEMPLATE,
        help="""How KubeSpawner names the servers' pods (its pod_name_template, "safe" slug
        scheme), e.g. "jupyter-{user_server}", KubeSpawner's default.""",
    ).tag(config=True)

    def gpu_idle_culler(self) -> gpu_idle.GPUIdleCuller | None:
        """The GPU-utilisation culling job as configured; None when it is off."""
        if not self.gpu_idle_source:
            return None
        rule = gpu_idle.IdleRule(
            threshold_percent=self.gpu_idle_threshold_percent,
            warn_after=timedelta(seconds=self.gpu_idle_warn_after),
            stop_after=timedelta(seconds=self.gpu_idle_stop_after),
            max_gap=timedelta(seconds=3 * self.gpu_idle_interval),
        )
        if self.gpu_idle_source == "prometheus":
            source = gpu_idle.PrometheusSource(
                self.gpu_idle_prometheus_url,
                self.gpu_idle_prometheus_metrics,
                namespace=self.gpu_idle_namespace,
                pod_label=self.gpu_idle_pod_label,
                namespace_label=self.gpu_idle_namespace_label,
                window=self.gpu_idle_interval,
            )
        else:
            source = gpu_idle.LocalToolSource(
                self.gpu_idle_commands, timeout=self.gpu_idle_command_timeout
            )
        return gpu_idle.GPUIdleCuller(
            source,
            rule,
            self.session_factory,
            self.hub_api.stop_server,
            pod_name_template=self.gpu_idle_pod_name_template,
        )

    admin_scope = Unicode(
        "custom:aipower:admin",
        help="JupyterHub scope that opens the service's admin pages (operators' role).",
    ).tag(config=True)

    review_scope = Unicode(
        "custom:aipower:review",
        help="""JupyterHub scope that opens the reviewers' pages and without which a
        reviewer's token does not act as a reviewer in the API (reviewers' role).""",
    ).tag(config=True)

    hub_scope = Unicode(
        "custom:aipower:hub",
        help="JupyterHub scope of the hub's own agent, for the internal API.",
    ).tag(config=True)

    # ---- the operator's settings for review and award that the guideline leaves open ----

    reviewers_per_application = Integer(
        3,
        help="Reviewers assigned to each application (recused ones not counted), e.g. 3.",
    ).tag(config=True)

    @validate("reviewers_per_application")
    def _check_reviewers(self, proposal):
        if not 1 <= proposal.value <= 20:
            raise ValueError("reviewers_per_application must be between 1 and 20")
        return proposal.value

    review_bonus_per_item = Unicode(
        "2",
        help="""Points each bonus item adds to a reviewer's weighted total, an exact decimal,
        e.g. "2" or "1.5".""",
    ).tag(config=True)

    review_spread_limit = Unicode(
        "20",
        help="""Disagreement flagged when the reviewers' highest and lowest totals differ by
        more than this, an exact decimal, e.g. "20".""",
    ).tag(config=True)

    inference_pass_mark = Unicode(
        "70",
        help="""Inference applications whose mean is at or above this are selected, an exact
        decimal, e.g. "70".""",
    ).tag(config=True)

    @validate("review_bonus_per_item", "review_spread_limit", "inference_pass_mark")
    def _check_decimal(self, proposal):
        try:
            value = Decimal(proposal.value)
        except InvalidOperation:
            raise ValueError(f"{proposal.trait.name} must be a decimal number") from None
        if not value.is_finite() or not 0 <= value <= 100:
            raise ValueError(f"{proposal.trait.name} must be between 0 and 100")
        return proposal.value

    tier_points = Dict(
        value_trait=Integer(),
        default_value={"L1": 1000, "L2": 2000, "L3": 6000},
        help="""Points awarded for each tier, e.g. {"L1": 1000, "L2": 2000, "L3": 6000}.""",
    ).tag(config=True)

    @validate("tier_points")
    def _check_tier_points(self, proposal):
        if set(proposal.value) != set(review.TIERS) or min(proposal.value.values()) <= 0:
            raise ValueError("tier_points gives a positive number of points to L1, L2 and L3")
        return proposal.value

    award_window_months = Integer(
        3,
        help="Calendar months of use from the award's notice date, e.g. 3.",
    ).tag(config=True)

    @validate("award_window_months")
    def _check_window_months(self, proposal):
        if not 1 <= proposal.value <= 24:
            raise ValueError("award_window_months must be between 1 and 24")
        return proposal.value

    @property
    def review_settings(self) -> review.ReviewSettings:
        return review.ReviewSettings(
            reviewers_per_application=self.reviewers_per_application,
            bonus_per_item=Decimal(self.review_bonus_per_item),
            spread_limit=Decimal(self.review_spread_limit),
            inference_pass_mark=Decimal(self.inference_pass_mark),
        )

    @property
    def award_settings(self) -> AwardSettings:
        return AwardSettings(
            tier_points=dict(self.tier_points), window_months=self.award_window_months
        )

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        self.engine = database.make_engine(self.db_url)
        database.upgrade(self.engine)
        self.session_factory = database.make_session_factory(self.engine)
        self.metrics = ServiceMetrics(self.session_factory)
        self.hub_api = HubAPI(
            os.environ.get("JUPYTERHUB_API_URL", ""), os.environ.get("JUPYTERHUB_API_TOKEN", "")
        )
        self.gpu_idle = self.gpu_idle_culler()
        self.templates = Environment(
            loader=PackageLoader("quota_service", "templates"),
            autoescape=select_autoescape(default=True),
        )
        self.templates.filters["when"] = _when
        self.templates.filters["bilingual"] = _bilingual
        self.translators = i18n.read_catalogues()
        base_url = os.environ.get("JUPYTERHUB_BASE_URL", "/")
        self.hub_static = url_path_join(base_url, "hub/static/")
        self.hub_home = url_path_join(base_url, "hub/home")
        self.mailer = notifications.Mailer(
            self.smtp_host,
            self.smtp_port,
            self.mail_from,
            starttls=self.smtp_starttls,
            username=self.smtp_username,
            password=self.smtp_password,
        )

    def make_web_app(self) -> WebApplication:
        prefix = self.service_prefix
        # one HubOAuth for every handler, the OAuth callback's included (it keeps the PKCE verifier)
        HubOAuth.instance(api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""), cache_max_age=60)
        settings = {"service": self, "xsrf_cookies": True}
        return WebApplication(
            [(prefix + path, handler) for path, handler in handlers.routes()]
            + [(prefix + "oauth_callback", HubOAuthCallbackHandler)],
            cookie_secret=self.cookie_secret,
            **settings,
        )

    async def meter_once(self) -> list[metering.StopOrder]:
        """One metering pass, reconciled with the servers the hub really runs; then ask
        the hub to stop what must stop."""
        listed_at = utcnow()
        try:
            running = await self.hub_api.running_servers()
        except Exception as e:  # the hub is restarting: charge now, reconcile next time
            self.log.warning("Hub server list unavailable, metering without it: %s", e)
            running = None
        with database.transaction(self.session_factory) as db:
            orders = metering.meter(db, now=utcnow(), running=running, listed_at=listed_at)
        if running is not None:
            with database.transaction(self.session_factory) as db:
                orders += metering.adopt_unmetered(
                    db,
                    running,
                    listed_at=listed_at,
                    now=utcnow(),
                    interval_seconds=self.metering_interval,
                )
        for order in orders:
            self.log.info(
                "Stopping %s's server %r: %s", order.username, order.server_name, order.reason.code
            )
            await self.hub_api.stop_server(order.username, order.server_name)
        return orders

    async def _meter_safely(self):
        try:
            await self.meter_once()
        except Exception:
            self.log.exception("metering pass failed; the next pass catches up")

    async def notify_once(self) -> int:
        """Decide due notices (the idle-allocation rule's too, which may record a violation),
        then deliver pending ones (SMTP runs in a worker thread)."""
        now = utcnow()
        with database.transaction(self.session_factory) as db:
            idle_rule.run(db, now=now, reading=self.idle_reading)
        with database.transaction(self.session_factory) as db:
            notifications.plan(
                db,
                now=now,
                low_balance_percents=self.low_balance_percents,
                reminder_days=self.window_reminder_days,
            )
        return await asyncio.to_thread(
            notifications.deliver, self.session_factory, self.mailer, now=now
        )

    def storage_purger(self) -> lifecycle.StoragePurger | None:
        """The people's volumes on Kubernetes, else their home folders on this machine."""
        if self.volumes_namespace:
            from spawner.kube import KubeHomePurger

            return KubeHomePurger(self.volumes_namespace)
        if self.homes_dir:
            return lifecycle.LocalHomesPurger(Path(self.homes_dir))
        return None

    def model_scanner(self) -> model_scans.Scanner | None:
        """Scan pods for the people's volumes on Kubernetes, else their home folders here."""
        if not self.model_scan_hours:
            return None
        rules = BannedModels.instance(parent=self)
        if self.volumes_namespace:
            if not self.model_scan_image:
                self.log.warning("No model_scan_image: the people's volumes are not scanned")
                return None
            from spawner.kube import KubeScanPods, ScanPodSettings

            settings = ScanPodSettings(
                image=self.model_scan_image,
                rules=list(rules.rules),
                deadline=timedelta(seconds=self.model_scan_deadline),
                resources=self.model_scan_resources,
                uid=self.model_scan_uid,
                gid=self.model_scan_gid,
            )
            pods = KubeScanPods(self.volumes_namespace, settings)
            return model_scans.PodScans(pods, deadline=settings.deadline)
        if self.homes_dir:
            return model_scans.LocalHomes(Path(self.homes_dir), rules.compiled())
        return None

    def housekeep_once(self) -> None:
        """Jobs of the calendar: close ended projects, withdraw applications whose supplement
        deadline passed, purge storage, expire old audit rows, scan homes for banned models."""
        now = utcnow()
        with database.transaction(self.session_factory) as db:
            lifecycle.close_ended_windows(db, now=now)
        with database.transaction(self.session_factory) as db:
            applications.expire_supplements(db, now=now)
        purger = self.storage_purger()
        if purger is not None:
            with database.transaction(self.session_factory) as db:
                lifecycle.purge_closed_projects(
                    db, purger, now=now, grace=timedelta(days=self.purge_grace_days)
                )
        with database.transaction(self.session_factory) as db:
            lifecycle.expire_audit_events(
                db, now=now, keep=timedelta(days=self.audit_retention_days)
            )
        scanner = self.model_scanner()
        if scanner is not None:
            scanner.scan_due(
                self.session_factory, now=now, every=timedelta(hours=self.model_scan_hours)
            )

    async def _notify_safely(self):
        for job, name in ((self.notify_once, "notice"), (self._housekeep, "housekeeping")):
            try:
                await job()
            except Exception:
                self.log.exception("%s job failed; the next run catches up", name)

    async def _housekeep(self) -> None:
        await asyncio.to_thread(self.housekeep_once)

    async def _cull_gpu_idle_safely(self):
        try:
            await self.gpu_idle.run_once()
        except Exception:
            self.log.exception("GPU-idle job failed; the next run catches up")

    async def serve(self):
        web_app = self.make_web_app()
        url = urlparse(self.service_url)
        server = HTTPServer(web_app, xheaders=True, max_body_size=self.max_body_size)
        server.listen(url.port or 80, url.hostname or "127.0.0.1")
        self.log.info(
            "Quota service on %s%s, metering every %ss",
            self.service_url,
            self.service_prefix,
            self.metering_interval,
        )
        callbacks = [
            PeriodicCallback(self._meter_safely, self.metering_interval * 1000),
            PeriodicCallback(self._notify_safely, self.notice_interval * 1000),
        ]
        if self.gpu_idle is not None:
            self.log.info(
                "GPU-idle culling from the %s source every %ss: all GPUs under %s%% for %ss "
                "warns the owner, for %ss stops the server",
                self.gpu_idle.source.name,
                self.gpu_idle_interval,
                self.gpu_idle_threshold_percent,
                self.gpu_idle_warn_after,
                self.gpu_idle_stop_after,
            )
            callbacks.append(
                PeriodicCallback(self._cull_gpu_idle_safely, self.gpu_idle_interval * 1000)
            )
        for callback in callbacks:
            callback.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # started by the hub, the service goes when the hub goes, even by kill -9, so that
        # a restarted hub finds the port free (the hub starts services in their own session)
        parent = os.getppid()

        def check_parent():
            if os.getppid() != parent:
                self.log.warning("The hub that started this service is gone; stopping")
                stop.set()

        parent_callback = PeriodicCallback(check_parent, 1000)
        parent_callback.start()
        await stop.wait()
        for callback in [*callbacks, parent_callback]:
            callback.stop()
        server.stop()
        self.engine.dispose()

    def start(self):
        asyncio.run(self.serve())


def main(argv=None):
    # one format for our modules and tornado's access log; tokens travel in headers,
    # which are never logged
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname).1s %(asctime)s %(name)s] %(message)s"
    )
    app = QuotaService.instance()
    app.initialize(argv)
    app.start()


if __name__ == "__main__":
    main()
