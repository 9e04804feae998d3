"""polytask's model and engine against transformers on the real embedded weights (fp32)."""

from __future__ import annotations

import pytest
import torch

from polytask.engine import SamplingParams

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gradient descent in one sentence, then give an example with numbers: 3, 14, 159.",
]


@pytest.fixture(scope="module")
def hf_model(default_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(default_dir), dtype=torch.float32)
    return model.eval()


def test_logits_match_transformers(default_lm, hf_model):
    for text in PROMPTS:
        ids = torch.tensor([default_lm.tokenizer.encode_chat([{"role": "user", "content": text}])])
        with torch.no_grad():
            ours = default_lm.model(ids)
            ref = hf_model(ids).logits
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() < 1e-3


def test_greedy_tokens_match_transformers(default_lm, hf_model):
    ids = default_lm.tokenizer.encode_chat([{"role": "user", "content": PROMPTS[1]}])
    ours = default_lm.engine.generate([ids], SamplingParams(max_new_tokens=32, stop_ids=[]))[0].tokens
    with torch.no_grad():
        ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert ours == ref[0, len(ids) :].tolist()


def test_tokenizer_matches_transformers_gguf_reader(default_lm):
    """Our tokenizer.json built from the GGUF vocabulary encodes like transformers' own GGUF tokenizer."""
    from polytask.registry import smollm2_gguf

    path = smollm2_gguf()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in ["Hello world!", "naïve café — 東京", "def f(x):\n    return x**2", "<|im_start|>user\nhi<|im_end|>"]:
        assert default_lm.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False)


def test_weights_match_transformers_gguf_dequantization(default_dir):
    """Our GGUF conversion (dequantize + undo llama.cpp's q/k permutation) equals transformers' reader."""
    from polytask.registry import smollm2_gguf
    from polytask.weights import read_state_dict

    path = smollm2_gguf()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ours = read_state_dict(default_dir)
    ref_sd = ref.state_dict()
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.7.self_attn.k_proj.weight",
                 "model.layers.29.mlp.down_proj.weight", "model.embed_tokens.weight"]:
        torch.testing.assert_close(ours[name], ref_sd[name], rtol=0, atol=1e-6)
