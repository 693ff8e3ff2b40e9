"""ServerMetrics (vLLM's metric set, `pagedserve:` prefix, model_name label) and the log line."""
from __future__ import annotations

from server.metrics import ServerMetrics, StatsLogger
from tests.server.conftest import metric_value


def stats(**kw) -> dict:
    base = {"num_running": 0, "num_waiting": 0, "num_swapped": 0, "kv_cache_usage": 0.0,
            "prompt_tokens_total": 0, "generation_tokens_total": 0, "num_preemptions": 0,
            "prefix_cache_queries": 0, "prefix_cache_hits": 0}
    return {**base, **kw}


def test_engine_stats_become_gauges_and_counters():
    m = ServerMetrics("m1")
    m.update_engine_stats(stats(num_running=3, num_waiting=2, num_swapped=1, kv_cache_usage=0.5,
                                prompt_tokens_total=100, generation_tokens_total=40,
                                num_preemptions=2, prefix_cache_queries=64,
                                prefix_cache_hits=32))
    m.update_engine_stats(stats(num_running=1, prompt_tokens_total=150,
                                generation_tokens_total=90, num_preemptions=2,
                                prefix_cache_queries=64, prefix_cache_hits=32))
    text = m.render().decode()
    lab = 'model_name="m1"'
    assert metric_value(text, "pagedserve:num_requests_running", lab) == 1
    assert metric_value(text, "pagedserve:num_requests_waiting", lab) == 0
    assert metric_value(text, "pagedserve:prompt_tokens_total", lab) == 150
    assert metric_value(text, "pagedserve:generation_tokens_total", lab) == 90
    assert metric_value(text, "pagedserve:num_preemptions_total", lab) == 2
    assert metric_value(text, "pagedserve:prefix_cache_hits_total", lab) == 32
    assert metric_value(text, "pagedserve:prefix_cache_queries_total", lab) == 64


def test_latency_histograms_and_success():
    m = ServerMetrics("m2")
    m.observe_ttft(0.2)
    m.observe_itl(0.05)
    m.observe_queue_time(0.01)
    m.observe_finished("stop", 1.2)
    m.observe_finished("length", 0.7)
    text = m.render().decode()
    assert metric_value(text, "pagedserve:request_success_total", 'finished_reason="stop"') == 1
    assert metric_value(text, "pagedserve:e2e_request_latency_seconds_count") == 2
    assert metric_value(text, "pagedserve:time_to_first_token_seconds_sum") == 0.2
    assert 'pagedserve:inter_token_latency_seconds_bucket{le="0.075",model_name="m2"} 1.0' in text
    assert metric_value(text, "pagedserve:request_queue_time_seconds_count") == 1


def test_log_line_only_while_busy():
    log = StatsLogger(get_stats=None, interval=5)
    assert log.format(stats(), now=0.0) is None  # first sample: no rate yet
    assert log.format(stats(), now=5.0) is None  # idle
    line = log.format(stats(num_running=2, num_waiting=1, kv_cache_usage=0.25,
                            prompt_tokens_total=500, generation_tokens_total=100), now=10.0)
    assert line == ("Running: 2 reqs, Waiting: 1 reqs, Swapped: 0 reqs, KV cache usage: 25.0%, "
                    "Prompt throughput: 100.0 tokens/s, Generation throughput: 20.0 tokens/s")
