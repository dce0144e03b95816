"""`tipslab bench loss`: the prototype cross-entropy, plain against chunked (`loss.chunk_rows`),
its peak memory and time (jobs/bench/loss.py); logs nothing, a measurement of one function."""

import json

from .errors import UserError


def cmd_bench_loss(args) -> None:
    """Peak memory and time of the prototype cross-entropy, plain against chunked (loss.chunk_rows)."""
    import torch

    from tipslab.jobs.bench.loss import bench_loss

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to this process (use --device cpu)")
    bf16 = device == "cuda" if args.precision == "auto" else args.precision == "bf16"
    sizes = {"--rows": args.rows, "--prototypes": args.prototypes, "--dim": args.dim}
    sizes.update({"--chunk-rows": args.chunk_rows, "--repeats": args.repeats})
    for flag, value in sizes.items():
        if value < 1:
            raise UserError(f"{flag}: must be at least 1, got {value}")
    r = bench_loss(args.rows, args.prototypes, args.dim, args.chunk_rows, device, args.repeats, args.threads, bf16)
    if args.json:  # the result as JSON (stable keys), and nothing else
        print(json.dumps(r, indent=2))
        return
    print(
        f"L_MIM's cross-entropy over {r['prototypes']} prototypes, {r['rows']} rows of {r['dim']} features, "
        f"forward and backward, {r['precision']}, on {r['device_kind']} ({r['device']}, {r['threads']} threads); "
        f"one fp32 [rows, prototypes] tensor is {r['scores_mb']:.1f} MB"
    )
    print(f"  {'':<22} {'peak MB':>10} {'time s':>9} {'loss':>10}")
    for name, label in (("plain", "plain"), ("chunked", f"chunked ({r['chunk_rows']} rows)")):
        print(f"  {label:<22} {r[f'{name}_peak_mb']:>10.1f} {r[f'{name}_s']:>9.4f} {r[f'{name}_loss']:>10.6f}")
    print(
        f"  plain / chunked peak memory: {r['memory_ratio']:.2f}x; chunked / plain time: {r['time_ratio']:.2f}x "
        f"(median of {args.repeats})"
    )


def add_loss_parser(bench_sub) -> None:
    loss = bench_sub.add_parser(
        "loss", help="the prototype cross-entropy, plain against chunked (loss.chunk_rows): peak memory, time"
    )
    loss.add_argument("--rows", type=int, default=4096, help="rows of the loss (L_MIM: masked patches of the batch)")
    loss.add_argument("--prototypes", type=int, default=8192, help="K, the prototypes")
    loss.add_argument("--dim", type=int, default=256, help="the features' dimension (model.head_bottleneck)")
    loss.add_argument("--chunk-rows", type=int, default=1024, help="rows per chunk of the chunked loss")
    loss.add_argument("--repeats", type=int, default=3, help="timed runs of each after a warm-up (median)")
    loss.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when visible")
    loss.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 autocast on cuda, fp32 on cpu"
    )
    loss.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    loss.add_argument("--json", action="store_true", help="print the result as JSON (stable keys)")
    loss.set_defaults(func=cmd_bench_loss)
