"""contrib/grafana/alluxiofuse-dashboard.json: every query asks for metrics the daemon exports.

The exported names are read from the daemon's own exposition (``Metrics(new_registry())``
rendered by prometheus_client), so a renamed metric fails here rather than as an empty
panel. Queries are also checked for the mistakes PromQL lets through silently: rate() of a
gauge, a histogram_quantile() that drops ``le``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from alluxiofuse.metrics import Metrics, new_registry

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "contrib" / "grafana" / "alluxiofuse-dashboard.json"

# What the dashboard is for: each of these must be on some panel.
REQUIRED = {
    "alluxiofuse_fuse_op_seconds_bucket", "alluxiofuse_fuse_op_seconds_count",
    "alluxiofuse_fuse_errors_total", "alluxiofuse_page_cache_hit_bytes_total",
    "alluxiofuse_page_cache_miss_bytes_total", "alluxiofuse_readahead_used_bytes_total",
    "alluxiofuse_readahead_wasted_bytes_total", "alluxiofuse_ufs_fallback_total",
    "alluxio_http_server_call_latency_ms_bucket", "alluxio_http_server_result_total",
    "alluxiofuse_worker_retries_total", "alluxiofuse_memory_budget_bytes",
    "alluxiofuse_memory_used_bytes", "alluxiofuse_open_handles", "alluxiofuse_inodes",
    "alluxiofuse_pending_uploads", "alluxiofuse_disk_cache_hits_total",
    "alluxiofuse_disk_cache_misses_total", "alluxiofuse_disk_cache_bytes",
    "alluxiofuse_disk_cache_corrupt_pages_total",
}
_FUNCTIONS_TAKING_COUNTERS = ("rate", "irate", "increase")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}


def exported() -> dict[str, str]:
    """Every sample name the daemon exports → ``counter``, ``gauge`` or ``histogram``."""
    text = generate_latest(Metrics(new_registry()).registry).decode()
    names: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[name + suffix] = "histogram"
        elif kind == "counter":
            names[name if name.endswith("_total") else name + "_total"] = "counter"
        else:
            names[name] = kind
    return names


def metric_names(expr: str) -> list[str]:
    """The metric names a PromQL expression selects, in order."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = []
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1).lower() not in _KEYWORDS:
            names.append(m.group(1))
    return names


def counted_names(expr: str) -> list[str]:
    """The metrics an expression passes to rate(), irate() or increase()."""
    pattern = rf"\b(?:{'|'.join(_FUNCTIONS_TAKING_COUNTERS)})\s*\(\s*([A-Za-z_:][\w:]*)"
    return re.findall(pattern, expr)


def query_problems(expr: str, names: dict[str, str]) -> list[str]:
    out = []
    if any(expr.count(a) != expr.count(b) for a, b in ("()", "{}", "[]")):
        out.append(f"unbalanced brackets: {expr}")
    found = metric_names(expr)
    if not found:
        out.append(f"selects no metric: {expr}")
    for name in found:
        if name not in names:
            out.append(f"{name} is not exported by the daemon")
    counted = counted_names(expr)
    for name in counted:
        if names.get(name) == "gauge":
            out.append(f"rate() of the gauge {name}")
    for name in set(found) - set(counted):
        if names.get(name) in ("counter", "histogram"):
            out.append(f"{name} is a counter: use it through rate() or increase()")
    for m in re.finditer(r"histogram_quantile\(\s*[\d.]+\s*,\s*\w+\s+by\s*\(([^)]*)\)", expr):
        if "le" not in [label.strip() for label in m.group(1).split(",")]:
            out.append(f"histogram_quantile without le: {expr}")
    if "histogram_quantile" in expr and not re.search(r"histogram_quantile\(\s*[\d.]+\s*,\s*"
                                                      r"\w+\s+by\s*\(", expr):
        out.append(f"histogram_quantile should aggregate by (le, ...): {expr}")
    return out


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def graph_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in graph_panels(dashboard) for t in p["targets"]]


def test_every_query_selects_exported_metrics_the_right_way() -> None:
    names = exported()
    problems = [p for expr in queries(load()) for p in query_problems(expr, names)]
    assert problems == []


def test_the_dashboard_covers_what_it_is_for() -> None:
    used = {name for expr in queries(load()) for name in metric_names(expr)}
    assert REQUIRED - used == set()


@pytest.mark.parametrize(("expr", "problem"), [
    ('sum by (op) (rate(alluxiofuse_fuse_eror_total{op="read"}[5m]))',
     "alluxiofuse_fuse_eror_total is not exported"),
    ("rate(alluxiofuse_inodes[5m])", "rate() of the gauge alluxiofuse_inodes"),
    ("sum(alluxiofuse_worker_retries_total)", "is a counter: use it through rate()"),
    ("histogram_quantile(0.9, sum by (op) (rate(alluxiofuse_fuse_op_seconds_bucket[5m])))",
     "histogram_quantile without le"),
    ("histogram_quantile(0.9, rate(alluxiofuse_fuse_op_seconds_bucket[5m]))",
     "should aggregate by (le"),
    ("sum(rate(alluxiofuse_fuse_errors_total[5m])", "unbalanced"),
])
def test_a_bad_query_is_caught(expr: str, problem: str) -> None:
    found = query_problems(expr, exported())
    assert any(problem in p for p in found), found


def test_metric_names_skips_functions_labels_and_variables() -> None:
    expr = ('sum by (op, errno) (rate(alluxiofuse_fuse_errors_total{instance=~"$instance",'
            'op!="lookup"}[$__rate_interval])) / on (op) group_left '
            "sum by (op) (rate(alluxiofuse_fuse_op_seconds_count[5m]))")
    assert metric_names(expr) == ["alluxiofuse_fuse_errors_total",
                                  "alluxiofuse_fuse_op_seconds_count"]


def test_the_datasource_is_a_variable() -> None:
    """Importable into any Grafana: every query names the data source ${DS_PROMETHEUS}, a
    variable of the dashboard (so it also works when provisioned from a file)."""
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for panel in graph_panels(dashboard):
        assert panel["datasource"] == ds, panel["title"]
        assert all(t["datasource"] == ds for t in panel["targets"]), panel["title"]
    assert "${DS_PROMETHEUS}" not in json.dumps(variables["DS_PROMETHEUS"])


def test_the_panels_are_laid_out_on_the_grid() -> None:
    """Unique ids and refIds, within Grafana's 24 columns, none on top of another."""
    dashboard = load()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["uid"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
    for p in graph_panels(dashboard):
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(set(refs)) == len(refs), p["title"]
        assert p["type"] in ("timeseries", "stat"), p["title"]
