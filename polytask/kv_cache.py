"""The KV cache interface the model's forward writes through, and its two implementations.

``KVCache``: one batch of rows at the same position (left-padded prompts), preallocated for the
whole generation. ``SlotCache``: independent sequences, one per slot, each at its own length, for
the step core that batches requests as they come (``engine.SlotBatch``). Both answer
``update(layer, k, v)`` and ``advance(t)``, and hold ``pos``; the ONNX backend reads their buffers.
"""

from __future__ import annotations

import torch

from polytask.model import ModelConfig


class KVCache:
    """Preallocated keys and values for every layer: (layers, batch, kv_heads, max_len, head_dim).

    Every row is at the same position ``pos``: the engine left-pads a batch of prompts of different
    lengths and masks the pad slots. Written in place, never reallocated while decoding.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, dtype: torch.dtype, device=None) -> None:
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        # Not zeroed: this class's readers never go past ``pos`` plus the slots just written, and
        # left-pad slots are written by the prefill (a test runs the engine on a NaN-filled cache).
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0  # next slot to write (same for all rows: rows are left-aligned by padding)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values (batch, kv_heads, t, head_dim); return all keys/values so far."""
        start, t = self.pos, k.shape[2]
        self.k[layer, :, :, start : start + t] = k
        self.v[layer, :, :, start : start + t] = v
        return self.k[layer, :, :, : start + t], self.v[layer, :, :, : start + t]

    def advance(self, t: int) -> None:
        """Called once per forward, after every layer stored its ``t`` new positions."""
        self.pos += t


class SlotCache:
    """Keys/values of ``slots`` independent sequences: (layers, slots, kv_heads, capacity, head_dim).

    Duck-types ``KVCache`` for one step of a ``SlotBatch``: ``begin(lengths, t)`` says where each
    active row writes its ``t`` new keys (from its own length, ``write_at``); ``update`` writes
    there and returns the first ``n`` rows up to the longest row's end, which the step's mask cuts
    to each row's own keys. The ONNX backend (``onnx_model.OnnxLlama``) hands the buffers and
    ``write_at`` to ORT instead.

    It grows along the sequence axis by doubling (up to ``max_len``) and shrinks back when the
    batch empties, so memory follows the work instead of the worst case.
    """

    def __init__(self, cfg: ModelConfig, slots: int, max_len: int, dtype: torch.dtype, device=None,
                 initial: int = 256) -> None:
        self.cfg, self.slots, self.max_len, self.dtype, self.device = cfg, slots, max_len, dtype, device
        self.initial = min(initial, max_len)
        # Read by the model only when a step passes no mask: one row, which is a KVCache's case.
        self.pos = 0
        self._alloc(self.initial)
        self._rows = self._at = self.write_at = None
        self._n = self._kv_len = 0

    def _alloc(self, capacity: int) -> None:
        shape = (self.cfg.num_layers, self.slots, self.cfg.num_kv_heads, capacity, self.cfg.head_dim)
        # Zeroed, unlike KVCache: shorter rows read (masked) slots they never wrote, and a masked
        # NaN would still poison softmax @ v (0 * NaN = NaN).
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.capacity = capacity

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions per slot (doubling, so growth is rare)."""
        if length <= self.capacity:
            return
        assert length <= self.max_len
        old_k, old_v, old = self.k, self.v, self.capacity
        self._alloc(min(self.max_len, max(length, 2 * old)))
        self.k[:, :, :, :old] = old_k
        self.v[:, :, :, :old] = old_v

    def release(self) -> None:
        """Back to the initial size (called when no slot is in use)."""
        if self.capacity > self.initial:
            self._alloc(self.initial)

    def load(self, slot: int, cache: KVCache, length: int) -> None:
        """Copy a prefilled batch-1 cache into ``slot``."""
        self.reserve(length + 1)
        self.k[:, slot, :, :length] = cache.k[:, 0, :, :length]
        self.v[:, slot, :, :length] = cache.v[:, 0, :, :length]

    def move(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def begin(self, lengths: torch.Tensor, t: int = 1) -> None:
        """Next forward: rows ``0..n-1`` each write ``t`` keys from their own length on."""
        self._n = lengths.numel()
        self._kv_len = int(lengths.max()) + t
        self.reserve(self._kv_len)
        self.write_at = lengths.to(self.k.device)
        self._rows = torch.arange(self._n, device=self.k.device)[:, None]
        self._at = self.write_at[:, None] + torch.arange(t, device=self.k.device)  # (n, t)
        self.pos = int(lengths[0]) if self._n == 1 else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (n, kv_heads, t, head_dim): row i's keys go to positions lengths[i].. of slot i.
        self.k[layer, self._rows, :, self._at] = k.transpose(1, 2)
        self.v[layer, self._rows, :, self._at] = v.transpose(1, 2)
        return self.k[layer, : self._n, :, : self._kv_len], self.v[layer, : self._n, :, : self._kv_len]

    def advance(self, t: int) -> None:
        """Nothing: ``begin`` places every step."""
