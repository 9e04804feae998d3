"""``polytask eval`` end to end on a tiny random model: result record, predictions, perplexity, bad input."""

from __future__ import annotations

import json
import math

import pytest
from conftest import DATA

from polytask.cli import main


@pytest.fixture
def faq(tmp_path):
    path = tmp_path / "faq.jsonl"
    rows = [{"q": f"What is {i} plus {i}?", "a": str(2 * i)} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_jsonl_task_result_and_predictions(tiny_dir, faq, tmp_path, capsys):
    out, preds = tmp_path / "res" / "r.json", tmp_path / "p.jsonl"
    spec = f"faq:type=jsonl,path={faq},prompt_field=q,target_field=a"
    argv = ["eval", "--model", str(tiny_dir), "--task", spec, "--split", "train", "--limit", "3", "--json"]
    argv += ["--max-new-tokens", "4"]
    rc = main(argv + ["--out", str(out), "--predictions", str(preds)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads(out.read_text())
    assert result["task"] == "faq" and result["split"] == "train" and result["n"] == 3 and result["adapter"] is None
    assert result["model"] == str(tiny_dir) and len(result["data_hash"]) == 16
    assert "{q}" in result["prompt_template"]
    assert set(result["metrics"]) == {"exact_match", "rougeL"}
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(lines) == 3 and all("prediction" in r and r["references"] for r in lines)
    # the same command measures the same examples
    main(argv)
    assert json.loads(capsys.readouterr().out)["data_hash"] == result["data_hash"]


def test_eval_perplexity_on_text_folder(tiny_dir, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The invoice is due at the end of the month.\n\nPlease pay on time.")
    assert main(["eval", "--model", str(tiny_dir), "--task", f"text:path={docs}", "--split", "all", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ppl = result["metrics"]["perplexity"]
    # a random model over 49152 tokens is close to uniform
    assert 1000 < ppl < 10 * 49152 and math.isclose(math.log(ppl), result["metrics"]["nll_per_token"], rel_tol=1e-3)


@pytest.mark.skipif(not (DATA / "clinc150_oos").is_dir(), reason=f"shared data absent at {DATA}")
def test_eval_clinc150_metrics(tiny_dir, capsys):
    argv = ["eval", "--model", str(tiny_dir), "--task", "clinc150", "--limit", "4", "--max-new-tokens", "2"]
    assert main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"in_scope_accuracy", "oos_recall", "accuracy"} <= set(result["metrics"]) and result["n"] == 4


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--task", "nope"], "unknown task 'nope' (tasks: aeslc"),
        (["--task", "clinc150", "--data-root", "/nonexistent"], "dataset folder /nonexistent/clinc150_oos not found"),
        (["--task", "cnndm", "--split", "train", "--data-root", "/x"], "no split 'train' (splits: test)"),
        (["--task", "clinc150", "--limit", "0"], "--limit must be at least 1"),
        (["--task", "clinc150:colour=red"], "unknown option(s) colour"),
    ],
)
def test_eval_bad_input(argv, message, capsys):
    assert main(["eval", *argv]) == 2
    assert message in capsys.readouterr().err


def test_eval_with_adapter(tiny_dir, faq, tmp_path, capsys):
    import torch

    from polytask.adapters import save_model_adapter
    from polytask.config import LoraConfig
    from polytask.lora import apply_lora
    from polytask.registry import load_model

    net, _ = load_model(str(tiny_dir))
    cfg = LoraConfig(rank=2)
    apply_lora(net, cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-zero update, so the adapter changes the answers
    adapter = save_model_adapter(net, tmp_path / "adapter", cfg, str(tiny_dir))
    spec = f"faq:type=jsonl,path={faq},prompt_field=q,target_field=a"
    argv = ["eval", "--model", str(tiny_dir), "--task", spec, "--split", "train", "--max-new-tokens", "6", "--json"]
    preds = {}
    for name, extra in (("base", []), ("adapter", ["--adapter", str(adapter)])):
        assert main(argv + extra + ["--predictions", str(tmp_path / f"{name}.jsonl")]) == 0
        result = json.loads(capsys.readouterr().out)
        preds[name] = (tmp_path / f"{name}.jsonl").read_text()
    assert result["adapter"] == str(adapter)
    assert preds["base"] != preds["adapter"]
