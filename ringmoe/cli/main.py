"""``ringmoe``: train | consolidate | reshard | prune | export | eval | federated | export-eos | federated-server |
federated-client | model-info | demo.

Run ``train`` under a launcher for several processes (``torchrun --nproc_per_node 2 -m ringmoe.cli.main train
...``, ``deepspeed``, or ``srun``); a plain call runs one process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ringmoe.core.errors import RingMoEError


def _train(args: argparse.Namespace) -> int:
    from ringmoe.recipes.registry import load_run_config

    # Validate the config before importing DeepSpeed, so a typo fails in a fraction of a second.
    overrides = list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume is not None else [])
    config = load_run_config(args.config, overrides)
    import torch.distributed as dist

    from ringmoe.eval.online import online_probe_callbacks
    from ringmoe.parallel.distributed import shutdown
    from ringmoe.train.loop import train
    from ringmoe.train.preemption import REQUEUE_EXIT_CODE

    result = train(config, online_probe_callbacks(config))

    if dist.get_rank() == 0:
        first = result.start_step + 1
        losses = f"loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}" if result.losses else "no step run"
        print(
            f"trained steps {first}..{result.start_step + len(result.losses)} in {result.seconds:.1f}s: {losses}; "
            f"checkpoint {result.checkpoint}" + (" (preempted: requeue to continue)" if result.preempted else "")
        )
    shutdown()
    if result.preempted:
        return REQUEUE_EXIT_CODE
    return 0


def _consolidate(args: argparse.Namespace) -> None:
    import torch

    from ringmoe.checkpoint.consolidate import consolidate

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    out = consolidate(Path(args.checkpoint), Path(args.output), dtype=dtype)
    print(f"consolidated {args.checkpoint} -> {out}")


def _reshard(args: argparse.Namespace) -> None:
    from ringmoe.checkpoint.reshard import reshard

    out = reshard(Path(args.checkpoint), Path(args.out), args.expert_parallel_size, args.tensor_parallel_size)
    print(f"resharded: {out}; resume with train.resume={out} and the new parallel sizes")


def _prune(args: argparse.Namespace) -> None:
    from ringmoe.prune.run import prune_checkpoint
    from ringmoe.recipes.registry import load_run_config

    config = load_run_config(args.config, args.overrides)
    report = Path(args.report) if args.report else None
    result = prune_checkpoint(Path(args.consolidated), Path(args.output), config, report)
    print((result.out_dir / "PRUNE.md").read_text())
    print(
        f"pruned model: {result.out_dir}; export with `ringmoe export {result.out_dir} OUT`, "
        f"fine-tune with `ringmoe train --config {result.out_dir / 'config.yaml'}`"
    )


def _eval(args: argparse.Namespace) -> None:
    from ringmoe.config.evaluation import load_eval_config
    from ringmoe.eval.run import evaluate

    config = load_eval_config(args.config, args.overrides)
    report = evaluate(config, Path(args.config).resolve().parent)
    print(report.table())
    print(
        f"results: {report.out_dir / 'results.md'} (+ .json); {len(report.plots)} plots in {report.out_dir / 'plots'}"
    )


def _federated(args: argparse.Namespace) -> None:
    import json

    from ringmoe.config.federated import load_federated_config
    from ringmoe.federated.launch import run_local
    from ringmoe.federated.server import run_simulation

    if args.simulation:
        config = load_federated_config(args.config, args.overrides)
        run_simulation(config, Path(args.config).resolve().parent)
        out = Path(config.output_dir)
    else:
        out = run_local(Path(args.config), args.overrides)
    for row in json.loads((out / "history.json").read_text()):
        print(f"round {row['round']}: held-out loss {row['loss']:.4f}, accuracy {row['accuracy']:.3f}")
    print(f"combiner: {out / 'combiner.safetensors'}; what crossed the network: {out / 'boundary.json'}")


def _export_eos(args: argparse.Namespace) -> None:
    from ringmoe.config.federated import load_federated_config
    from ringmoe.export.specialists import export_federation

    config = load_federated_config(args.config, args.overrides)
    out = export_federation(Path(config.output_dir), Path(args.output), config.combiner_dim)
    print(f"exported specialists (transformers ConvNextV2Model) and the combiner (trust_remote_code) to {out}")


def _federated_server(args: argparse.Namespace) -> None:
    from ringmoe.config.federated import load_federated_config
    from ringmoe.federated.server import run_server

    run_server(load_federated_config(args.config, args.overrides))


def _federated_client(args: argparse.Namespace) -> None:
    from ringmoe.config.federated import load_federated_config
    from ringmoe.federated.client import run_client

    run_client(args.client, load_federated_config(args.config, args.overrides), Path(args.config).resolve().parent)


def _export(args: argparse.Namespace) -> None:
    from ringmoe.export.huggingface import export_huggingface

    out = export_huggingface(
        Path(args.consolidated), Path(args.output), dtype=args.dtype, max_shard_size=args.max_shard_size
    )
    print(f"exported HuggingFace model to {out}")
    if args.push:
        # Offline-safe by design: nothing is sent from here (training clusters often have no route out); the
        # directory is complete, and uploading it is one command on a machine that has the network.
        print(f"to publish it as {args.push}: huggingface-cli upload {args.push} {out} .")


def _model_info(args: argparse.Namespace) -> None:
    from ringmoe.cli.model_info import DEFAULT_LAYOUTS, model_info, parse_layout

    layouts = [parse_layout(text) for text in args.layout] or (DEFAULT_LAYOUTS if args.memory else ())
    print(model_info(args.config, args.overrides, layouts))


def _demo(args: argparse.Namespace) -> None:
    from ringmoe.cli.demo import run_demo

    run_demo(Path(args.output), steps=args.steps, nproc=args.nproc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringmoe", description=__doc__.splitlines()[0])
    # The deepspeed launcher passes --local_rank; LOCAL_RANK in the environment carries the same value.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="pretrain with DeepSpeed (expert parallel + ZeRO)")
    train.add_argument("--config", required=True, help="run YAML, e.g. configs/tiny.yaml")
    train.add_argument(
        "--resume", default=None, help="'auto' (newest complete checkpoint, or a fresh start) or a checkpoint dir"
    )
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=20")
    train.set_defaults(func=_train)

    consolidate = commands.add_parser("consolidate", help="DeepSpeed MoE checkpoint -> safetensors state dict")
    consolidate.add_argument("checkpoint", help="checkpoint tag directory, e.g. runs/x/checkpoints/global_step20")
    consolidate.add_argument("output", help="output directory")
    consolidate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    consolidate.set_defaults(func=_consolidate)

    reshard = commands.add_parser("reshard", help="DeepSpeed MoE checkpoint -> the same for another EP size")
    reshard.add_argument("checkpoint", help="checkpoint tag directory")
    reshard.add_argument("out", help="new checkpoint directory, e.g. runs/y/checkpoints/global_step20")
    reshard.add_argument("--expert-parallel-size", type=int, required=True)
    reshard.add_argument("--tensor-parallel-size", type=int, help="default: unchanged")
    reshard.set_defaults(func=_reshard)

    prune = commands.add_parser("prune", help="consolidated checkpoint -> smaller model, from measured routing")
    prune.add_argument("consolidated", help="directory written by `ringmoe consolidate` (or `ringmoe prune`)")
    prune.add_argument("output", help="output directory: pruned consolidated checkpoint, report, plan, config")
    prune.add_argument("--config", required=True, help="run YAML: data (calibration), objective, prune section")
    prune.add_argument("--report", help="routing_report.json of an earlier calibration instead of calibrating")
    prune.add_argument(
        "overrides",
        nargs="*",
        help="dotted overrides, e.g. prune.strategy=global prune.budget=1B; prune.downstream.root=<EuroSAT RGB "
        "folder> adds the linear-probe retention",
    )
    prune.set_defaults(func=_prune)

    export = commands.add_parser("export", help="consolidated checkpoint -> HuggingFace directory")
    export.add_argument("consolidated", help="directory written by `ringmoe consolidate`")
    export.add_argument("output", help="output directory (loadable by AutoModel, trust_remote_code=True)")
    export.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    export.add_argument("--max-shard-size", default="2GB", help="HuggingFace shard size, e.g. 2GB or 500MB")
    export.add_argument("--push", metavar="REPO_ID", help="prepare for the Hub: writes the directory, uploads nothing")
    export.set_defaults(func=_export)

    evaluation = commands.add_parser("eval", help="frozen-encoder benchmarks on labelled rasters: table + plots")
    evaluation.add_argument("--config", required=True, help="eval YAML (configs/eval/*.yaml): encoders and tasks")
    evaluation.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. encoders=[runs/demo/consolidated,pixels] folds=5"
    )
    evaluation.set_defaults(func=_eval)

    federated = commands.add_parser(
        "federated", help="Ensemble-of-Specialists: Flower server + one process per client over localhost"
    )
    federated.add_argument("--config", required=True, help="federated YAML (configs/recipes/eos_tiny.yaml)")
    federated.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rounds=10")
    federated.add_argument("--simulation", action="store_true", help="Flower simulation mode (Ray) instead")
    federated.set_defaults(func=_federated)
    export_eos = commands.add_parser("export-eos", help="a federation's specialists + combiner -> HuggingFace dirs")
    export_eos.add_argument("output", help="output directory: one folder per specialist and combiner/")
    export_eos.add_argument("--config", required=True, help="the federated YAML that produced output_dir")
    export_eos.add_argument("overrides", nargs="*")
    export_eos.set_defaults(func=_export_eos)
    server = commands.add_parser("federated-server", help="the Flower server of a federated config")
    server.add_argument("--config", required=True)
    server.add_argument("overrides", nargs="*")
    server.set_defaults(func=_federated_server)
    client = commands.add_parser("federated-client", help="one client of a federated config (its own data only)")
    client.add_argument("--config", required=True)
    client.add_argument("--client", required=True, help="the client's name in the config")
    client.add_argument("overrides", nargs="*")
    client.set_defaults(func=_federated_client)

    info = commands.add_parser("model-info", help="parameter counts (meta device) and FLOPs per sample")
    info.add_argument("config", help="model YAML (configs/model/*.yaml) or run YAML")
    info.add_argument("overrides", nargs="*", help="dotted overrides, e.g. depths=[2,2,6,2]")
    info.add_argument("--memory", action="store_true", help="also memory per rank on 8, 64 and 256 x 80 GB")
    info.add_argument(
        "--layout",
        action="append",
        default=[],
        metavar="GPUS:TP:EP:ZERO[:MB]",
        help="memory per rank for this layout instead (repeatable), e.g. --layout 64:2:4:1",
    )
    info.set_defaults(func=_model_info)

    demo = commands.add_parser(
        "demo", help="tiny real-data run: shards -> EP=2 training -> consolidate -> prune -> export"
    )
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--steps", type=int, default=20)
    demo.add_argument("--nproc", type=int, default=2)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, unparsed = parser.parse_known_args(argv)
    # Dotted overrides may follow options that come after the positionals (``prune C OUT --config X a.b=1``),
    # which argparse leaves unparsed; anything else unknown is still an error.
    if unparsed and (not hasattr(args, "overrides") or any(u.startswith("-") or "=" not in u for u in unparsed)):
        parser.error(f"unrecognized arguments: {' '.join(unparsed)}")
    if unparsed:
        args.overrides = [*args.overrides, *unparsed]
    try:
        return args.func(args) or 0
    except RingMoEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
