"""The training stream: sample tasks, pack examples into fixed-length rows, hand rows to ranks.

**Sampling** (T5, Raffel et al. 2020, sec. 3.5.2): task m is drawn with probability
proportional to ``weight_m * min(n_m, K) ** (1 / T)``: examples-proportional with a cap K (so a
huge task cannot drown the small ones) and a temperature T (T > 1 flattens towards uniform).
Within a task, examples come in a fresh seeded permutation every epoch.

**Packing**: a row holds ``seq_len + 1`` tokens (inputs are row[:-1], targets row[1:]). Whole
examples are placed first-fit from a window of the next ``PACK_WINDOW`` drawn examples (oldest
first, so none waits longer than one row); the rest of a row is padding without loss. Examples
are never split across rows. Packed examples attend to the earlier examples of their row (plain
causal attention, as in T5/GPT packing); the loss is only on each example's own answer tokens.
An example longer than the row is truncated: its prompt loses tokens **from the left** so that
the whole target fits; if the target alone would leave less than a quarter of the row to the
prompt, the prompt keeps its last quarter-row of tokens and the target is cut on the right.
(Tasks clip long documents at a word boundary first, so this is a rare fallback.)

**Ranks** (what holds): the data is one deterministic global sequence of rows that depends only
on the tasks, the tokenizer, ``seq_len`` and ``seed``. Micro-step k of rank r is rows
``[(k*W + r)*B, (k*W + r + 1)*B)`` (W ranks, B = micro_batch). So the rows of optimizer step s
are the contiguous block ``[s*N, (s+1)*N)`` with N = W * accumulation * B: the same global
batch, in the same order, for every way of splitting N over ranks, accumulation steps and
micro-batches. Every rank walks the whole sequence (cheap: only indices for other ranks' rows),
so after each ``next()`` all ranks hold the same position and ``state_dict()`` is identical on
every rank; it can be loaded with another world size or micro-batch size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from polytask.data.tokenize import TokenizedExamples
from polytask.errors import PolytaskError

PACK_WINDOW = 16
STATE_VERSION = 1


def mixture_rates(sizes: list[int], weights: list[float], cap: int | None, temperature: float) -> np.ndarray:
    """Sampling probability of each task: weight * min(n, cap) ** (1 / temperature), normalized."""
    n = np.asarray(sizes, np.float64)
    if cap is not None:
        n = np.minimum(n, cap)
    rates = np.asarray(weights, np.float64) * n ** (1.0 / temperature)
    return rates / rates.sum()


@dataclass
class Batch:
    tokens: torch.Tensor  # (micro_batch, seq_len) int64
    targets: torch.Tensor  # (micro_batch, seq_len) int64, -100 where there is no loss
    task_ids: torch.Tensor  # (micro_batch, seq_len) int64, task of each target, -1 where there is no loss


class MixtureLoader:
    """Iterator of ``Batch``; ``state_dict()``/``load_state_dict()`` resume it exactly."""

    def __init__(
        self,
        task_names: list[str],
        data: list[TokenizedExamples],
        rates: np.ndarray,
        seq_len: int,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise PolytaskError(f"rank {rank} is outside world_size {world_size}")
        self.task_names = list(task_names)
        self.data = data
        self.rates = rates
        self.cum_rates = np.cumsum(rates)
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.seed, self.rank, self.world_size, self.pad_id = seed, rank, world_size, pad_id
        self.row_len = seq_len + 1
        self.lengths = [d.lengths() for d in data]
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._reset()

    def _reset(self) -> None:
        self.rng = np.random.default_rng([self.seed, 0x6D6978])  # task draws
        self.epochs = [0] * len(self.data)
        self.cursors = [0] * len(self.data)
        self.window: list[tuple[int, int]] = []  # drawn, not yet packed: (task, example)
        self.rows = 0  # global rows packed so far

    # --- sampling ---------------------------------------------------------------------------------

    def _perm(self, task: int, epoch: int) -> np.ndarray:
        key = (task, epoch)
        if key not in self._perms:
            if len(self._perms) > 2 * len(self.data):
                self._perms.clear()
            salt = zlib.crc32(self.task_names[task].encode())
            self._perms[key] = np.random.default_rng([self.seed, salt, epoch]).permutation(len(self.data[task]))
        return self._perms[key]

    def _draw(self) -> tuple[int, int]:
        task = min(int(np.searchsorted(self.cum_rates, self.rng.random(), side="right")), len(self.data) - 1)
        example = int(self._perm(task, self.epochs[task])[self.cursors[task]])
        self.cursors[task] += 1
        if self.cursors[task] == len(self.data[task]):
            self.epochs[task] += 1
            self.cursors[task] = 0
        return task, example

    def _example_len(self, task: int, example: int) -> int:
        return min(int(self.lengths[task][example]), self.row_len)

    def _pack_row(self) -> list[tuple[int, int]]:
        """The examples of the next global row, first-fit from the window."""
        row, space = [], self.row_len
        while space > 0:
            while len(self.window) < PACK_WINDOW:
                self.window.append(self._draw())
            for j, (t, i) in enumerate(self.window):  # noqa: B007 (j is used after the loop)
                if self._example_len(t, i) <= space:
                    break
            else:
                break
            row.append(self.window.pop(j))
            space -= self._example_len(t, i)
        self.rows += 1
        return row

    # --- rows -> tensors --------------------------------------------------------------------------

    def _example_tokens(self, task: int, example: int) -> tuple[np.ndarray, int]:
        """(token ids, number of prompt tokens) after truncation to the row length."""
        d = self.data[task]
        ids = d.tokens[d.offsets[example] : d.offsets[example + 1]]
        n_prompt = int(d.prompt_lens[example])
        if len(ids) <= self.row_len:
            return ids, n_prompt
        n_target = len(ids) - n_prompt
        keep_prompt = min(n_prompt, max(self.row_len - n_target, self.row_len // 4))
        keep_target = self.row_len - keep_prompt
        return np.concatenate(
            [ids[n_prompt - keep_prompt : n_prompt], ids[n_prompt : n_prompt + keep_target]]
        ), keep_prompt

    def _materialize(self, rows: list[list[tuple[int, int]]]) -> Batch:
        b, n = len(rows), self.row_len
        tokens = np.full((b, n), self.pad_id, np.int64)
        loss = np.zeros((b, n), bool)  # token at this position is predicted (it is a target)
        task = np.full((b, n), -1, np.int64)
        for r, row in enumerate(rows):
            pos = 0
            for t, i in row:
                ids, n_prompt = self._example_tokens(t, i)
                tokens[r, pos : pos + len(ids)] = ids
                # The first token of an example follows another example's tokens: never a target.
                start = pos + max(n_prompt, 1)
                loss[r, start : pos + len(ids)] = True
                task[r, start : pos + len(ids)] = t
                pos += len(ids)
        targets = np.where(loss[:, 1:], tokens[:, 1:], -100)
        return Batch(
            tokens=torch.from_numpy(tokens[:, :-1].copy()),
            targets=torch.from_numpy(targets),
            task_ids=torch.from_numpy(task[:, 1:].copy()),
        )

    def __iter__(self) -> MixtureLoader:
        return self

    def __next__(self) -> Batch:
        # One micro-step of every rank: W*B global rows; this rank's are the r-th block of B.
        mine = []
        for w in range(self.world_size):
            for _ in range(self.micro_batch):
                row = self._pack_row()
                if w == self.rank:
                    mine.append(row)
        return self._materialize(mine)

    # --- resume -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "task_names": list(self.task_names),
            "task_sizes": [len(d) for d in self.data],
            "seq_len": self.seq_len,
            "seed": self.seed,
            "rows": self.rows,
            "rng": self.rng.bit_generator.state,
            "epochs": list(self.epochs),
            "cursors": list(self.cursors),
            "window": [list(x) for x in self.window],
        }

    def load_state_dict(self, state: dict) -> None:
        mine = {
            "task_names": self.task_names,
            "task_sizes": [len(d) for d in self.data],
            "seq_len": self.seq_len,
            "seed": self.seed,
        }
        for key, value in mine.items():
            if state.get(key) != value:
                raise PolytaskError(
                    f"data state does not match this data config: {key} is {state.get(key)!r} in the checkpoint, "
                    f"{value!r} now (resume with the same tasks, seq_len and seed)"
                )
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.epochs = list(state["epochs"])
        self.cursors = list(state["cursors"])
        self.window = [tuple(x) for x in state["window"]]
        self.rows = int(state["rows"])
