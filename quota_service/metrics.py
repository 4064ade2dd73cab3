"""Prometheus metrics of the quota service, read from the ledger at scrape time.

Points are exact in the ledger; here they are exported as floats, as Prometheus values
are, for dashboards and alerts only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .models import LedgerEntry, LedgerKind, Project, UsageSession


class LedgerCollector:
    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    def collect(self):
        balance = GaugeMetricFamily(
            "aipower_project_balance_points",
            "Points left per project",
            labels=["project_id", "status"],
        )
        charged = CounterMetricFamily(
            "aipower_points_charged", "Points charged for GPU use, by vendor", labels=["gpu_vendor"]
        )
        granted = CounterMetricFamily(
            "aipower_points_granted", "Points granted and adjusted by operators", labels=[]
        )
        running = GaugeMetricFamily(
            "aipower_running_servers", "Metered servers now, by vendor", labels=["gpu_vendor"]
        )
        gpus = GaugeMetricFamily(
            "aipower_gpus_in_use", "GPUs of metered servers now", labels=["gpu_vendor"]
        )
        with self.factory() as db:
            for project_id, status, total in db.execute(
                select(
                    Project.id,
                    Project.status,
                    func.coalesce(func.sum(LedgerEntry.amount_millipoints), 0),
                )
                .outerjoin(LedgerEntry, LedgerEntry.project_id == Project.id)
                .group_by(Project.id, Project.status)
            ):
                balance.add_metric([str(project_id), status], int(total) / 1000)
            for vendor, total in db.execute(
                select(
                    UsageSession.gpu_vendor,
                    func.coalesce(func.sum(LedgerEntry.amount_millipoints), 0),
                )
                .join(UsageSession, LedgerEntry.session_id == UsageSession.id)
                .where(LedgerEntry.kind == LedgerKind.USAGE)
                .group_by(UsageSession.gpu_vendor)
            ):
                charged.add_metric([vendor], -int(total) / 1000)
            grants = db.scalar(
                select(func.coalesce(func.sum(LedgerEntry.amount_millipoints), 0)).where(
                    LedgerEntry.kind != LedgerKind.USAGE
                )
            )
            granted.add_metric([], int(grants) / 1000)
            for vendor, count, gpu_sum in db.execute(
                select(UsageSession.gpu_vendor, func.count(), func.sum(UsageSession.gpu_count))
                .where(UsageSession.stopped_at.is_(None))
                .group_by(UsageSession.gpu_vendor)
            ):
                running.add_metric([vendor], count)
                gpus.add_metric([vendor], int(gpu_sum))
        yield from (balance, charged, granted, running, gpus)


class ServiceMetrics:
    """The service's own registry (not the process-global one): ledger figures read at
    scrape time, and the refusals the service has seen since it started."""

    def __init__(self, factory: sessionmaker[Session]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.spawns_refused = Counter(
            "aipower_spawns_refused",
            "Server starts refused, by reason, since the service started",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(LedgerCollector(factory))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
