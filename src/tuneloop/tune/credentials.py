"""Credentials stay in the environment: never in Ray's logs, files written, or reports.

tuneloop has no configuration field for a credential (W&B reads `WANDB_API_KEY` or `~/.netrc`,
S3 the standard `AWS_*` variables or an instance profile) and writes only the validated
experiment, Tune's trial files and W&B's offline files, none of which hold environment
variables. One leak comes from Ray Tune itself: it copies the driver's `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` and `AWS_SECURITY_TOKEN` into every trial actor's
`runtime_env`, which Ray's runtime-env agent writes in plain text to
`<ray temp dir>/session_*/logs/runtime_env_agent.log` (and which the actor table and dashboard
show). `keep_credentials_out_of_ray` stops that copy. Trials still get the variables: a local Ray
started by the driver passes its environment to its workers; on a cluster every node reads its
own (the README asks for the AWS variables or an instance profile on every node).
"""

from __future__ import annotations

from tuneloop.tune import _compat

def keep_credentials_out_of_ray() -> None:
    """Stop Ray Tune from putting the driver's AWS credentials into trial actors' runtime_env
    (logged in plain text by Ray). Idempotent; call before the Tuner starts its trials."""
    _compat.stop_propagating_credentials()
