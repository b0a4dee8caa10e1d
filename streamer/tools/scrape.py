"""Read the service's Prometheus endpoint: counters by label, histograms, quantile estimates."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


class ScrapeError(OSError):
    """The endpoint did not answer with metrics."""


@dataclass
class Histogram:
    """Cumulative bucket counts by upper bound (``+Inf`` last), as Prometheus exposes them."""

    bounds: list[float] = field(default_factory=list)
    cumulative: list[float] = field(default_factory=list)
    count: float = 0.0
    total: float = 0.0

    def minus(self, earlier: Histogram) -> Histogram:
        """Observations made since ``earlier`` (same buckets)."""
        if not earlier.bounds:
            return self
        return Histogram(
            self.bounds,
            [a - b for a, b in zip(self.cumulative, earlier.cumulative, strict=True)],
            self.count - earlier.count,
            self.total - earlier.total,
        )

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket holding the q-th observation (like
        PromQL's ``histogram_quantile``); NaN without observations."""
        if not self.bounds or self.count <= 0:
            return math.nan
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound  # beyond the last finite bucket: its bound is all we know
                in_bucket = cumulative - lower_count
                if in_bucket <= 0:
                    return bound
                return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket
            lower_bound, lower_count = bound, cumulative
        return self.bounds[-1]


@dataclass
class Scrape:
    """One scrape: samples by (name, sorted labels)."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= set(ls))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, ls), v in self.samples.items():
            if n == name:
                key = dict(ls).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out

    def histogram(self, name: str) -> Histogram:
        buckets: list[tuple[float, float]] = []
        for (n, ls), v in self.samples.items():
            if n == f"{name}_bucket":
                buckets.append((float(dict(ls)["le"]), v))
        buckets.sort()
        return Histogram(
            bounds=[b for b, _ in buckets],
            cumulative=[c for _, c in buckets],
            count=self.value(f"{name}_count"),
            total=self.value(f"{name}_sum"),
        )


def parse_metrics(text: str) -> Scrape:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return Scrape(samples)


def scrape(url: str, timeout: float = 2.0) -> Scrape:
    """GET ``url`` (``http://host:port/metrics``) and parse it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        raise ScrapeError(f"cannot scrape {url}: {exc}") from None
    return parse_metrics(text)


def metrics_url(listen: str) -> str:
    """``127.0.0.1:9108`` -> ``http://127.0.0.1:9108/metrics`` (``:9108`` means localhost)."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/metrics"
