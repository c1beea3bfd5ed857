"""Everything that talks to Ray Tune: the trainable (one trial), the truthful searcher, the
schedulers, the Tune callbacks (state backup and repair, checkpoint retention, the driver's heap),
the trials' output on the driver, the Ray session, and the one door to Ray's and Optuna's
internals (`_compat`)."""
