"""`pagedserve export-tokenizer DIR [MODEL]`: write the served model's tokenizer as an HF folder.

Clients that count or build tokens themselves (lm-eval's `local-completions`, benchmarks) need
the tokenizer the server uses; for a GGUF model it lives inside the .gguf file. This writes
tokenizer.json / tokenizer_config.json (chat template included) that
`AutoTokenizer.from_pretrained(DIR)` reads:

    pagedserve export-tokenizer ./smollm2-tokenizer
    lm_eval --model local-completions --tasks hellaswag \
        --model_args model=SmolLM2-135M-Instruct,base_url=http://localhost:8000/v1/completions,tokenizer=./smollm2-tokenizer
"""
from __future__ import annotations

import argparse
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="pagedserve export-tokenizer", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="folder to write (created if missing)")
    ap.add_argument("model", nargs="?", default=None, help="default: the default model")
    ap.add_argument("--tokenizer", default=None)
    args = ap.parse_args(argv)
    from engine.loader.resolve import resolve_model
    from engine.loader.tokenizer import get_tokenizer

    resolved = resolve_model(args.model, args.tokenizer)
    tok = get_tokenizer(resolved.tokenizer, resolved.gguf_file if args.tokenizer is None else None)
    files = tok.save_pretrained(args.dir)
    print(f"wrote {len(files)} files to {args.dir} (vocabulary {len(tok)})")
    return 0
