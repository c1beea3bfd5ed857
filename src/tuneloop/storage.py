"""Where a sweep's files live.

Tune's storage (`sweep.storage_path`) holds the trials, their checkpoints and Tune's experiment
state: a local directory, or `s3://bucket/prefix` (credentials and region from the standard AWS
variables; the endpoint from `AWS_ENDPOINT_URL` or `sweep.s3_endpoint`). On a cluster, S3 is what
lets a trial resume on another node.

The driver's own files (`experiment.yaml`, the Optuna study `optuna.db`, scheduler state,
`results.csv`, `best.yaml`: their names are in `tuneloop.sweep.paths`) are local: in the
experiment directory itself when storage is local, else in `<sweep.local_dir>/<run.name>/`,
copied to the storage at the end of every run of the sweep. `Storage` reads and writes the
storage's files the same way for both, through pyarrow; `SweepPlace` says where both are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tuneloop._io import atomic_write_bytes


# The files of a trial's directory that several layers read: Tune's (its JsonLoggerCallback's and
# CSVLoggerCallback's rows, a failed trial's traceback) and tuneloop's record of every epoch.
TRIAL_RESULTS, TRIAL_PROGRESS, TRIAL_ERROR = "result.json", "progress.csv", "error.txt"
METRICS_FILE = "metrics.csv"
MLFLOW_DB = "mlflow.db"  # sweep.loggers' MLflow store in the experiment directory, unless a tracking_uri names another


@dataclass(frozen=True)
class SweepPlace:
    """Where a sweep's files are now, handed to the searcher, the schedulers and the callbacks that
    keep files (`bind(place)`): after a resume the experiment may live elsewhere than where Tune
    pickled them, so they hold names, never these paths."""

    directory: Path  # the driver's local directory (experiment.yaml, optuna.db, scheduler state, results)
    storage: "Storage"  # Tune's experiment directory on its storage (the same directory when local)
    study_url: str  # the Optuna storage URL: sweep.optuna_storage, else directory/optuna.db


def is_remote(storage_path: str) -> bool:
    return "://" in storage_path and not storage_path.startswith("file://")


def tune_storage(sweep) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) for Tune's RunConfig and Tuner.restore."""
    path = sweep.storage_path
    if not is_remote(path):
        return str(Path(path.removeprefix("file://")).expanduser().resolve()), None
    if sweep.s3_endpoint:
        from pyarrow.fs import S3FileSystem

        endpoint = urlsplit(sweep.s3_endpoint)
        # With an explicit storage_filesystem, Ray takes the path as a path on that filesystem,
        # without its scheme (Ray 2.60, `ray.train._internal.storage.get_fs_and_path`).
        return path.removeprefix("s3://"), S3FileSystem(endpoint_override=endpoint.netloc,
                                                         scheme=endpoint.scheme or "https")
    return path, None


@dataclass(frozen=True)
class Storage:
    """One directory of Tune's storage (local or S3), read and written through pyarrow."""

    fs: object   # pyarrow.fs.FileSystem
    root: str    # the directory's path on `fs`
    uri: str     # the directory as users write it

    @classmethod
    def of_experiment(cls, sweep, name: str) -> "Storage":
        import pyarrow.fs

        path, filesystem = tune_storage(sweep)
        if filesystem is None:
            filesystem, path = (pyarrow.fs.FileSystem.from_uri(path) if is_remote(path)
                                else (pyarrow.fs.LocalFileSystem(), path))
        root = f"{path.rstrip('/')}/{name}"
        uri = f"{sweep.storage_path.rstrip('/')}/{name}" if is_remote(sweep.storage_path) else root
        return cls(filesystem, root, uri)

    @classmethod
    def local(cls, directory) -> "Storage":
        """A local directory as a Storage."""
        import pyarrow.fs

        return cls(pyarrow.fs.LocalFileSystem(), str(directory), str(directory))

    @property
    def is_local(self) -> bool:
        import pyarrow.fs

        return isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def exists(self, relative: str = "") -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self.path(relative)).type != pyarrow.fs.FileType.NotFound

    def listdir(self, relative: str = "") -> list[str]:
        """Names directly under `relative` (empty when it does not exist)."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.path(relative), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.readall()

    def write_bytes(self, relative: str, data: bytes, atomic: bool = True) -> None:
        """Readers see the old or the whole new file: a rename on local disk (unless `atomic` is
        False: for files whose completeness a marker written after them tells), one PUT on S3."""
        if self.is_local:
            target = Path(self.path(relative))
            target.parent.mkdir(parents=True, exist_ok=True)
            if atomic:
                atomic_write_bytes(target, data)
            else:
                target.write_bytes(data)
            return
        with self.fs.open_output_stream(self.path(relative)) as stream:
            stream.write(data)

    def delete_dir(self, relative: str) -> None:
        self.fs.delete_dir(self.path(relative))

    def upload(self, local_dir: Path, names) -> None:
        """Copy the files `names` that exist in `local_dir` into this directory."""
        for name in names:
            source = Path(local_dir) / name
            if source.is_file():
                self.write_bytes(name, source.read_bytes())

    def download(self, local_dir: Path, names) -> list[str]:
        """Copy the files `names` that exist here into `local_dir` (atomically); returns those copied."""
        copied = []
        for name in names:
            if self.exists(name):
                Path(local_dir).mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(Path(local_dir) / name, self.read_bytes(name))
                copied.append(name)
        return copied
