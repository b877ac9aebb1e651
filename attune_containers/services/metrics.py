"""Prometheus metrics of the service (``GET /metrics``), with ``prometheus-client``.

A registry per app (never the process-global one): executions by status and warm/cold, their
duration and queue time, live executions, the warm pools (from ``ActionRunner.pool_stats``), and the
images the service built or pulled, with how long that took.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.execution import ExecutionResult

CONTENT_TYPE = CONTENT_TYPE_LATEST
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
BUILD_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def _warm(result: ExecutionResult) -> str:
    return "none" if result.warm is None else ("warm" if result.warm else "cold")


class ServiceMetrics:
    def __init__(self, pool_stats: Callable[[], list[dict]], live: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.executions = Counter(
            "attune_executions",
            "Finished executions, by status and container kind (warm, cold, none: it never reached a container)",
            ["status", "container"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "attune_execution_duration_seconds",
            "Run time of finished executions (the queue excluded)",
            ["container"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        self.queued = Histogram(
            "attune_execution_queue_seconds", "Time executions waited for a slot", buckets=RUN_BUCKETS, registry=self.registry
        )
        self.builds = Counter(
            "attune_builds", "Images the service made: built, pulled, or failed", ["outcome"], registry=self.registry
        )
        self.build_duration = Histogram(
            "attune_build_duration_seconds",
            "Time to build or pull an image",
            ["outcome"],
            buckets=BUILD_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Live(pool_stats, live))

    def observe(self, result: ExecutionResult) -> None:
        container = _warm(result)
        self.executions.labels(status=result.status.value, container=container).inc()
        self.duration.labels(container=container).observe(result.duration_ms / 1000)
        self.queued.observe(result.queued_ms / 1000)

    def watch_builds(self, manager: Any, log: Any) -> None:
        """Count and time what ``manager.ensure`` builds or pulls (a reused image is not a build),
        and log it: the service's own builds are logged, not dropped."""
        ensure = manager.ensure

        def measured(pack_ref: str, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                ensured = ensure(pack_ref, *args, **kwargs)
            except Exception as exc:
                self.builds.labels(outcome="failed").inc()
                self.build_duration.labels(outcome="failed").observe(time.monotonic() - started)
                log.warning("image of pack %s failed: %s", pack_ref, exc, extra={"pack_ref": pack_ref})
                raise
            if ensured.outcome != "reused":
                seconds = time.monotonic() - started
                self.builds.labels(outcome=ensured.outcome).inc()
                self.build_duration.labels(outcome=ensured.outcome).observe(seconds)
                log.info(
                    "image %s",
                    ensured.outcome,
                    extra={"pack_ref": pack_ref, "image": ensured.info.image, "duration_ms": int(seconds * 1000)},
                )
            return ensured

        manager.ensure = measured

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    """Gauges read when scraped: the warm pools and the executions held."""

    def __init__(self, pool_stats: Callable[[], list[dict]], live: Callable[[], dict[str, int]]) -> None:
        self.pool_stats = pool_stats
        self.live = live

    def describe(self) -> list:
        return []  # collected at scrape time only

    def collect(self) -> Iterator[Any]:
        executions = GaugeMetricFamily(
            "attune_executions_held",
            "Executions the service holds, by state (finished ones are kept for GET /v1/executions/{id})",
            labels=["state"],
        )
        for state, count in self.live().items():
            executions.add_metric([state], count)
        yield executions
        containers = GaugeMetricFamily(
            "attune_pool_containers", "Warm containers by pool and state", labels=["pack_ref", "image", "state"]
        )
        created = CounterMetricFamily("attune_pool_containers_created", "Warm containers started", labels=["pack_ref", "image"])
        destroyed = CounterMetricFamily(
            "attune_pool_containers_destroyed", "Warm containers removed", labels=["pack_ref", "image"]
        )
        try:
            stats = self.pool_stats()
        except KeyError:  # no runner (not started, or stopping)
            stats = []
        # Pools of one image under different limits are summed: one series per pack and image.
        totals: dict[tuple[str, str], dict[str, int]] = {}
        for pool in stats:
            total = totals.setdefault(
                (pool["pack_ref"], pool["image"]), dict.fromkeys(("idle", "busy", "starting", "created", "destroyed"), 0)
            )
            for name in total:
                total[name] += pool[name]
        for key, total in totals.items():
            for state in ("idle", "busy", "starting"):
                containers.add_metric([*key, state], total[state])
            created.add_metric(list(key), total["created"])
            destroyed.add_metric(list(key), total["destroyed"])
        yield containers
        yield created
        yield destroyed
