"""Tokenizer and chat template: the ``tokenizers`` library plus the model's own Jinja template."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from polytask.errors import PolytaskError

# GGUF token types (llama.cpp): 3 = control, 4 = user-defined; both are special, never split.
_SPECIAL_TOKEN_TYPES = {3, 4}


def write_tokenizer_files(tok: dict, out: Path) -> None:
    """Build tokenizer.json (+ config, chat template) from the vocabulary held in a GGUF file."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if tok["model"] != "gpt2":
        raise PolytaskError(f"GGUF tokenizer model {tok['model']!r} is not supported (only byte-level BPE 'gpt2')")
    vocab = {t: i for i, t in enumerate(tok["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in tok["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if tok["pre"] in ("smollm", "starcoder", "refact"):
        # These vocabularies split numbers into single digits before the GPT-2 regex.
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    special = [tok["tokens"][i] for i, t in enumerate(tok["token_type"]) if t in _SPECIAL_TOKEN_TYPES]
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    bos, eos = tok["tokens"][tok["bos_token_id"]], tok["tokens"][tok["eos_token_id"]]
    config = {"bos_token": bos, "eos_token": eos, "pad_token": eos, "tokenizer_class": "PreTrainedTokenizerFast"}
    if tok.get("chat_template"):
        config["chat_template"] = tok["chat_template"]
        (out / "chat_template.jinja").write_text(tok["chat_template"])
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    eos = tok["eos_token_id"]
    gen = {"bos_token_id": tok["bos_token_id"], "eos_token_id": eos, "pad_token_id": eos}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


def _token_text(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


class Tokenizer:
    """Text <-> token ids, the chat template, and the ids that end an assistant turn."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.dir = Path(model_dir)
        path = self.dir / "tokenizer.json"
        if not path.exists():
            raise PolytaskError(f"{self.dir}: no tokenizer.json (polytask reads fast tokenizers in the HF layout)")
        try:
            self.tk = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
            raise PolytaskError(f"{path}: unreadable tokenizer ({e})") from None
        cfg_path = self.dir / "tokenizer_config.json"
        self.config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        template = self.dir / "chat_template.jinja"
        self.chat_template: str | None = template.read_text() if template.exists() else self.config.get("chat_template")
        self.eos_token = _token_text(self.config.get("eos_token"))
        self.bos_token = _token_text(self.config.get("bos_token"))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def token_id(self, token: str) -> int | None:
        return self.tk.token_to_id(token)

    @cached_property
    def stop_ids(self) -> list[int]:
        """Ids that end generation: eos plus the usual end-of-turn markers present in the vocabulary."""
        ids = []
        gen_path = self.dir / "generation_config.json"
        if gen_path.exists():
            eos = json.loads(gen_path.read_text()).get("eos_token_id")
            ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
        for t in (self.eos_token, "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"):
            i = self.tk.token_to_id(t) if t else None
            if i is not None:
                ids.append(i)
        return sorted(set(ids))

    @property
    def pad_id(self) -> int:
        return self.stop_ids[0] if self.stop_ids else 0

    def encode(self, text: str) -> list[int]:
        """Text -> ids; special-token text such as ``<|im_start|>`` maps to its id (templates need it)."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special)

    @cached_property
    def _template(self):
        return _jinja_env().from_string(self.chat_template)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the model was trained to see it (its own Jinja chat template)."""
        if not self.chat_template:
            # A base model without a template: plain "role: content" lines.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant: " if add_generation_prompt else "")
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt))


def _jinja_env():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise PolytaskError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


def chat_messages(prompt: str, system: str | None = None, history: list[dict] | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + list(history or []) + [{"role": "user", "content": prompt}]


class TextStream:
    """Token ids -> text pieces as they are generated: whole characters only (a multi-byte character
    split over tokens waits for its last token), cut at the first stop string, never showing part of one."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str] | None = None) -> None:
        stops = stops or []
        self.tok, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""  # decoded so far (up to a stop string)
        self.shown = 0  # characters already handed out
        self.stopped = False
        self.hold = max((len(s) for s in stops), default=1) - 1

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        for s in self.stops:
            at = text.find(s, max(0, self.shown - len(s)))
            if at >= 0:
                text, self.stopped = text[:at], True
        self.text = text
        upto = len(text) if self.stopped else max(self.shown, len(text) - self.hold)
        piece, self.shown = text[self.shown : upto], upto
        return piece

    def flush(self, final: bool = False) -> str:
        piece = self.text[self.shown :]
        self.shown = len(self.text)
        return self.text if final else piece
