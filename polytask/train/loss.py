"""Per-token cross-entropy with a leaner backward than ``F.cross_entropy``'s.

The autograd of ``F.cross_entropy(reduction="none")`` runs ``nll_loss``'s backward (a zeroed
(tokens, vocab) gradient, then a scatter) and ``log_softmax``'s backward (a second
(tokens, vocab) buffer). With a 49k vocabulary each of those is a 100 MB pass per 512 tokens.
Here the backward turns the saved log-probabilities into the gradient in place, a chunk of
rows at a time so that each chunk stays in cache: ``(softmax - onehot) * grad``.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
ROWS_PER_CHUNK = 8  # 8 x 49152 fp32 = 1.5 MB: within a core's L2


class _TokenCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, overwrite: bool) -> torch.Tensor:
        # (tokens, vocab). Written over the logits when the caller is done with them: a fresh
        # 100 MB buffer costs its page faults every step (BENCHMARKS.md, the training step).
        logp = torch.log_softmax(logits, dim=-1, out=logits) if overwrite else torch.log_softmax(logits, dim=-1)
        valid = targets != IGNORE_INDEX
        index = targets.clamp(min=0).unsqueeze(1)
        loss = -logp.gather(1, index).squeeze(1) * valid
        # Kept on ctx rather than save_for_backward: backward overwrites it, so it can run once.
        ctx.logp = logp
        ctx.save_for_backward(index, valid)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.logp is None:
            raise RuntimeError("token_cross_entropy: backward can run once (its buffers are reused)")
        index, valid = ctx.saved_tensors
        g, ctx.logp = ctx.logp, None
        scale = (grad * valid).unsqueeze(1).to(g.dtype)  # (tokens, 1): ignored rows get no gradient
        for lo in range(0, g.shape[0], ROWS_PER_CHUNK):
            rows = slice(lo, lo + ROWS_PER_CHUNK)
            chunk = g[rows].exp_()
            chunk.scatter_add_(1, index[rows], torch.full_like(index[rows], -1, dtype=g.dtype))
            chunk.mul_(scale[rows])
        return g, None, None


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """logits (tokens, vocab) float, targets (tokens,) -> per-token loss (tokens,), 0 where the
    target is -100; the same values and gradient as ``F.cross_entropy(..., reduction="none")``.

    ``overwrite``: the logits are scratch (a projection's output that nothing else reads, as in
    the training loop); they are overwritten with the log-probabilities instead of copied.
    """
    return _TokenCrossEntropy.apply(logits, targets, overwrite)
