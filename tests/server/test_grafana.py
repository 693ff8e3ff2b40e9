"""docker/grafana/pagedserve.json: every panel queries metrics the server really exports, and the
compose file wires Prometheus and the provisioned dashboard."""
from __future__ import annotations

import json
import re

import yaml

from tests.server.conftest import REPO

_METRIC = re.compile(r"pagedserve:[a-zA-Z0-9_:]+")
_PANELS_NEEDED = ("request rate", "tokens/s", "time to first token", "inter-token",
                  "end-to-end", "kv-cache usage", "running / waiting / swapped", "preemptions",
                  "prefix-cache hit rate")


def exported_sample_names() -> set[str]:
    """Sample names in /metrics once every metric has a value (text exposition format)."""
    from server.dashboard import DashboardMetrics

    m = DashboardMetrics("m")
    m.update_engine_stats({"num_running": 1, "num_waiting": 1, "num_swapped": 0,
                           "kv_cache_usage": 0.5, "prompt_tokens_total": 3,
                           "generation_tokens_total": 2, "num_preemptions": 1,
                           "prefix_cache_queries": 4, "prefix_cache_hits": 2,
                           "num_total_cpu_blocks": 4, "num_swapped_out_blocks": 1})
    m.observe_ttft(0.1)
    m.observe_itl(0.01)
    m.observe_queue_time(0.01)
    m.observe_finished("stop", 1.0)
    names = set()
    for line in m.render().decode().splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def test_every_panel_query_names_an_exported_metric():
    dash = json.loads((REPO / "docker" / "grafana" / "pagedserve.json").read_text())
    exported = exported_sample_names()
    titles = [p["title"].lower() for p in dash["panels"]]
    for needed in _PANELS_NEEDED:
        assert any(needed in t for t in titles), f"no panel for {needed!r}: {titles}"
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = _METRIC.findall(target["expr"])
            assert names, (panel["title"], target["expr"])
            for name in names:
                assert name in exported, f"{panel['title']}: {name} is not exported"
    variable = dash["templating"]["list"][0]["query"]["query"]
    assert all(n in exported for n in _METRIC.findall(variable))


def test_compose_wires_prometheus_and_grafana():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"pagedserve", "prometheus", "grafana"} <= set(services)
    assert any("/models" in v for v in services["pagedserve"]["volumes"])
    prom = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == "pagedserve:8000" and prom["scrape_configs"][0]["metrics_path"] == "/metrics"
    mounts = " ".join(services["grafana"]["volumes"])
    assert "grafana/pagedserve.json" in mounts and "grafana/provisioning" in mounts
    for sub in ("datasources", "dashboards"):
        assert list((REPO / "docker" / "grafana" / "provisioning" / sub).glob("*.yaml"))
