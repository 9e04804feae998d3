"""``configs/multitask-smollm2.toml`` (the recipe behind the shipped multi-task adapter) loads,
validates and names only registered tasks read from their train splits. No training here."""

from __future__ import annotations

from conftest import REPO

from polytask.config import TARGETS, load_config
from polytask.data.mixture import mixture_rates
from polytask.tasks import TASKS

CONFIG = REPO / "configs" / "multitask-smollm2.toml"
EXPECTED_TASKS = {"clinc150", "banking77", "squad", "samsum", "aeslc", "email_intent", "chitchat"}


def test_multitask_config_loads_and_validates():
    cfg = load_config(CONFIG)
    assert cfg.model.init_from == "default"
    assert cfg.lora.rank >= 1 and set(cfg.lora.target_modules) == set(TARGETS)  # attention + MLP
    tables = cfg.data.task_tables()
    assert set(tables) == EXPECTED_TASKS
    assert set(tables) <= set(TASKS)  # every name is a registered task
    assert all(t["split"] == "train" for t in tables.values())  # train only on train splits
    assert tables["chitchat"]["max_examples"]  # chitchat is capped
    assert cfg.data.mixture_cap and cfg.data.mixture_temperature > 1
    assert cfg.optim.warmup_steps < cfg.optim.steps
    assert 0 < cfg.checkpoint.every < cfg.optim.steps


def test_multitask_mixture_lifts_the_smallest_task():
    """With the config's cap and temperature, samsum (818 train dialogues) gets more than its
    examples-proportional share and no capped task gets more than another."""
    cfg = load_config(CONFIG)
    sizes = [15100, 10003, 8000, 818, 14436, 3657, 3000]  # train sizes (MANIFEST; squad approximate)
    rates = mixture_rates(sizes, [1.0] * 7, cfg.data.mixture_cap, cfg.data.mixture_temperature)
    proportional = mixture_rates(sizes, [1.0] * 7, cfg.data.mixture_cap, 1.0)
    assert rates[3] > proportional[3]
    capped = [r for r, n in zip(rates, sizes, strict=True) if n >= cfg.data.mixture_cap]
    assert max(capped) - min(capped) < 1e-9


def test_stage2_config_continues_stage1_with_the_ask_reader():
    """``configs/multitask-smollm2-stage2.toml``: stage 1's tasks, LoRA shape and run folder, plus
    squad_ask (squad with ask's two-sentence context) at ~43% of the examples."""
    from polytask.tasks import get_task

    stage1, cfg = load_config(CONFIG), load_config(CONFIG.with_name("multitask-smollm2-stage2.toml"))
    assert cfg.lora.init_from == "runs/multitask/adapter"  # stage 1's --run-dir (see its header)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules) == (
        stage1.lora.rank, stage1.lora.alpha, stage1.lora.target_modules)
    tables = cfg.data.task_tables()
    assert set(tables) == EXPECTED_TASKS | {"squad_ask"}
    assert all(t["split"] == "train" for t in tables.values())
    ask = tables["squad_ask"]
    assert ask["type"] == "squad" and get_task("squad_ask", type="squad", context=ask["context"]).opts["context"] \
        == "sentences"
    sizes = [8567, 15100, 10003, 8582, 818, 14436, 3657, 3000]  # squad_ask first, then stage 1's order
    rates = mixture_rates(sizes, [t["weight"] for t in tables.values()], cfg.data.mixture_cap,
                          cfg.data.mixture_temperature)
    assert list(tables)[0] == "squad_ask" and 0.40 < rates[0] < 0.46


def test_stage3_config_continues_stage2_with_more_of_the_reader():
    """``configs/multitask-smollm2-stage3.toml``: stage 2's tasks and LoRA shape, from stage 2's run
    folder, squad_ask at ~60% of the examples, in another data order than stage 2's."""
    stage2 = load_config(CONFIG.with_name("multitask-smollm2-stage2.toml"))
    cfg = load_config(CONFIG.with_name("multitask-smollm2-stage3.toml"))
    assert cfg.lora.init_from == "runs/multitask-stage2/adapter"  # stage 2's --run-dir (see its header)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules) == (
        stage2.lora.rank, stage2.lora.alpha, stage2.lora.target_modules)
    tables = cfg.data.task_tables()
    assert list(tables) == list(stage2.data.task_tables())
    assert all(t["split"] == "train" for t in tables.values())
    assert cfg.data.seed != stage2.data.seed  # most squad_ask examples are new to the adapter
    sizes = [8567, 15100, 10003, 8582, 818, 14436, 3657, 3000]
    rates = mixture_rates(sizes, [t["weight"] for t in tables.values()], cfg.data.mixture_cap,
                          cfg.data.mixture_temperature)
    assert 0.57 < rates[0] < 0.63


def test_stage4_config_continues_the_shipped_adapter_with_unanswerable_questions():
    """``configs/multitask-smollm2-stage4.toml``: the shipped stage-3 adapter's LoRA shape, the
    tasks of stage 3 plus the two unanswerable forms of squad (its own article without the answer
    sentences, another article), train splits only, answerable and unanswerable QA both well fed."""
    stage3 = load_config(CONFIG.with_name("multitask-smollm2-stage3.toml"))
    cfg = load_config(CONFIG.with_name("multitask-smollm2-stage4.toml"))
    assert cfg.lora.init_from == "polytask-multitask"
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules) == (
        stage3.lora.rank, stage3.lora.alpha, stage3.lora.target_modules)
    tables = cfg.data.task_tables()
    assert set(tables) == set(stage3.data.task_tables()) | {"squad_removed", "squad_other"}
    assert all(t["split"] == "train" for t in tables.values())
    assert (tables["squad_removed"]["context"], tables["squad_other"]["context"]) == ("removed", "other")
    sizes = [8567, 8580, 8483, 15100, 10003, 8582, 818, 14436, 3657, 3000]  # the order of the config's tables
    rates = mixture_rates(sizes, [t["weight"] for t in tables.values()], cfg.data.mixture_cap,
                          cfg.data.mixture_temperature)
    assert list(tables)[:3] == ["squad_ask", "squad_removed", "squad_other"]
    assert 0.25 < rates[1] + rates[2] < 0.40 and rates[0] + rates[5] > rates[1] + rates[2]
