"""`GGUFFile` reads the default model's GGUF exactly as `gguf.GGUFReader` does (every tensor's
type, shape and bytes; every scalar metadata value; arrays skipped), and `reused_gguf_parse`
makes transformers parse a file's metadata once for several configs / tokenizers."""
from __future__ import annotations

import os

import numpy as np


def test_tensors_and_scalars_equal_gguf_reader():
    from gguf import GGUFReader

    from engine.loader.default_model import default_model_path
    from engine.loader.gguf_file import GGUFFile

    path = default_model_path()
    ours, ref = GGUFFile(path), GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == int(b.tensor_type), a.name
        assert a.shape == tuple(int(d) for d in b.shape), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        assert np.array_equal(a.data, b.data), a.name
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert sorted(keys) == sorted(ours.metadata)
    arrays = 0
    for key in keys:
        field = ref.fields[key]
        if field.types[0] == 9:  # an array: skipped
            assert ours.metadata[key] is None, key
            arrays += 1
        else:
            assert ours.metadata[key] == field.contents(), key
    assert arrays >= 3  # tokens, scores / types, merges


def test_bad_magic_is_a_clear_error(tmp_path):
    import pytest

    from engine.loader.gguf_file import GGUFFile

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF file"):
        GGUFFile(str(bad))


def test_transformers_parses_the_metadata_once(monkeypatch):
    from transformers import AutoConfig
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    from engine.loader.default_model import default_model_path
    from engine.loader.gguf_hf_parse import _last, reused_gguf_parse

    path = default_model_path()
    calls = []
    original = hf_gguf.load_gguf_checkpoint

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(hf_gguf, "load_gguf_checkpoint", counting)
    _last.clear()
    kw = dict(gguf_file=os.path.basename(path))
    with reused_gguf_parse():
        first = AutoConfig.from_pretrained(os.path.dirname(path), **kw)
        second = AutoConfig.from_pretrained(os.path.dirname(path), **kw)
    assert len(calls) == 1
    assert hf_gguf.load_gguf_checkpoint is counting  # put back on leaving
    assert first.to_dict() == second.to_dict()
    plain = AutoConfig.from_pretrained(os.path.dirname(path), **kw)
    assert len(calls) == 2 and plain.to_dict() == first.to_dict()
