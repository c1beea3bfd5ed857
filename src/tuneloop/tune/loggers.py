"""The trackers of `sweep.loggers`, fed on the driver by Ray Tune's own logger callbacks.

- `tensorboard`: Tune's `TBXLoggerCallback`, tensorboardX event files in each trial's directory
  (every reported number as `ray/tune/<key>` by training iteration, the config as hparams at the end).
- `mlflow`: `tuneloop.tune.mlflow_logger.MLflowTracker`, Tune's `MLflowLoggerCallback` with one
  MLflow run per trial, its final state as the study records it, and runs continued on resume.
  Imported only when used (importing MLflow takes about half a second).
"""

from __future__ import annotations


def build_loggers(cfg) -> list:
    """The Tune callbacks of `cfg.sweep.loggers`, in their order."""
    built = []
    for spec in cfg.sweep.loggers:
        if spec.name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            built.append(TBXLoggerCallback())
        else:
            from tuneloop.tune.mlflow_logger import MLflowTracker

            built.append(MLflowTracker(spec.tracking_uri, experiment_name=spec.experiment_name or cfg.run.name,
                                       metric=cfg.sweep.metric))
    return built


def installed(module: str) -> bool:
    """Whether `module` can be imported (a tracker's package: `mlflow`, from `pip install
    'tuneloop[mlflow]'`; `tensorboardX`, from Ray Tune's), without importing it (MLflow: half a second)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def tracking_server_error(uri: str) -> str | None:
    """Why the MLflow tracking server at an http(s) `uri` does not answer its health check (None when
    it does, or when `uri` is a local store)."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            return None
    except urllib.error.HTTPError as exc:
        return f"GET /health answered {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
