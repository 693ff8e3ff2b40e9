from __future__ import annotations

import pytest

from engine.output_processor import DeltaTracker, OutputProcessor
from engine.outputs import EngineCoreOutput, SeqDelta
from engine.sampling_params import SamplingParams
from tests.engine._tokenizers import gpt2_tokenizer


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


PROMPT = "Once upon a time"


def start(tok, params: SamplingParams, rid: str = "r1"):
    proc = OutputProcessor(tok)
    ids = tok.encode(PROMPT) if tok is not None else [1, 2, 3]
    proc.add_request(rid, PROMPT, ids, params)
    return proc


def step(proc, rid, index, token_ids, finish=None, logprob=0.0, logprobs=None, finished=False):
    delta = SeqDelta(index=index, token_ids=token_ids, cumulative_logprob=logprob,
                     logprobs=logprobs, finish_reason=finish,
                     stop_reason=None if finish is None else (50256 if finish == "stop" else None))
    return proc.process_outputs([EngineCoreOutput(rid, [delta], finished=finished)])


def stream_text(proc, tok, text, params=None, rid="r1"):
    """Feed `text`'s tokens one per step; return (visible texts per step, final output, stops)."""
    tracker = DeltaTracker(1)
    visible, streamed, final, stops = [], [], None, []
    ids = tok.encode(text)
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        res = step(proc, rid, 0, [t], finish="length" if last else None)
        stops += res.seqs_to_stop
        for ro in res.request_outputs:
            visible.append(ro.outputs[0].text)
            streamed += [d.text for d in tracker.update(ro)]
            if ro.finished:
                final = ro
        if final is not None:
            break
    assert "".join(streamed) == final.outputs[0].text
    assert tracker.finished
    return visible, final, stops


def test_plain_stream_equals_full_decode(tok):
    text = " and they lived 😀 happily ever after."
    proc = start(tok, SamplingParams(max_tokens=100))
    visible, final, stops = stream_text(proc, tok, text)
    out = final.outputs[0]
    assert out.text == text and out.finish_reason == "length" and stops == []
    assert out.token_ids == tok.encode(text)
    assert all("\ufffd" not in v for v in visible)
    assert all(text.startswith(v) for v in visible)
    assert not proc.has_request("r1")


def test_stop_string_truncates_holds_back_and_asks_core_to_stop(tok):
    text = " the dragon slept. THE END. More text"
    proc = start(tok, SamplingParams(stop=["THE END", "zzz"]))
    visible, final, stops = stream_text(proc, tok, text)
    out = final.outputs[0]
    assert out.text == " the dragon slept. "
    assert (out.finish_reason, out.stop_reason) == ("stop", "THE END")
    assert stops == [("r1", [0])]
    # Never a partial stop string on screen while unfinished: "THE" was held back.
    assert all(not v.endswith((" T", " TH", " THE", "THE ")) for v in visible[:-1])
    assert all(out.text.startswith(v) for v in visible)
    # The core's next step for this request is ignored: the request is gone.
    assert step(proc, "r1", 0, [tok.encode(" x")[0]]).request_outputs == []


def test_include_stop_str_in_output(tok):
    proc = start(tok, SamplingParams(stop="END", include_stop_str_in_output=True))
    _, final, _ = stream_text(proc, tok, " the END is near")
    assert final.outputs[0].text == " the END"


def test_stop_strings_wait_for_min_tokens(tok):
    text = " stop here and then stop again"
    n_first = len(tok.encode(" stop here"))
    proc = start(tok, SamplingParams(stop=" stop", min_tokens=n_first + 1))
    _, final, _ = stream_text(proc, tok, text)
    assert final.outputs[0].text == " stop here and then"


def test_core_finish_freezes_choice_and_text_flushes(tok):
    ids = tok.encode(" ok 😀")
    proc = start(tok, SamplingParams())
    res = step(proc, "r1", 0, ids[:-1])  # ends inside the emoji: held back
    assert res.request_outputs[0].outputs[0].text == " ok"
    res = step(proc, "r1", 0, ids[-1:], finish="stop", logprob=-1.5)
    out = res.request_outputs[0].outputs[0]
    assert out.text == " ok 😀" and out.finish_reason == "stop" and out.stop_reason == 50256
    assert out.cumulative_logprob == -1.5 and res.request_outputs[0].finished
    assert proc.num_unfinished_requests == 0


def test_n2_interleaved_and_logprobs_dicts(tok):
    proc = start(tok, SamplingParams(n=2, logprobs=1, temperature=1.0))
    a, b = tok.encode(" alpha beta"), tok.encode(" gamma")
    tracker = DeltaTracker(2)
    res = proc.process_outputs([EngineCoreOutput("r1", [
        SeqDelta(0, a[:1], -0.5, [{a[0]: -0.5, 7: -1.0}]),
        SeqDelta(1, b, -0.25, [{t: -0.25} for t in b], finish_reason="length")])])
    ro = res.request_outputs[0]
    assert not ro.finished and [o.index for o in ro.outputs] == [0, 1]
    assert ro.outputs[0].logprobs == [{a[0]: -0.5, 7: -1.0}]
    deltas = tracker.update(ro)
    assert [(d.index, d.text, d.finish_reason) for d in deltas] == [
        (0, " alpha", None), (1, " gamma", "length")]
    # Later deltas for the finished choice 1 are ignored.
    res = proc.process_outputs([EngineCoreOutput("r1", [
        SeqDelta(0, a[1:], -1.0, [{a[1]: -0.5}], finish_reason="length"),
        SeqDelta(1, [5], -9.0)])])
    ro = res.request_outputs[0]
    assert ro.finished and ro.outputs[1].text == " gamma" and ro.outputs[1].cumulative_logprob == -0.25
    assert ro.outputs[0].logprobs == [{a[0]: -0.5, 7: -1.0}, {a[1]: -0.5}]
    deltas = tracker.update(ro)
    assert [(d.index, d.text, d.token_ids, d.finish_reason) for d in deltas] == [
        (0, " beta", a[1:], "length")]
    assert tracker.finished and tracker.update(ro) == []


def test_best_of_returns_n_best_only_when_done(tok):
    proc = start(tok, SamplingParams(n=2, best_of=3, temperature=1.0))
    words = [tok.encode(w) for w in (" one", " two", " three")]
    res = proc.process_outputs([EngineCoreOutput("r1", [
        SeqDelta(0, words[0], -3.0, finish_reason="length"),
        SeqDelta(1, words[1], -1.0)])])
    assert res.request_outputs == []  # nothing is reported before all finish
    res = proc.process_outputs([EngineCoreOutput("r1", [
        SeqDelta(1, [], -1.0, finish_reason="length"),
        SeqDelta(2, words[2], -2.0, finish_reason="length")], finished=True)])
    outs = res.request_outputs[0].outputs
    assert [(o.index, o.text, o.cumulative_logprob) for o in outs] == [
        (0, " two", -1.0), (1, " three", -2.0)]


def test_beam_search_replace_decodes_whole(tok):
    params = SamplingParams(n=2, use_beam_search=True, temperature=0.0, stop=["beam!"])
    proc = start(tok, params)
    b0, b1 = tok.encode(" first beam 😀"), tok.encode(" second beam! rest")
    res = proc.process_outputs([EngineCoreOutput("r1", [
        SeqDelta(0, b0, -1.0, finish_reason="length", replace=True)])])
    assert res.request_outputs == []
    res = proc.process_outputs([EngineCoreOutput("r1", [
        SeqDelta(1, b1, -2.0, finish_reason="length", replace=True)], finished=True)])
    outs = res.request_outputs[0].outputs
    assert [o.text for o in outs] == [" first beam 😀", " second "]
    assert outs[1].finish_reason == "stop" and outs[0].token_ids == b0
    assert res.seqs_to_stop == []  # the core had already finished it


def test_no_tokenizer_keeps_text_empty():
    proc = start(None, SamplingParams(stop="x", detokenize=False))
    res = step(proc, "r1", 0, [5, 6], finish="length")
    out = res.request_outputs[0].outputs[0]
    assert out.text == "" and out.token_ids == [5, 6] and out.finish_reason == "length"


def test_abort_error_and_prompt_logprobs(tok):
    proc = start(tok, SamplingParams(prompt_logprobs=1))
    res = proc.process_outputs([EngineCoreOutput(
        "r1", [SeqDelta(0, tok.encode(" hi"))], prompt_logprobs=[None, {3: -1.0}],
        num_cached_tokens=2)])
    ro = res.request_outputs[0]
    assert ro.prompt_logprobs == [None, {3: -1.0}] and ro.num_cached_tokens == 2
    res = proc.process_outputs([EngineCoreOutput("r1", [], finished=True, error="boom")])
    ro = res.request_outputs[0]
    assert ro.finished and ro.outputs[0].finish_reason == "abort"
    assert ro.outputs[0].text == " hi" and ro.metrics["error"] == "boom"

    proc.add_request("r2", None, [1, 2], SamplingParams())
    with pytest.raises(ValueError, match="request_id"):
        proc.add_request("r2", None, [1, 2], SamplingParams())
    assert proc.abort("r2") and not proc.abort("r2")
    assert step(proc, "r2", 0, [5]).request_outputs == []
