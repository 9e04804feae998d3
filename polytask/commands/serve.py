"""``polytask serve``: the applications and an OpenAI-compatible API over HTTP, with a web page at ``/``."""

from __future__ import annotations

import ipaddress
import socket
import sys

from polytask.cliutil import add_model_args, model_options
from polytask.errors import PolytaskError


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve the applications, an OpenAI-compatible API and a web page")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    add_model_args(p, adapter="auto", app=True)
    p.add_argument("--store", default=None, help="SQLite store file (default: $POLYTASK_HOME/store.sqlite)")
    p.add_argument("--kb", default=None, help="the agent's knowledge base folder (default: the shipped example)")
    p.add_argument("--max-batch", type=int, default=16, help="requests generating at once (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429 (default 64)")
    p.add_argument("--max-len", type=int, default=2048, help="prompt + completion tokens per request")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per generation request (default 120)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10 MiB)")
    p.add_argument("--max-tokens", type=int, default=256, help="default completion length for the OpenAI API")
    p.add_argument("--demo", action="store_true",
                   help="index the shipped sample documents into collection 'demo' and print a fresh demo key")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def exposure_warning(host: str, keys_exist: bool) -> str | None:
    if is_loopback(host) or keys_exist:
        return None
    return (f"warning: binding to {host}, which other machines can reach, and no API key exists: every request "
            f"but /health will be refused until you create one with `polytask keys create --collection NAME`")


def run(args) -> int:
    import uvicorn

    from polytask.scheduler import SchedulerConfig
    from polytask.serve import create_app, load_state

    if not 0 < args.port < 65536:
        raise PolytaskError(f"--port must be in 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise PolytaskError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.max_tokens < 1:
        raise PolytaskError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.kb:
        from polytask.apps.agent import load_kb

        load_kb(args.kb)  # a broken knowledge base fails now, with its file and line, not at the first chat
    try:  # checked before the models load, and named as the flags
        sched = SchedulerConfig(max_batch=args.max_batch, max_queue=args.max_queue, max_len=args.max_len,
                                timeout_s=args.timeout)
        sched.check()
    except PolytaskError as e:
        raise PolytaskError(f"{e} (flags --max-batch, --max-queue, --max-len, --timeout)") from None
    state = load_state(args.model, args.adapter, store=args.store, scheduler=sched, **model_options(args),
                       kb_dir=args.kb, max_upload_bytes=int(args.max_upload_mb * 2**20),
                       default_max_tokens=args.max_tokens)
    demo_key = demo_setup(state) if args.demo else None
    if warning := exposure_warning(args.host, state.keys.any_active()):
        print(warning, file=sys.stderr)
    shown = args.host if ":" not in args.host else f"[{args.host}]"
    url = f"http://{shown}:{args.port}/"
    print(f"polytask serve: {state.model_id} at {url}  (OpenAI base URL: {url}v1)", flush=True)
    if demo_key:
        print(f"demo key (collection 'demo'): {demo_key}\nopen {url}#key={demo_key}", flush=True)
    uvicorn.run(create_app(state), host=args.host, port=args.port, log_level="warning")
    state.close()
    return 0


def demo_setup(state) -> str:
    """Index the shipped samples into collection 'demo'; revoke older demo keys and make a fresh one."""
    from importlib.resources import files

    from polytask.store import DocStore

    samples = files("polytask") / "assets" / "samples"
    with DocStore(state.store_path) as db:
        for f in sorted(samples.iterdir()):
            if f.name.endswith((".md", ".html", ".pdf", ".docx")):  # documents; the .eml/.txt samples are e-mails
                db.add(f, "demo")
    for k in state.keys.list():
        if k.label == "demo" and k.revoked_at is None:
            state.keys.revoke(str(k.id))
    key, _ = state.keys.create(["demo"], label="demo")
    return key
