"""``polytask plan``: memory per device for each strategy, and a setup that fits."""

from __future__ import annotations

import argparse

from polytask.errors import PolytaskError


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory per device for ddp/zero1/zero2/zero3 and a recommended setup")
    p.add_argument("--model", default="smollm2-135m", help="model preset (architecture)")
    p.add_argument("--devices", type=int, default=1, help="data-parallel devices N")
    p.add_argument("--device-memory", default="80GiB", help="memory of one device, e.g. 80GiB, 24GB")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--mixed-precision", choices=["bf16", "fp32"], default="bf16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from polytask.model import preset
    from polytask.train.planner import fmt_bytes, parse_bytes, plan, recommend

    cfg = preset(args.model)
    if args.devices < 1 or args.seq_len < 1 or args.micro_batch < 1:
        raise PolytaskError("--devices, --seq-len and --micro-batch must be >= 1")
    try:
        memory = parse_bytes(args.device_memory)
    except ValueError:
        raise PolytaskError(f"--device-memory {args.device_memory!r}: expected a size such as 80GiB or 24GB") from None
    plans = plan(cfg, args.devices, args.seq_len, args.micro_batch, args.mixed_precision)
    print(
        f"{args.model}: {cfg.num_params() / 1e6:.1f}M parameters, {args.devices} device(s) of "
        f"{fmt_bytes(memory)}, seq_len {args.seq_len} x micro_batch {args.micro_batch}, {args.mixed_precision}"
    )
    head = [
        "strategy",
        "params",
        "grads",
        "optimizer",
        "model state",
        "gathered",
        "activations",
        "act. (ckpt)",
        "total",
        "total (ckpt)",
    ]
    rows = [
        [
            p.strategy,
            *(
                fmt_bytes(x)
                for x in (
                    p.params,
                    p.grads,
                    p.optimizer,
                    p.model_state,
                    p.transient,
                    p.activations,
                    p.activations_checkpointed,
                    p.total(False),
                    p.total(True),
                )
            ),
        ]
        for p in plans
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    print("per device, most loaded rank; model state = fp32 weights + fp32 grads + Adam (16 bytes/param, ZeRO's 16Ψ/N)")
    best = recommend(plans, memory)
    if best is None:
        print(
            "recommendation: does not fit; add devices, lower --micro-batch/--seq-len, or use "
            "parallel.cpu_offload = true with zero3"
        )
    else:
        strategy, ac = best
        print(
            f'recommendation: parallel.strategy = "{strategy}", parallel.activation_checkpointing = "{ac}", '
            f'parallel.mixed_precision = "{args.mixed_precision}"'
        )
    return 0
