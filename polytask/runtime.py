"""A loaded language model for the layers above the engine: weights + tokenizer + engine, text in, text out."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from polytask.engine import Completion, Engine, SamplingParams
from polytask.errors import PolytaskError
from polytask.packing import fuse_projections
from polytask.registry import load_model
from polytask.tokenizer import TextStream, Tokenizer

Messages = list[dict]

# generation_config.json keys that are SamplingParams fields, as vLLM reads them for its defaults.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


def sampling_defaults(model_dir: Path) -> dict:
    """The sampling a model folder recommends: the SamplingParams fields its generation_config.json
    sets ({} without the file: the engine's defaults, greedy). ``do_sample: false`` means greedy,
    as in transformers, whatever temperature the file also names."""
    path = Path(model_dir) / "generation_config.json"
    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
        values = {k: cfg[k] for k in SAMPLING_KEYS if cfg.get(k) is not None}
        if cfg.get("do_sample") is False:
            values["temperature"] = 0.0
        SamplingParams(**values)
    except (ValueError, TypeError, AttributeError, PolytaskError) as e:
        raise PolytaskError(f"{path}: unusable sampling settings ({e})") from None
    return values


BACKENDS = ("torch", "onnx")
TORCH_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_backend(backend: str, precision: str | None) -> None:
    """One line for a backend or precision that is not one polytask runs, or a pair that does not go."""
    from polytask.onnx_export import ONNX_PRECISIONS, check_precision

    if backend not in BACKENDS:
        raise PolytaskError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if precision is None:
        return
    if backend == "onnx":
        check_precision(precision)
    elif precision not in TORCH_PRECISIONS:
        known = set(TORCH_PRECISIONS) | set(ONNX_PRECISIONS)
        if precision in known:
            raise PolytaskError(f"precision {precision} runs on --backend onnx; --backend torch runs "
                                f"{' or '.join(TORCH_PRECISIONS)}")
        raise PolytaskError(f"unknown precision {precision!r}; precisions: {', '.join(sorted(known))}")


class LM:
    def __init__(self, model, tokenizer: Tokenizer, model_dir: Path, name: str, adapter: str | None = None,
                 backend: str = "torch", precision: str = "fp32") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_dir = model_dir
        self.name = name
        self.adapter = adapter
        self.backend = backend
        self.precision = precision
        self.engine = Engine(model, tokenizer.stop_ids, tokenizer.pad_id)
        self.sampling_defaults = sampling_defaults(model_dir)

    def with_defaults(self, sampling: dict) -> dict:
        """SamplingParams fields for a command or request: the values it gives (None: left out)
        over the model's recommended ones (``sampling_defaults``). ``complete``/``chat`` keep the
        engine's greedy default: the applications and evaluation want the same answer every time."""
        return {**self.sampling_defaults, **{k: v for k, v in sampling.items() if v is not None}}

    @classmethod
    def load(cls, model: str = "default", adapter: str | None = None, dtype: torch.dtype = torch.float32,
             backend: str = "torch", precision: str | None = None) -> LM:
        """``adapter``: a PEFT folder, a shipped adapter's name, ``auto`` (the shipped multi-task adapter
        on the embedded default) or ``none``/None.

        ``backend``: ``torch`` (polytask's model) or ``onnx`` (ONNX Runtime over the model builder's
        export, built into the cache on first use, see ``onnx_export.cached_onnx``; ``model`` may
        also be an ONNX export folder). ``precision``: fp32 or bf16 on torch, fp32, int8 or int4 on
        onnx; None: ``dtype`` on torch, fp32 on onnx (an export folder: its own)."""
        from polytask.adapters import apply_adapter  # LoRA lives in the customization layer
        from polytask.onnx_export import is_onnx_folder
        from polytask.registry import resolve_adapter

        check_backend(backend, precision)
        path = resolve_adapter(adapter, model)
        adapter_name = str(path) if path else None
        if backend == "onnx":
            return cls._load_onnx(model, path, precision)
        if is_onnx_folder(Path(model).expanduser()):
            raise PolytaskError(f"{model}: an ONNX export folder; run it with --backend onnx")
        if precision is not None:
            dtype = TORCH_PRECISIONS[precision]
        net, model_dir = load_model(model, dtype)
        if path is not None:
            net = apply_adapter(net, path, model_dir)
        precision = next((k for k, v in TORCH_PRECISIONS.items() if v == dtype), str(dtype).removeprefix("torch."))
        return cls(fuse_projections(net), Tokenizer(model_dir), model_dir, model, adapter_name, "torch", precision)

    @classmethod
    def _load_onnx(cls, model: str, adapter: Path | None, precision: str | None) -> LM:
        from polytask.onnx_export import cached_onnx, check_export, is_onnx_folder
        from polytask.onnx_model import OnnxLlama
        from polytask.registry import resolve_model_dir

        folder = Path(model).expanduser()
        if is_onnx_folder(folder):
            if adapter is not None:
                raise PolytaskError(
                    f"{model}: an ONNX export holds its weights as exported; merge the adapter in when exporting "
                    f"(polytask export --format onnx --adapter {adapter})"
                )
            made = check_export(folder).get("precision")
            if precision is not None and made is not None and precision != made:
                raise PolytaskError(f"{model}: an ONNX export at {made}, not {precision}; export it at {precision}")
            model_dir, precision = folder, made or precision or "fp32"
        else:
            model_dir = resolve_model_dir(model)
            precision = precision or "fp32"
            folder = cached_onnx(model_dir, adapter, precision)
        adapter_name = str(adapter) if adapter else None
        return cls(OnnxLlama(folder), Tokenizer(model_dir), model_dir, model, adapter_name, "onnx", precision)

    @property
    def adapter_name(self) -> str | None:
        """The adapter folder's name (``polytask-multitask`` for the shipped one), or None."""
        return Path(self.adapter).name if self.adapter else None

    def _prompt_ids(self, item: str | Messages, raw: bool) -> list[int]:
        if raw:
            assert isinstance(item, str)
            return self.tokenizer.encode(item)
        messages = [{"role": "user", "content": item}] if isinstance(item, str) else item
        return self.tokenizer.encode_chat(messages)

    def complete(self, items: list[str | Messages], raw: bool = False, **sampling) -> list[Completion]:
        """Chat-templated (or ``raw``) prompts -> completions, generated as one batch."""
        prompts = [self._prompt_ids(x, raw) for x in items]
        return self.engine.generate(prompts, SamplingParams(**sampling))

    def chat(self, messages: str | Messages | list[Messages], **sampling) -> str | list[str]:
        """One conversation (a string or a message list) -> reply; a list of conversations -> list of replies."""
        many = isinstance(messages, list) and messages and isinstance(messages[0], list)
        items = messages if many else [messages]
        replies = [self.tokenizer.decode(c.tokens).strip() for c in self.complete(items, **sampling)]
        return replies if many else replies[0]

    def stream_chat(self, messages: str | Messages, **sampling) -> Iterator[str]:
        """Text pieces as they are generated (decoded incrementally so multi-byte characters stay whole)."""
        text = TextStream(self.tokenizer)
        for t in self.engine.stream(self._prompt_ids(messages, False), SamplingParams(**sampling)):
            if piece := text.add(t):
                yield piece


class SentenceRepeats:
    """A stop condition on decoded text: True once one sentence (or line) has been completed
    ``times`` times in the reply. A small model that falls into a loop repeats one sentence, or a
    cycle of a few, until its token budget runs out; real replies rarely say the same sentence of
    ``min_words`` words or more three times. A sentence counts once it is complete (its ``.``,
    ``!`` or ``?`` followed by white space, or its line's end), compared without case, spacing or
    its final punctuation."""

    BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n")

    def __init__(self, times: int = 3, min_words: int = 4) -> None:
        self.times, self.min_words = times, min_words
        self.text = ""
        self.start = 0  # where the sentence being written begins in ``text``
        self.counts: Counter[str] = Counter()

    def add(self, piece: str) -> bool:
        """Feed the next piece of the reply; True when the reply repeats itself."""
        self.text += piece
        for m in self.BOUNDARY.finditer(self.text, self.start):
            sentence, self.start = self.text[self.start : m.start()], m.end()
            words = sentence.lower().rstrip(".!?").split()
            if len(words) >= self.min_words:
                key = " ".join(words)
                self.counts[key] += 1
                if self.counts[key] >= self.times:
                    return True
        return False


def keep_freed_memory() -> bool:
    """Have glibc keep freed activation memory for reuse instead of handing it back to the OS.

    PyTorch's CPU tensors come straight from malloc. By default glibc serves blocks above a
    (dynamic) threshold with fresh mmap pages and trims the heap back on free, so each forward pass
    page-faults its activations in again. With blocks up to 32 MB served from the heap and the heap
    kept, a prefill reuses that memory instead (BENCHMARKS.md: the faults and times). Process-wide
    and for the rest of the process, and every malloc arena may then keep up to 1 GB of freed
    memory, so only the commands that generate in their own short-lived process call it (generate, chat,
    demo, eval), not the multi-threaded server or training (whose steps showed no gain).
    Returns False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))
