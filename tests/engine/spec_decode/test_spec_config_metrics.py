"""speculative_config from the CLI, the n-gram lookup, and the metrics it exports."""
from __future__ import annotations

import pytest

from engine.spec_decode.config import SpeculativeConfig
import random

from engine.sequence import Request
from engine.sampling_params import SamplingParams
from engine.spec_decode.ngram import NgramProposer, ngram_lookup
from engine.token_history import pack
from server.args import make_parser, resolve_args
from server.metrics import ServerMetrics, StatsLogger
from tests.server.conftest import metric_value


def test_cli_flag_parses_json():
    engine_args, _ = resolve_args(make_parser().parse_args(
        ["serve", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']))
    cfg = SpeculativeConfig.from_dict(engine_args.speculative_config)
    assert (cfg.method, cfg.num_speculative_tokens) == ("ngram", 3)
    with pytest.raises(ValueError, match="speculative_config.num_speculative_tokens"):
        SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": True})
    with pytest.raises(ValueError, match="speculative_config: must be a JSON object"):
        SpeculativeConfig.from_dict([1])


def test_ngram_lookup():
    # The longest suffix wins, at its most recent earlier occurrence.
    assert ngram_lookup([1, 2, 3, 9, 1, 2, 3, 7, 5, 2, 3], 1, 3, 2) == [7, 5]
    assert ngram_lookup([1, 2, 3, 9, 1, 2, 3, 7, 5, 2, 3], 3, 3, 2) == []
    assert ngram_lookup([4, 4, 4], 1, 2, 5) == [4]  # the continuation stops at the end
    assert ngram_lookup([1, 2, 3], 1, 3, 4) == []
    # Packed 32-bit search: a byte pattern straddling two tokens is no match.
    assert ngram_lookup([0x0100, 0x0200, 5, 2], 1, 1, 2) == []  # bytes 00 02 00 00 at offset 1
    assert ngram_lookup([2 ** 31 - 1, 7, 2 ** 31 - 1], 1, 1, 1) == [7]


def _walk(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    """The lookup's definition, token by token."""
    for n in range(min(n_max, len(tokens) - 1), n_min - 1, -1):
        for i in range(len(tokens) - n - 1, -1, -1):
            if tokens[i:i + n] == tokens[len(tokens) - n:]:
                return tokens[i + n:i + n + k]
    return []


def test_ngram_lookup_matches_its_definition():
    rng = random.Random(0)
    for _ in range(3000):
        vocab = rng.choice([2, 3, 7, 256, 257, 65536, 2 ** 31 - 1])
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
        lo = rng.randrange(1, 4)
        hi, k = lo + rng.randrange(0, 3), rng.randrange(1, 6)
        assert ngram_lookup(tokens, lo, hi, k) == _walk(tokens, lo, hi, k), (tokens, lo, hi, k)


def test_ngram_proposer_follows_growing_and_cut_sequences():
    """The proposer searches each sequence's packed tokens, kept on the sequence between steps:
    extended as tokens are appended, rebuilt when they were cut back."""
    proposer = NgramProposer(1, 3)
    seq = Request("r", [1, 2, 3, 4, 1, 2], SamplingParams(), [0], None).seqs[0]
    rng = random.Random(1)
    for step in range(200):
        if step % 17 == 16:
            del seq.token_ids[-rng.randrange(1, 4):]  # cut back (then regrown differently)
        else:
            seq.token_ids.append(rng.randrange(6))
        assert proposer.propose([seq], [4]) == [_walk(seq.token_ids, 1, 3, 4)]
    assert seq.token_array == pack(seq.token_ids)  # the buffer is the sequence's own


def test_spec_decode_metrics_and_log_line():
    m = ServerMetrics("m1")
    base = {"spec_decode_num_drafts": 2, "spec_decode_num_draft_tokens": 8,
            "spec_decode_num_accepted_tokens": 5, "spec_decode_accepted_by_position": [2, 2, 1, 0],
            "spec_decode_acceptance_rate": 5 / 8}
    m.update_engine_stats(base)
    m.update_engine_stats({**base, "spec_decode_num_drafts": 3,
                           "spec_decode_accepted_by_position": [3, 2, 1, 0]})
    text = m.render().decode()
    lab = 'model_name="m1"'
    assert metric_value(text, "pagedserve:spec_decode_num_drafts_total", lab) == 3
    assert metric_value(text, "pagedserve:spec_decode_num_draft_tokens_total", lab) == 8
    assert metric_value(text, "pagedserve:spec_decode_num_accepted_tokens_total", lab) == 5
    assert metric_value(text, "pagedserve:spec_decode_num_accepted_tokens_per_pos_total",
                        lab + ',position="0"') == 3
    log = StatsLogger(get_stats=None, interval=5)
    log.format({**base, "generation_tokens_total": 0}, now=0.0)
    line = log.format({**base, "num_running": 1, "generation_tokens_total": 10}, now=5.0)
    assert line.endswith("Spec decode acceptance: 62.5%")
