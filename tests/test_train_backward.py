"""The training step's hand-written backwards give autograd's gradients.

Per-token cross-entropy (in-place softmax gradient), RMSNorm (written-out backward), the
embedding gradient of tied weights (added into the head's dense gradient in place), and logits
computed only where a target is.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from polytask.model import RMSNorm, build_model, preset
from polytask.train.loss import token_cross_entropy


@pytest.mark.parametrize("overwrite", [False, True])
def test_token_cross_entropy_matches_torch_values_and_gradient(overwrite):
    torch.manual_seed(0)
    logits = torch.randn(37, 101, dtype=torch.float64)  # not a multiple of the row chunk
    targets = torch.randint(0, 101, (37,))
    targets[::5] = -100
    weights = torch.rand(37, dtype=torch.float64)  # a per-token upstream gradient

    ref = logits.clone().requires_grad_()
    expected = F.cross_entropy(ref, targets, ignore_index=-100, reduction="none")
    (expected * weights).sum().backward()
    ours = logits.clone().requires_grad_()
    scratch = ours * 1.0  # as a projection's output: nothing else reads it
    loss = token_cross_entropy(scratch, targets, overwrite=overwrite)
    (loss * weights).sum().backward()
    # overwrite: the log-probabilities took the logits' place (then, in backward, the gradient)
    assert torch.equal(ours, logits) and torch.equal(scratch, logits) != overwrite

    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=1e-12)
    assert (ours.grad[::5] == 0).all()  # ignored positions get no gradient


def test_token_cross_entropy_refuses_a_second_backward():
    logits = torch.randn(4, 10, requires_grad=True)
    loss = token_cross_entropy(logits, torch.tensor([1, 2, 3, -100])).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward can run once"):
        loss.backward()


@pytest.mark.parametrize("trainable_weight", [True, False])
def test_rmsnorm_backward_matches_autograd_of_the_formula(trainable_weight):
    torch.manual_seed(0)
    norm = RMSNorm(48, 1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    norm.weight.requires_grad_(trainable_weight)
    x = torch.randn(3, 5, 48, dtype=torch.float64)
    grad = torch.randn(3, 5, 48, dtype=torch.float64)

    a = x.clone().requires_grad_()
    expected = norm.weight * (a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-5))
    expected.backward(grad)
    ref_weight_grad = norm.weight.grad
    norm.weight.grad = None

    b = x.clone().requires_grad_()
    out = norm.float()(b.float()).double()  # the written-out backward serves fp32
    out.backward(grad)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)
    if trainable_weight:
        torch.testing.assert_close(norm.weight.grad.double(), ref_weight_grad, rtol=1e-4, atol=1e-5)
    else:
        assert norm.weight.grad is None


def test_logits_only_at_targets_give_the_full_loss_and_gradient():
    """``model(tokens, keep=targets != -100)``: what the training loop does for answer-only losses."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = build_model(cfg, device="cpu")
    model.init_weights(seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24))
    targets = torch.full_like(tokens, -100)
    targets[0, 10:14], targets[1, 3:20] = tokens[0, 11:15], tokens[1, 4:21]  # two answers
    keep = targets != -100

    full = model(tokens)
    F.cross_entropy(full.flatten(0, 1), targets.flatten(), reduction="sum").backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    kept = model(tokens, keep=keep)
    assert kept.shape == (int(keep.sum()), cfg.vocab_size)
    torch.testing.assert_close(kept, full[keep].detach(), rtol=0, atol=1e-6)
    token_cross_entropy(kept, targets[keep]).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-6, msg=n)


def test_tied_embedding_gradient_is_dense_and_equals_the_untied_sum():
    torch.manual_seed(0)
    cfg = preset("tiny")
    assert cfg.tie_embeddings
    tied = build_model(cfg, device="cpu")
    tied.init_weights(seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24))
    tokens[0, :6] = 7  # repeated ids: their rows add up
    lookups = []  # the embedding's output, as the first block receives it
    hook = tied.model.layers["0"].register_forward_pre_hook(lambda module, args: lookups.append(args[0]))
    F.cross_entropy(tied(tokens).flatten(0, 1), tokens.flatten()).backward()
    hook.remove()
    assert type(lookups[0].grad_fn).__name__ == "TiedLookupBackward"  # the in-place path was taken

    # The same weights untied: two dense gradients whose sum is what the tied weight must get.
    untied = copy.deepcopy(tied)
    untied.zero_grad(set_to_none=True)
    untied.lm_head.weight = torch.nn.Parameter(untied.model.embed_tokens.weight.detach().clone())
    untied.model.layers["0"].register_forward_pre_hook(lambda module, args: lookups.append(args[0]))
    F.cross_entropy(untied(tokens).flatten(0, 1), tokens.flatten()).backward()
    assert type(lookups[1].grad_fn).__name__ == "EmbeddingBackward0"
    embed_grad = untied.model.embed_tokens.weight.grad
    assert embed_grad.layout == torch.strided  # untied: the embedding's own gradient stays dense

    grad = tied.lm_head.weight.grad
    assert grad.layout == torch.strided
    torch.testing.assert_close(grad, untied.lm_head.weight.grad + embed_grad, rtol=0, atol=1e-7)


def test_tied_gradient_is_right_whichever_backward_runs_first():
    from polytask.kernels import HeadWeight, TiedLink, TiedLookup

    torch.manual_seed(0)
    weight = torch.randn(11, 4, dtype=torch.float64)
    tokens = torch.tensor([[3, 3, 7], [0, 10, 3]])
    x = torch.randn(5, 4, dtype=torch.float64)

    def loss(w, head_first: bool, tied: bool):
        link = TiedLink()
        lookup = (lambda: TiedLookup.apply(tokens, w, link)) if tied else (lambda: F.embedding(tokens, w))
        head = (lambda: F.linear(x, HeadWeight.apply(w, link))) if tied else (lambda: F.linear(x, w))
        # autograd runs the later-made node's backward first
        if head_first:
            emb, logits = lookup(), head()
        else:
            logits, emb = head(), lookup()
        return (logits.sin().sum() + emb.cos().sum() * 3) ** 2

    for head_first in (True, False):
        plain = weight.clone().requires_grad_()
        loss(plain, head_first, tied=False).backward()
        ours = weight.clone().requires_grad_()
        loss(ours, head_first, tied=True).backward()
        torch.testing.assert_close(ours.grad, plain.grad, rtol=1e-12, atol=1e-12)


def test_short_bf16_training_attention_runs_in_fp32_and_long_stays_bf16():
    from polytask.kernels import FP32_ATTENTION_MAX_KEYS, attention

    torch.manual_seed(0)
    for keys, expect_fp32 in ((16, True), (FP32_ATTENTION_MAX_KEYS + 8, False)):
        q = torch.randn(2, 4, keys, 8, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(2, 2, keys, 8, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(2, 2, keys, 8, dtype=torch.bfloat16, requires_grad=True)
        out = attention(q, k, v, None, True, True)
        assert out.dtype == torch.bfloat16
        exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
        assert torch.equal(out, exact.bfloat16()) == expect_fp32
        out.float().sum().backward()
        assert q.grad.dtype == torch.bfloat16 and q.grad.abs().sum() > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 inputs under autocast: the same choice
            auto = attention(q.detach().float(), k.detach().float(), v.detach().float(), None, True, True)
        assert auto.dtype == (torch.float32 if expect_fp32 else torch.bfloat16)
        with torch.no_grad():  # inference keeps the inputs' dtype
            assert attention(q, k, v, None, True, True).dtype == torch.bfloat16
