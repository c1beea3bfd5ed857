"""One training run without Ray: building its parts from a RunConfig (`build`), data batching
(`data`), the standalone `tuneloop train` (`run`) and the
one-batch preflight of `tuneloop validate` (`preflight`). Nothing here imports Ray."""
