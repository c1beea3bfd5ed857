"""The `tuneloop` command: sweep, resume, report, dashboard, train, validate, doctor."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tuneloop.config.errors import EXIT_USER_ERROR, UserError, in_file


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
    train.add_argument("experiment", nargs="?", help="experiment YAML file (or --resume RUN_DIR)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted key, value parsed as YAML (repeatable)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run of `tuneloop train` from its latest checkpoint")
    train.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: run.device)")
    train.add_argument("--output", type=Path, help="run directory (default: STORAGE/NAME/train_TIMESTAMP)")
    train.add_argument("--seeds", type=int, metavar="N",
                       help="train N seeds (run.seed, run.seed+1, ...) as parallel Ray tasks; print mean ± std")
    train.add_argument("--address", help="with --seeds: Ray cluster to run on (default: embedded local Ray)")

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
    resume.add_argument("--quiet", action="store_true", help="no live progress table (for CI logs)")

    validate = commands.add_parser("validate", help="check the file, imports and one training batch")
    _add_experiment(validate)
    validate.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: run.device)")

    report = commands.add_parser("report", help="trials by state, best and top-k, importance, plots")
    report.add_argument("directory", help="the sweep's experiment directory (its local directory)")
    report.add_argument("--json", action="store_true", help="print the facts as JSON")
    report.add_argument("--top-k", type=int, default=5, help="how many of the best trials to list (default 5)")

    dashboard = commands.add_parser("dashboard", help="optuna-dashboard on the sweep's study (optional extra)")
    dashboard.add_argument("directory", help="the sweep's experiment directory (its local directory)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    dashboard.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")

    doctor = commands.add_parser("doctor", help="Python, torch, CUDA, GPUs, Ray, wandb; cluster resources; warnings")
    doctor.add_argument("--address", help="also report the resources of this running Ray cluster (`auto` on a node)")
    return parser


def load_checked(args):
    """The experiment of `args` read, overridden and checked (import paths, keyword arguments, the
    sampler)."""
    from tuneloop.config import check_imports, load_experiment

    cfg = load_experiment(args.experiment, args.overrides)
    check_imports(cfg)
    return cfg


EXIT_INTERRUPTED = 130  # `tuneloop train` stopped by Ctrl-C (as a shell reports SIGINT)


def cmd_train(args) -> int:
    """`tuneloop train`: a new run, or `--resume` of one; Ctrl-C exits 130 saying how to continue."""
    try:
        from tuneloop.training import run

        if args.resume is not None:
            return resume_train(args, run)
        return new_train(args, run)
    except KeyboardInterrupt as stop:
        print(getattr(stop, "line", None) or "[tuneloop] interrupted before training started; nothing was written",
              flush=True)
        return EXIT_INTERRUPTED


def new_train(args, run) -> int:
    """A run of the experiment file in a new run directory, after the one-batch preflight."""
    import shlex

    from tuneloop.config.errors import Verbatim
    from tuneloop.training.preflight import preflight

    if args.experiment is None:
        raise UserError("exactly one of EXPERIMENT and --resume RUN_DIR must be given", key="tuneloop train",
                        value=Verbatim("neither"))
    if args.seeds is not None and args.seeds < 1:
        raise UserError("must be at least 1", key="--seeds", value=args.seeds)
    with in_file(args.experiment):
        cfg = load_checked(args)
    run_dir = run.new_run_dir(cfg, args.output, key="--output")
    with in_file(args.experiment):  # one batch before anything is written (seeds: on the CPU, as a sweep)
        preflight(cfg, device=args.device if args.seeds is None else "cpu")
    if args.seeds is not None:
        from tuneloop.sweep.seeds import train_seeds

        with in_file(args.experiment):
            try:
                results = train_seeds(cfg, run_dir=run_dir, seeds=args.seeds, device=args.device,
                                      address=args.address)
            except KeyboardInterrupt:
                seed_dir = shlex.quote(str(run_dir / "seed_")) + "<S>"
                raise run.Interrupted(f"[tuneloop] interrupted; a seed's run continues with: "
                                      f"tuneloop train --resume {seed_dir}") from None
        print(f"results in {run_dir} (seeds.csv, seeds.json, seed_<S>/)")
        return 0 if all(r["stop_reason"] != "non_finite_loss" for r in results) else 1
    with in_file(args.experiment):
        result = run.train(cfg, run_dir=run_dir, device=args.device)
    print_result(result)
    return 0


def resume_train(args, run) -> int:
    """`--resume RUN_DIR`: the run continued with its own config.yaml from its latest intact checkpoint."""
    from tuneloop.checkpoints import CheckpointError
    from tuneloop.config import check_imports, load_experiment
    from tuneloop.config.errors import Verbatim
    from tuneloop.training.preflight import preflight

    if args.experiment is not None:
        raise UserError("exactly one of EXPERIMENT and --resume RUN_DIR must be given", key="tuneloop train",
                        value=Verbatim(f"both ({args.experiment!r} and --resume {args.resume!r})"))
    refused = {"--set": args.overrides[0] if args.overrides else None, "--seeds": args.seeds,
               "--output": None if args.output is None else str(args.output)}
    for flag, value in refused.items():
        if value is not None:
            raise UserError("must not be given with --resume (a resumed run keeps its config.yaml and directory)",
                            key=flag, value=value)
    run_dir = Path(args.resume)
    config = run_dir / run.CONFIG_FILE
    if not config.is_file():
        raise UserError(f"must be a run directory of tuneloop train (holding {run.CONFIG_FILE})", key="--resume",
                        value=args.resume)
    with in_file(str(config)):
        cfg = load_experiment(config)
        check_imports(cfg)
        preflight(cfg, device=args.device)
        try:
            result = run.train(cfg, run_dir=run_dir, device=args.device, resume=True)
        except CheckpointError as exc:
            raise UserError("the run's checkpoints must be of its config.yaml", file="", key="--resume",
                            value=Verbatim(" ".join(str(exc).split()))) from None
    print_result(result)
    return 0


def print_result(result) -> None:
    """The one-line result of a run of `tuneloop train`."""
    best = f"{result.best_val_loss:.6g} at epoch {result.best_epoch}" if result.best_epoch is not None else "none"
    stop = f" (stopped: {result.stop_reason})" if result.stop_reason else ""
    print(f"final val_loss {result.final_val_loss:.6g}, best val_loss {best}, "
          f"{result.epochs_trained} epochs{stop}; results in {result.run_dir}")


def cmd_sweep(args) -> int:
    from tuneloop.config import load_experiment
    from tuneloop.sweep.checks import check_experiment
    from tuneloop.sweep.run import run_sweep

    with in_file(args.experiment):
        cfg = load_experiment(args.experiment, args.overrides)
        checked = check_experiment(cfg)  # one batch on the CPU, before Ray starts (cheap)
        return run_sweep(cfg, address=args.address, quiet=args.quiet, overwrite=args.overwrite,
                         preload_modules=checked["modules"])


def cmd_resume(args) -> int:
    from tuneloop.sweep.resume import resume_sweep

    return resume_sweep(args.directory, address=args.address, quiet=args.quiet)


def cmd_validate(args) -> int:
    from tuneloop.config import load_experiment
    from tuneloop.sweep.checks import check_experiment

    with in_file(args.experiment):
        cfg = load_experiment(args.experiment, args.overrides)
        report = check_experiment(cfg, device=args.device)
    print(f"{args.experiment}: valid. One batch on {report['device']}: input {report['input_shape']} → "
          f"output {report['output_shape']}, target {report['target_shape']}, loss {report['loss']:.4g}; "
          f"{report['train_samples'] or 'unknown'} train / {report['val_samples'] or 'unknown'} val samples, "
          f"{report['parameters']} parameters; search space: {len(cfg.sweep.search_space)} parameter(s)")
    return 0


def cmd_report(args) -> int:
    from tuneloop.reporting.report import report

    if args.top_k < 1:
        raise UserError("must be at least 1", key="--top-k", value=args.top_k)
    return report(args.directory, top_k=args.top_k, as_json=args.json)


def cmd_dashboard(args) -> int:
    from tuneloop.reporting.dashboard import dashboard

    if not 0 < args.port < 65536:
        raise UserError("must be a port number, 1 to 65535", key="--port", value=args.port)
    return dashboard(args.directory, host=args.host, port=args.port)


def cmd_doctor(args) -> int:
    from tuneloop.reporting.doctor import doctor

    return doctor(args.address)


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "resume": cmd_resume, "validate": cmd_validate,
            "report": cmd_report, "dashboard": cmd_dashboard, "doctor": cmd_doctor}


def main(argv: list[str] | None = None) -> int:
    command = argv is None and threading.current_thread() is threading.main_thread()
    if command:
        # As a command, Ctrl-C (SIGINT) is handled, even where the parent started it ignoring
        # SIGINT (a background job of a non-interactive shell): Ray Tune does the same in its fit.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    status = _run(argv)
    if command:
        exit_now(status)
    return status


def _run(argv: list[str] | None) -> int:
    try:
        args = make_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # Ctrl-C while the command starts (its own phases say more where they can)
        print("[tuneloop] interrupted", flush=True)
        return EXIT_INTERRUPTED


def exit_now(status: int) -> None:
    """End the command with `status` once its work is done, without Python's teardown of every
    module (a second or more once torch and Ray are loaded): the atexit handlers run (Ray's
    shutdown, logging's flush, ...), the standard streams are flushed, then the process exits.
    Returns instead, for the usual exit, while another non-daemon thread runs (Python waits for
    it), and when a flush fails."""
    import atexit
    import os

    if any(thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
           for thread in threading.enumerate()):
        return
    atexit._run_exitfuncs()  # what the interpreter runs first at exit (then cleared: runs once)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken stream: let Python report it as usual
        return
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
