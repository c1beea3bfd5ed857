"""The `tuneloop` command: sweep, resume, report, train, validate, doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneloop.errors import EXIT_USER_ERROR, UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one line (no usage dump)."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def _add_experiment(parser) -> None:
    parser.add_argument("experiment", help="experiment YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a dotted key, value parsed as YAML (repeatable)")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuneloop", description="Ray Tune + Optuna sweeps for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="one run of the experiment's RunConfig, no Tune")
    _add_experiment(train)
    train.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: run.device)")
    train.add_argument("--output", type=Path, help="run directory (default: STORAGE/NAME/train_TIMESTAMP)")

    sweep = commands.add_parser("sweep", help="run the experiment's sweep on Ray Tune")
    _add_experiment(sweep)
    sweep.add_argument("--address", help="Ray cluster to join (`auto` on a cluster node; default: embedded local Ray)")
    sweep.add_argument("--quiet", action="store_true", help="no live progress table (for CI logs)")
    sweep.add_argument("--overwrite", action="store_true",
                       help="delete an existing experiment directory first (default: refuse)")

    resume = commands.add_parser("resume", help="continue an interrupted sweep where it stopped")
    resume.add_argument("directory", help="the sweep's experiment directory (<storage_path>/<name>, or "
                        "<local_dir>/<name>, or its s3://bucket/prefix/<name>)")
    resume.add_argument("--address", help="Ray cluster to join (default: embedded local Ray)")

    validate = commands.add_parser("validate", help="check the file, imports and one training batch")
    _add_experiment(validate)
    validate.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: run.device)")

    report = commands.add_parser("report", help="trials by state, best and top-k, importance, plots")
    report.add_argument("directory", help="the sweep's experiment directory (its local directory)")
    report.add_argument("--json", action="store_true", help="print the facts as JSON")
    report.add_argument("--top-k", type=int, default=5, help="how many of the best trials to list (default 5)")

    doctor = commands.add_parser("doctor", help="Python, torch, CUDA, GPUs, Ray, wandb; cluster resources; warnings")
    doctor.add_argument("--address", help="also report the resources of this running Ray cluster (`auto` on a node)")
    return parser


def cmd_train(args) -> int:
    from tuneloop import run
    from tuneloop.config import check_imports, load_experiment

    cfg = load_experiment(args.experiment, args.overrides)
    check_imports(cfg, file=args.experiment)
    run_dir = args.output or run.default_run_dir(cfg)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError("the run directory must be new or empty", key="--output", value=str(run_dir))
    result = run.train(cfg, file=args.experiment, run_dir=run_dir, device=args.device)
    best = f"{result.best_val_loss:.6g} at epoch {result.best_epoch}" if result.best_epoch is not None else "none"
    stop = f" (stopped: {result.stop_reason})" if result.stop_reason else ""
    print(f"final val_loss {result.final_val_loss:.6g}, best val_loss {best}, "
          f"{result.epochs_trained} epochs{stop}; results in {result.run_dir}")
    return 0


def cmd_sweep(args) -> int:
    from tuneloop.config import check_imports, load_experiment
    from tuneloop.sweep import run_sweep

    cfg = load_experiment(args.experiment, args.overrides)
    check_imports(cfg, file=args.experiment)
    return run_sweep(cfg, file=args.experiment, address=args.address, quiet=args.quiet, overwrite=args.overwrite)


def cmd_resume(args) -> int:
    from tuneloop.sweep import resume_sweep

    return resume_sweep(args.directory, address=args.address)


def cmd_validate(args) -> int:
    from tuneloop import run
    from tuneloop.config import check_imports, load_experiment

    cfg = load_experiment(args.experiment, args.overrides)
    check_imports(cfg, file=args.experiment)
    report = run.preflight(cfg, file=args.experiment, device=args.device)
    print(f"{args.experiment}: valid. One batch on {report['device']}: input {report['input_shape']} → "
          f"output {report['output_shape']}, target {report['target_shape']}, loss {report['loss']:.4g}; "
          f"{report['train_samples']} train / {report['val_samples']} val samples, "
          f"{report['parameters']} parameters; search space: {len(cfg.sweep.search_space)} parameter(s)")
    return 0


def cmd_report(args) -> int:
    from tuneloop.report import report

    if args.top_k < 1:
        raise UserError("must be at least 1", key="--top-k", value=args.top_k)
    return report(args.directory, top_k=args.top_k, as_json=args.json)


def cmd_doctor(args) -> int:
    from tuneloop.doctor import doctor

    return doctor(args.address)


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "resume": cmd_resume, "validate": cmd_validate,
            "report": cmd_report, "doctor": cmd_doctor}


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
