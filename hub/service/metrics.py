"""The service's Prometheus metrics, gathered afresh for each scrape.

Families (text format 0.0.4, made by ``prometheus_client`` in a registry of their own, so
nothing of the process's default registry leaks in)::

    skerry_servers_open{user}             servers running or starting now (from the hub)
    skerry_jobs{state}                    catalog jobs in each state (every state, 0 where none)
    skerry_jobs_created_total{user}       jobs ever created, by owner
    skerry_server_seconds_total{user}     wall time of servers (usage store; open ones up to now)
    skerry_cpu_seconds_total{user}        CPU seconds of stopped servers, as measured at stop
    skerry_gpu_seconds_total{user}        GPUs x seconds of servers
    skerry_profiles{state}                profiles enabled and disabled
    skerry_quotas{kind}                   quotas set for users and for groups
"""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Snapshot:
    """What one scrape shows (gathered by the route, turned into families here)."""

    servers: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    jobs_created: dict[str, int] = field(default_factory=dict)
    totals: dict[str, dict[str, float]] = field(default_factory=dict)
    profiles: tuple[int, int] = (0, 0)  # enabled, disabled
    quotas: tuple[int, int] = (0, 0)  # users, groups


class _Collector:
    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot

    def collect(self):
        s = self.snapshot
        servers = GaugeMetricFamily("skerry_servers_open", "Servers running or starting now, per user",
                                    labels=["user"])
        for user, n in sorted(s.servers.items()):
            servers.add_metric([user], n)
        yield servers
        jobs = GaugeMetricFamily("skerry_jobs", "Catalog jobs in each state", labels=["state"])
        for state, n in s.jobs.items():
            jobs.add_metric([state], n)
        yield jobs
        created = CounterMetricFamily("skerry_jobs_created", "Jobs ever created, by owner", labels=["user"])
        for user, n in sorted(s.jobs_created.items()):
            created.add_metric([user], n)
        yield created
        for key, help_text in (("server_seconds", "Wall time of servers, per user (open ones up to now)"),
                               ("cpu_seconds", "CPU seconds of stopped servers as measured at stop, per user"),
                               ("gpu_seconds", "GPUs times seconds of servers, per user")):
            family = CounterMetricFamily(f"skerry_{key}", help_text, labels=["user"])
            for user, figures in sorted(s.totals.items()):
                family.add_metric([user], figures[key])
            yield family
        profiles = GaugeMetricFamily("skerry_profiles", "Server profiles, enabled and disabled", labels=["state"])
        profiles.add_metric(["enabled"], s.profiles[0])
        profiles.add_metric(["disabled"], s.profiles[1])
        yield profiles
        quotas = GaugeMetricFamily("skerry_quotas", "Quotas set, for users and for groups", labels=["kind"])
        quotas.add_metric(["user"], s.quotas[0])
        quotas.add_metric(["group"], s.quotas[1])
        yield quotas


def render(snapshot: Snapshot) -> bytes:
    """The Prometheus text of ``snapshot``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot))
    return generate_latest(registry)
