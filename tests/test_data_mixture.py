"""The mixture: T5 rates, packing, truncation, rank sharding, exact resume (synthetic token data)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from polytask.data import DataConfig, build_data, mixture_rates
from polytask.data.mixture import MixtureLoader
from polytask.data.tokenize import TokenizedExamples
from polytask.errors import PolytaskError


def synthetic(n: int, base: int, prompt_len: int = 3, lengths=(5, 9, 14)) -> TokenizedExamples:
    """n examples; example i has tokens base+i*100+j so every token says where it came from."""
    seqs = [[base + i * 100 + j for j in range(lengths[i % len(lengths)])] for i in range(n)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    tokens = np.asarray([t for s in seqs for t in s], np.int32)
    return TokenizedExamples(tokens, offsets, np.full(n, prompt_len, np.int32))


def loader(rank=0, world_size=1, micro_batch=2, seq_len=32, seed=0, sizes=(50, 7)) -> MixtureLoader:
    data = [synthetic(sizes[0], 1_000_000), synthetic(sizes[1], 2_000_000, prompt_len=2)]
    rates = mixture_rates([len(d) for d in data], [1.0, 1.0], None, 1.0)
    return MixtureLoader(["a", "b"], data, rates, seq_len, micro_batch, seed, rank, world_size, pad_id=0)


def test_t5_rates():
    r = mixture_rates([1000, 10], [1, 1], None, 1.0)
    assert np.allclose(r, [1000 / 1010, 10 / 1010])
    r = mixture_rates([1000, 10], [1, 1], 100, 1.0)  # cap
    assert np.allclose(r, [100 / 110, 10 / 110])
    r = mixture_rates([1000, 10], [1, 1], 100, 2.0)  # temperature: sqrt
    assert np.allclose(r, np.array([10, np.sqrt(10)]) / (10 + np.sqrt(10)))
    r = mixture_rates([100, 100], [3, 1], None, 1.0)  # weights multiply
    assert np.allclose(r, [0.75, 0.25])


def test_sampling_follows_rates():
    ld = loader(micro_batch=8, sizes=(300, 100))
    counts = np.zeros(2)
    for _ in range(20):
        b = next(ld)
        for t in (0, 1):
            # count examples: each example's first target position follows a non-target one
            m = (b.task_ids == t).numpy()
            counts[t] += (m[:, 1:] & ~m[:, :-1]).sum() + m[:, 0].sum()
    assert abs(counts[0] / counts.sum() - 0.75) < 0.05


def test_batch_layout_and_loss_mask():
    ld = loader()
    b = next(ld)
    assert b.tokens.shape == b.targets.shape == b.task_ids.shape == (2, 32)
    assert b.tokens.dtype == b.targets.dtype == b.task_ids.dtype == torch.int64
    # targets are the next token where there is loss, -100 elsewhere; task ids agree with the mask
    loss = b.targets != -100
    assert torch.equal(loss, b.task_ids >= 0)
    assert torch.equal(b.targets[:, :-1][loss[:, :-1]], b.tokens[:, 1:][loss[:, :-1]])
    # the loss is only on answer tokens: position j of an example with j >= prompt_len
    for tgt, task in zip(b.targets[loss].tolist(), b.task_ids[loss].tolist(), strict=True):
        j = tgt % 100
        assert j >= (3 if task == 0 else 2)
        assert tgt // 1_000_000 == task + 1
    # every prompt/answer token of the row made it in once, examples whole
    row = [t for t in b.tokens[0].tolist() if t]
    assert len(row) == len(set(row))


def test_truncation_keeps_target():
    long = TokenizedExamples(np.arange(1, 61, dtype=np.int32), np.array([0, 60]), np.array([50], np.int32))
    ld = MixtureLoader(["x"], [long], np.array([1.0]), 16, 1, 0)
    b = next(ld)
    # row of 17 tokens: the 10-token target whole, the prompt's last 7 tokens
    assert b.tokens[0].tolist() == list(range(44, 60))
    assert b.targets[0].tolist() == [-100] * 6 + list(range(51, 61))
    # a target longer than the row keeps a quarter-row of prompt, the target cut on the right
    huge = TokenizedExamples(np.arange(1, 61, dtype=np.int32), np.array([0, 60]), np.array([10], np.int32))
    b = next(MixtureLoader(["x"], [huge], np.array([1.0]), 16, 1, 0))
    assert b.tokens[0].tolist() == list(range(7, 11)) + list(range(11, 23))


@pytest.mark.parametrize("world_size,accum", [(2, 1), (4, 1), (2, 2)])
def test_global_batch_independent_of_split(world_size, accum):
    """Rows of one optimizer step are the same for 1 rank x (W*A) micro-steps and W ranks x A."""
    total = world_size * accum
    single = loader(world_size=1)
    ranks = [loader(rank=r, world_size=world_size) for r in range(world_size)]
    for _step in range(3):
        ref = torch.cat([next(single).tokens for _ in range(total)])
        # micro-step k of rank r holds rows of block k*W + r
        blocks = {}
        for k in range(accum):
            for r, ld in enumerate(ranks):
                blocks[k * world_size + r] = next(ld).tokens
        got = torch.cat([blocks[i] for i in range(total)])
        assert torch.equal(ref, got)


def test_ranks_get_distinct_rows():
    a, b = next(loader(rank=0, world_size=2)), next(loader(rank=1, world_size=2))
    assert not torch.equal(a.tokens, b.tokens)


def test_resume_exact_and_with_other_world_size():
    ld = loader()
    for _ in range(5):
        next(ld)
    state = pickle.loads(pickle.dumps(ld.state_dict()))
    expected = [next(ld).tokens for _ in range(4)]
    fresh = loader()
    fresh.load_state_dict(state)
    assert all(torch.equal(e, next(fresh).tokens) for e in expected)
    # the same position read by 2 ranks: rank 0 gets rows 0-1, rank 1 rows 2-3 of the continuation
    r0, r1 = loader(rank=0, world_size=2), loader(rank=1, world_size=2)
    r0.load_state_dict(state)
    r1.load_state_dict(state)
    assert torch.equal(torch.cat([next(r0).tokens, next(r1).tokens]), torch.cat(expected[:2]))
    # every rank holds the same state after a step
    assert r0.state_dict() == r1.state_dict()


def test_epochs_cover_every_example():
    ld = loader(micro_batch=4, sizes=(20, 20))
    seen = set()
    for _ in range(40):
        b = next(ld)
        for t in b.targets[b.targets != -100].tolist():
            seen.add(t // 100)
    assert len(seen) == 40  # all examples of both tasks


def test_resume_rejects_other_config():
    state = loader().state_dict()
    with pytest.raises(PolytaskError, match="seq_len"):
        loader(seq_len=64).load_state_dict(state)
    with pytest.raises(PolytaskError, match="seed"):
        loader(seed=1).load_state_dict(state)


def test_bad_config():
    with pytest.raises(PolytaskError, match="data.tasks is empty"):
        DataConfig(tasks={})
    with pytest.raises(PolytaskError, match="mixture_temperature"):
        DataConfig(mixture_temperature=0)
    with pytest.raises(PolytaskError, match=r"data.tasks.clinc150.weight must be a positive number"):
        DataConfig(tasks={"clinc150": {"weight": -1}}).task_tables()
    with pytest.raises(PolytaskError, match="expected a weight"):
        DataConfig(tasks={"clinc150": "lots"}).task_tables()
    cfg = DataConfig()
    cfg.seq_len = 2  # set after construction, as a config loader does
    with pytest.raises(PolytaskError, match="data.seq_len must be at least 8"):
        build_data(cfg, None, 0, 1)
    with pytest.raises(PolytaskError, match="outside world_size"):
        loader(rank=2, world_size=2)
