"""`tuneloop dashboard EXPERIMENT_DIR`: optuna-dashboard (an optional extra) on the sweep's study.

Serves the study's own storage (the sweep's `optuna.db`, or `sweep.optuna_storage`) on
127.0.0.1 by default: the dashboard can edit studies and has no authentication. On a cluster,
reach it with `ray attach cluster.yaml -p PORT` or an SSH tunnel.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from tuneloop.config.errors import UserError

INSTALL = "pip install 'tuneloop[dashboard]'  (or: pip install optuna-dashboard)"


def dashboard(directory: str | Path, *, host: str = "127.0.0.1", port: int = 8080) -> int:
    """Print the study's URL, then serve it until SIGINT (Ctrl-C) or SIGTERM; exit status 0."""
    from wsgiref.simple_server import make_server

    import optuna

    from tuneloop.reporting.report import load_study
    from tuneloop.sweep.paths import optuna_url

    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise UserError("needs the optuna-dashboard package, which is not installed",
                        key="tuneloop dashboard", value="optuna_dashboard", choices=[INSTALL]) from None
    cfg, study = load_study(Path(directory))
    try:
        server = make_server(host, port, wsgi(optuna_url(cfg)))
    except OSError as exc:
        raise UserError(f"must be a free port on {host}, but binding it failed ({exc.strerror})",
                        key="--port", value=port) from None
    with server:
        def stop(signum, frame):  # shutdown() waits for serve_forever: call it from another thread
            threading.Thread(target=server.shutdown, daemon=True).start()

        for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too when started in the background
            signal.signal(signum, stop)
        study_id = optuna.storages.get_storage(optuna_url(cfg)).get_study_id_from_name(study.study_name)
        print(f"optuna-dashboard for study {study.study_name!r} ({len(study.trials)} trials): "
              f"http://{host}:{port}/dashboard/studies/{study_id}  (Ctrl-C stops it)", flush=True)
        server.serve_forever()
    return 0
