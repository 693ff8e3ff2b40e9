"""Writes a small Hugging Face model folder (config + tokenizer, no weights) for the device carry.

    python benchmarks/device/hf_dir.py --gguf FILE --out DIR [--config JSON] [--llama3]

The tokenizer is built by transformers from the GGUF's metadata and saved with `save_pretrained`;
the config is `--config` when given, else the GGUF's own with `architectures` filled in.
`--llama3` makes the llama.cpp Llama-3 vocabulary behave as Meta's tokenizer.json does: a BOS
(<|begin_of_text|>) before every encoded text, `ignore_merges`, and no token id past the
model's vocabulary (the GGUF conversion adds an <|endoftext|> at 128256).
Prints the ids of "Hello world" as a check.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil


def llama3_fixups(out: str, vocab_size: int) -> None:
    path = os.path.join(out, "tokenizer.json")
    with open(path) as f:
        tj = json.load(f)
    bos = next(t for t in tj["added_tokens"] if t["content"] == "<|begin_of_text|>")
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["id"] < vocab_size]
    tj["model"]["ignore_merges"] = True
    seq = lambda s, i: {"Sequence": {"id": s, "type_id": i}}  # noqa: E731
    special = lambda i: {"SpecialToken": {"id": bos["content"], "type_id": i}}  # noqa: E731
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special(0), seq("A", 0)],
        "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
        "special_tokens": {bos["content"]: {"id": bos["content"], "ids": [bos["id"]],
                                            "tokens": [bos["content"]]}}}
    with open(path, "w") as f:
        json.dump(tj, f, ensure_ascii=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=None, help="config.json to copy instead of the GGUF's")
    ap.add_argument("--architecture", default="LlamaForCausalLM")
    ap.add_argument("--llama3", action="store_true")
    args = ap.parse_args()
    from transformers import AutoConfig, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(args.gguf))
    os.makedirs(args.out, exist_ok=True)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(args.out)
    if args.config:
        shutil.copy(args.config, os.path.join(args.out, "config.json"))
    else:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        config.architectures = [args.architecture]
        config.save_pretrained(args.out)
    with open(os.path.join(args.out, "config.json")) as f:
        config = json.load(f)
    if args.llama3:
        llama3_fixups(args.out, config["vocab_size"])
    tok = AutoTokenizer.from_pretrained(args.out)  # as the device will load it
    print(f"{args.out}: {len(tok)} tokens (vocab_size {config['vocab_size']}), "
          f"architectures {config['architectures']}, 'Hello world' -> {tok.encode('Hello world')}")


if __name__ == "__main__":
    main()
