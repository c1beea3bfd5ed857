"""The `ray up` cluster files at the repository root (every `cluster*.yaml`).

Offline checks only (no cloud, no SSH):
- Ray's own validation: `validate_config(prepare_config(cfg))`, as `ray up` does before it
  touches any machine. For the `local` provider `prepare_config` (via `prepare_local` /
  `prepare_manual`) only rewrites the dict (one internal node type, min/max workers from
  `worker_ips`), so it runs offline in full. For AWS it merges Ray's `aws/defaults.yaml`; the
  next step of `ray up`, `bootstrap_aws` (IAM profile, key pair, subnets, security group),
  calls AWS: it runs here against moto's in-process mock when moto is installed. What stays
  unchecked offline: that the IAM profiles, the AMIs behind `resolve:ssm:`, the instance types
  and the quota exist in the account, SSH to the nodes, and the setup commands themselves.
- Our own rules (`cluster_problems`), on the file as written and once more after Ray has filled
  in its defaults (a key left out of the file gets Ray's default, e.g. `--dashboard-host=0.0.0.0`
  in the AWS defaults' head start command). Each rule is shown to fail on a broken copy.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))
AWS_FILES = [p for p in CLUSTER_FILES if (yaml.safe_load(p.read_text()).get("provider") or {}).get("type") == "aws"]
LOOPBACK = "127.0.0.1"
TOKEN_FILE = "~/.ray/auth_token"


# --------------------------------------------------------------------------- the rule checker


def _strings(obj):
    """Every string in a loaded YAML document, keys included."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _strings(item)


def _flag(cmd: str, name: str) -> list[str]:
    """Values of `--name=V` / `--name V` in a shell command."""
    return [v.strip("'\"") for v in re.findall(rf"--{name}(?:=|\s+)(\S+)", cmd)]


def _ray_start(cmds: list[str], head: bool) -> list[str]:
    return [c for c in cmds if "ray start" in c and ("--head" in c) == head]


def _sourced_files(cmd: str) -> list[str]:
    return re.findall(r"(?:^|[;&|]\s*|\s)(?:source|\.)\s+(\S+?)(?=[;&|\s]|$)", cmd)


def _written_files(cmd: str) -> list[str]:
    return re.findall(r"(?:>>?|\btee\s+(?:-a\s+)?)\s*(\S+)", cmd)


def _setup_lists(cfg: dict) -> list[str]:
    cmds = [*cfg.get("initialization_commands", []), *cfg.get("setup_commands", []),
            *cfg.get("head_setup_commands", []), *cfg.get("worker_setup_commands", [])]
    for node_type in (cfg.get("available_node_types") or {}).values():
        cmds += [*node_type.get("initialization_commands", []), *node_type.get("worker_setup_commands", [])]
    return cmds


def _is_shared_storage(value: str, text: str) -> bool:
    """s3:// URI, or an absolute path whose line in the file says (in a comment) it is shared."""
    if value.startswith("s3://"):
        return True
    if not value.startswith("/"):
        return False
    return any(value in line and re.search(r"#.*\b(nfs|shared)\b", line, re.I) for line in text.splitlines())


def cluster_problems(cfg: dict, text: str = "") -> list[str]:
    """Our rules for a `ray up` file; `text` is the file itself (for its comments). [] when fine."""
    problems: list[str] = []
    provider = (cfg.get("provider") or {}).get("type")
    head_start = list(cfg.get("head_start_ray_commands") or [])
    worker_start = list(cfg.get("worker_start_ray_commands") or [])
    setup = _setup_lists(cfg)
    strings = list(_strings(cfg))
    node_types = cfg.get("available_node_types") or {}
    head_type = cfg.get("head_node_type")

    # Start commands: ray stop, then ray start; the head one starts the autoscaler.
    for what, cmds, head in (("head", head_start, True), ("worker", worker_start, False)):
        starts = [i for i, c in enumerate(cmds) if "ray start" in c and ("--head" in c) == head]
        stops = [i for i, c in enumerate(cmds) if "ray stop" in c]
        if not starts:
            problems.append(f"{what}_start_ray_commands: no `ray start{' --head' if head else ''}`")
        elif not stops or stops[0] > starts[0]:
            problems.append(f"{what}_start_ray_commands: `ray stop` must come before `ray start`")
    head_cmds = _ray_start(head_start, head=True)
    worker_cmds = _ray_start(worker_start, head=False)
    if head_cmds and not any("--autoscaling-config=~/ray_bootstrap_config.yaml" in c for c in head_cmds):
        problems.append("head start: no --autoscaling-config=~/ray_bootstrap_config.yaml (no workers would start)")

    # 1. The head runs no trials.
    head_cpus = [v for c in head_cmds for v in _flag(c, "num-cpus")]
    head_gpus = [v for c in head_cmds for v in _flag(c, "num-gpus")]
    if any(v != "0" for v in head_cpus) or any(v != "0" for v in head_gpus):
        problems.append(f"head runs trials: head start has --num-cpus {head_cpus} --num-gpus {head_gpus}")
    if provider == "local":
        if head_cpus != ["0"] * len(head_cmds) or not head_cmds:
            problems.append("head runs trials: the head `ray start` needs --num-cpus=0 (local provider)")
    else:
        resources = (node_types.get(head_type) or {}).get("resources") or {}
        if resources.get("CPU") != 0 or resources.get("GPU", 0) != 0:
            problems.append(f"head runs trials: head node type {head_type!r} resources {resources} "
                            "(need CPU 0 and GPU 0 or absent)")

    # 2. At least one worker type has GPUs.
    if provider == "local":
        gpus = [v for c in worker_cmds for v in _flag(c, "num-gpus")]
        if not any(re.fullmatch(r"\d+", v) and int(v) >= 1 for v in gpus):
            problems.append(f"no GPU workers: worker `ray start` declares --num-gpus {gpus}")
    else:
        gpu_types = [name for name, nt in node_types.items()
                     if name != head_type and (nt.get("resources") or {}).get("GPU", 0) >= 1
                     and nt.get("max_workers", cfg.get("max_workers", 0)) >= 1 and cfg.get("max_workers", 0) >= 1]
        if not gpu_types:
            problems.append("no GPU workers: no worker node type with resources GPU >= 1 and max_workers >= 1")

    # 3. Dashboard on loopback only (reached through `ray dashboard`, an SSH tunnel).
    if not any(_flag(c, "dashboard-host") == [LOOPBACK] for c in head_cmds):
        problems.append(f"dashboard: the head `ray start` needs --dashboard-host={LOOPBACK}")
    for s in strings:
        for host in _flag(s, "dashboard-host"):
            if host != LOOPBACK:
                problems.append(f"dashboard: --dashboard-host={host} (public) in {s!r}")
    for host in _flag(text, "dashboard-host"):  # comments too: nothing to copy-paste from
        if host != LOOPBACK:
            problems.append(f"dashboard: --dashboard-host={host} in the file's text")

    # 4. Token authentication: never disabled; on for every node; the token reaches every node.
    for s in strings:
        for mode in re.findall(r"RAY_AUTH_MODE\s*=\s*['\"]?(\w+)", s):
            if mode.lower() != "token":
                problems.append(f"auth: RAY_AUTH_MODE={mode} in {s!r}")
    if re.search(r"RAY_AUTH_MODE\s*=\s*['\"]?disabled", text, re.I):
        problems.append("auth: RAY_AUTH_MODE=disabled in the file's text")
    token_env_files = {f for c in setup if re.search(r"RAY_AUTH_MODE=['\"]?token\b", c) for f in _written_files(c)}
    for cmd in head_cmds + worker_cmds:
        if not (re.search(r"RAY_AUTH_MODE=['\"]?token\b", cmd) or set(_sourced_files(cmd)) & token_env_files):
            problems.append(f"auth: this `ray start` does not get RAY_AUTH_MODE=token: {cmd!r}")
    if token_env_files and not any(".bashrc" in c and set(_sourced_files(c.replace("'", " ").replace('"', " ")))
                                   & token_env_files for c in setup):
        problems.append("auth: shells on the nodes (ray exec/attach) do not source the RAY_AUTH_MODE=token file")
    mounts = cfg.get("file_mounts") or {}
    if TOKEN_FILE not in mounts and not any(re.search(r"RAY_AUTH_TOKEN(_PATH)?=", s) for s in strings):
        problems.append(f"auth: the token does not reach the nodes (file_mounts has no {TOKEN_FILE!r})")

    # 5. The project directory (with experiments/ and the constraints) reaches every node.
    project = [remote.rstrip("/") for remote, local in mounts.items() if str(local).rstrip("/") in (".", "")]
    if not project:
        problems.append("file_mounts: the project directory ('.') is not mounted")
    if ".gitignore" not in (cfg.get("rsync_filter") or []):
        problems.append("file_mounts: rsync_filter lacks '.gitignore' (.venv and results/ would be copied)")

    # 6. Every pip install is constrained by the project's pinned versions; one installs the project.
    installs_project = False
    for cmd in setup:
        if not re.search(r"pip3?\s+install", cmd):
            continue
        cd = re.findall(r"\bcd\s+(\S+?)\s*(?:&&|;)", cmd)
        constraints = re.findall(r"(?:-c|--constraint)(?:=|\s+)(\S+)", cmd)
        ok = [c for c in constraints if c.endswith("requirements/constraints.txt")
              and (any(c.startswith(p + "/") for p in project)
                   or (not c.startswith(("/", "~", "$")) and any(d.rstrip("/") in project for d in cd)))]
        if not ok:
            problems.append(f"setup: pip install without -c requirements/constraints.txt of the mounted project: {cmd!r}")
        for target in re.findall(r"(?:-e|--editable)(?:=|\s+)(\S+)", cmd):
            target = target.rstrip("/")
            if target in project or (target == "." and any(d.rstrip("/") in project for d in cd)):
                installs_project = True
    if not installs_project:
        problems.append("setup: no `pip install -c requirements/constraints.txt -e <project>`")

    # 7. Storage settings name shared storage, never a local path.
    found: list[str] = []
    for s in strings:
        found += [v.strip("'\"") for v in re.findall(r"\b[A-Z_]*STORAGE[A-Z_]*=(\S+)", s)]
        found += [v.strip("'\"") for v in re.findall(r"storage_path\s*[=:]\s*(\S+)", s)]

    def keyed(obj):
        if isinstance(obj, dict):
            for key, value in obj.items():
                if isinstance(key, str) and "storage" in key.lower() and isinstance(value, str):
                    found.append(value)
                keyed(value)
        elif isinstance(obj, list):
            for item in obj:
                keyed(item)

    keyed(cfg)
    for value in found:
        if not _is_shared_storage(value, text):
            problems.append(f"storage: {value!r} is a local path (use s3://... or a shared NFS path "
                            "documented as such in a comment)")

    # AWS: both node types carry an instance profile (S3 access without keys in the file).
    if provider == "aws":
        for name, nt in node_types.items():
            if "IamInstanceProfile" not in (nt.get("node_config") or {}):
                problems.append(f"aws: node type {name!r} has no IamInstanceProfile (no S3 access)")
    return problems


def all_problems(cfg: dict, text: str = "") -> list[str]:
    """Our rules on the file as written and on what `ray up` makes of it (Ray's defaults added)."""
    from ray.autoscaler._private.util import prepare_config

    problems = cluster_problems(cfg, text)
    prepared = prepare_config(copy.deepcopy(cfg))
    problems += [f"after Ray's defaults: {p}" for p in cluster_problems(prepared, text)]
    return list(dict.fromkeys(problems))  # Ray copies setup_commands into head/worker_setup_commands


# --------------------------------------------------------------------------- the files


def load(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    return yaml.safe_load(text), text


@pytest.fixture(params=CLUSTER_FILES, ids=[p.name for p in CLUSTER_FILES])
def cluster_file(request) -> Path:
    return request.param


def test_the_cluster_files_exist():
    names = {p.name for p in CLUSTER_FILES}
    assert {"cluster.yaml", "cluster.local.yaml"} <= names, names
    assert REPO / "cluster.yaml" in AWS_FILES


def test_ray_validates_the_file(cluster_file):
    """What `ray up` checks before it touches a machine."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg, _ = load(cluster_file)
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    if cfg["provider"]["type"] == "local":
        assert prepared["max_workers"] == len(cfg["provider"]["worker_ips"])


def test_our_rules_hold(cluster_file):
    cfg, text = load(cluster_file)
    assert all_problems(cfg, text) == []


def test_the_file_tells_what_to_edit_and_how_to_use_it(cluster_file):
    _, text = load(cluster_file)
    name = cluster_file.name
    assert "# EDIT:" in text
    for command in (f"ray up {name}", f"ray attach {name}", f"ray dashboard {name}", f"ray exec {name} ",
                    f"ray down {name}", "ray get-auth-token --generate",
                    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- tuneloop sweep "
                    "experiments/x.yaml --address auto"):
        assert command in text, command
    assert "storage_path" in text  # what to set in the experiment
    assert str(REPO) not in text and "/work/" not in text  # no path of the machine that wrote it


def test_the_project_mount_carries_what_setup_needs():
    """`.` is synced with .gitignore as the filter: what setup and the sweeps read must not be ignored."""
    ignored = {line.strip().strip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for needed in ("experiments", "requirements", "src", "pyproject.toml"):
        assert (REPO / needed).exists() and needed not in ignored, needed
    assert (REPO / "requirements" / "constraints.txt").is_file()


@pytest.mark.parametrize("aws_file", AWS_FILES, ids=[p.name for p in AWS_FILES])
def test_aws_bootstrap_runs_against_a_mocked_aws(aws_file, tmp_path, monkeypatch):
    """`ray up`'s AWS step (IAM profile, key pair, subnets, security group) on moto: the given
    instance profiles are kept (Ray creates none), and every node type gets a key, subnets and
    the cluster's security group."""
    cfg, _ = load(aws_file)
    moto = pytest.importorskip("moto")  # a dev extra
    from ray.autoscaler._private.aws import utils as aws_utils
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.util import prepare_config

    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the key pair it creates to ~/.ssh
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    prepared = prepare_config(copy.deepcopy(cfg))
    aws_utils.resource_cache.cache_clear()
    aws_utils.client_cache.cache_clear()
    try:
        with moto.mock_aws():
            out = bootstrap_aws(copy.deepcopy(prepared))
    finally:
        aws_utils.resource_cache.cache_clear()
        aws_utils.client_cache.cache_clear()
    for name, node_type in out["available_node_types"].items():
        node_config = node_type["node_config"]
        assert node_config["IamInstanceProfile"] == cfg["available_node_types"][name]["node_config"]["IamInstanceProfile"]
        assert node_config["KeyName"] and node_config["SubnetIds"] and node_config["SecurityGroupIds"], name
        assert node_config["ImageId"] == cfg["available_node_types"][name]["node_config"]["ImageId"]


# --------------------------------------------------------------------------- the rules can fail


def _aws():
    return load(REPO / "cluster.yaml")


def _local():
    return load(REPO / "cluster.local.yaml")


def _gpu_type(cfg):
    return next(n for n in cfg["available_node_types"] if n != cfg["head_node_type"])


def _head(cfg):
    return cfg["available_node_types"][cfg["head_node_type"]]


def _sub(cfg, key, old, new, count=0):
    """Replace `old` by `new` in the commands of `cfg[key]`; the mutation must change something."""
    before = copy.deepcopy(cfg[key])
    cfg[key] = [re.sub(old, new, c, count=count) for c in cfg[key]]
    assert cfg[key] != before, (key, old)


def _env(cfg, old, new):
    _sub(cfg, "setup_commands", old, new)


MUTATIONS = {
    # 1. head runs no trials
    "aws head CPU 2": (_aws, lambda c: _head(c).update(resources={"CPU": 2}), "head runs trials"),
    "aws head CPU left to Ray": (_aws, lambda c: _head(c).update(resources={}), "head runs trials"),
    "aws head GPU 1": (_aws, lambda c: _head(c).update(resources={"CPU": 0, "GPU": 1}), "head runs trials"),
    "aws head --num-cpus=2": (_aws, lambda c: _sub(c, "head_start_ray_commands", "--head", "--head --num-cpus=2"),
                              "head runs trials"),
    "local head without --num-cpus=0": (_local, lambda c: _sub(c, "head_start_ray_commands", r"--num-cpus=0 ", ""),
                                        "head runs trials"),
    "local head --num-gpus=2": (_local, lambda c: _sub(c, "head_start_ray_commands", "--num-gpus=0", "--num-gpus=2"),
                                "head runs trials"),
    # 2. GPU workers
    "aws worker without GPU": (_aws, lambda c: c["available_node_types"][_gpu_type(c)].update(resources={"CPU": 4}),
                               "no GPU workers"),
    "aws GPU type max_workers 0": (_aws, lambda c: c["available_node_types"][_gpu_type(c)].update(max_workers=0),
                                   "no GPU workers"),
    "local workers --num-gpus=0": (_local, lambda c: _sub(c, "worker_start_ray_commands", r"--num-gpus=\d+", "--num-gpus=0"),
                                   "no GPU workers"),
    "local workers no --num-gpus": (_local, lambda c: _sub(c, "worker_start_ray_commands", r"\s*--num-gpus=\d+", ""),
                                    "no GPU workers"),
    # 3. dashboard
    "aws dashboard 0.0.0.0": (_aws, lambda c: _sub(c, "head_start_ray_commands", "127.0.0.1", "0.0.0.0"), "dashboard"),
    "local dashboard host left out": (_local, lambda c: _sub(c, "head_start_ray_commands", r"\s*--dashboard-host=\S+", ""),
                                      "dashboard"),
    "aws public dashboard elsewhere": (_aws, lambda c: c["setup_commands"].append(
        "ray start --head --dashboard-host 0.0.0.0"), "--dashboard-host=0.0.0.0"),
    "aws head start left to Ray's defaults": (_aws, lambda c: c.pop("head_start_ray_commands"),
                                              "after Ray's defaults: dashboard: --dashboard-host=0.0.0.0"),
    # start commands
    "aws worker ray stop after start": (_aws, lambda c: c["worker_start_ray_commands"].reverse(), "`ray stop`"),
    "local head without autoscaler": (_local, lambda c: _sub(c, "head_start_ray_commands", r"\s*--autoscaling-config=\S+", ""),
                                      "--autoscaling-config"),
    # 4. token authentication
    "aws auth disabled": (_aws, lambda c: _env(c, "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled"), "RAY_AUTH_MODE=disabled"),
    "local auth disabled inline": (_local, lambda c: _sub(c, "worker_start_ray_commands", "ray start",
                                                          "RAY_AUTH_MODE=disabled ray start"), "RAY_AUTH_MODE=disabled"),
    "aws auth mode not set": (_aws, lambda c: _env(c, r"'export RAY_AUTH_MODE=token'", ""), "does not get RAY_AUTH_MODE=token"),
    "local worker does not source the env": (_local, lambda c: _sub(c, "worker_start_ray_commands",
                                                                    r"source ~/\.tuneloop_env; ", ""),
                                             "does not get RAY_AUTH_MODE=token"),
    "aws shells without the env": (_aws, lambda c: c["setup_commands"].pop(1), "shells on the nodes"),
    "aws token not mounted": (_aws, lambda c: c["file_mounts"].pop(TOKEN_FILE), "the token does not reach"),
    # 6. pinned installs
    "aws pip without constraints": (_aws, lambda c: _env(c, r"-c requirements/constraints\.txt ", ""), "without -c"),
    "local relative constraints without cd": (_local, lambda c: _env(c, r"cd ~/tuneloop &&", ""), "without -c"),
    "aws head setup left to Ray's defaults": (_aws, lambda c: c.pop("head_setup_commands"),
                                              "after Ray's defaults: setup: pip install without -c"),
    "local project not installed": (_local, lambda c: _env(c, r"-e \. ", ""), "no `pip install -c"),
    # 5. project mount
    "aws project not mounted": (_aws, lambda c: c["file_mounts"].pop("~/tuneloop"), "project directory"),
    "local no .gitignore filter": (_local, lambda c: c.pop("rsync_filter"), ".gitignore"),
    # 7. storage
    "aws local storage env": (_aws, lambda c: _env(c, "'export RAY_AUTH_MODE=token'",
                                                   "'export RAY_AUTH_MODE=token' 'export TUNELOOP_STORAGE=./results'"),
                              "storage: './results'"),
    "local storage_path ~": (_local, lambda c: c["setup_commands"].append(
        "tuneloop sweep x.yaml --set sweep.storage_path=~/results"), "storage: '~/results'"),
    "aws storage key /tmp": (_aws, lambda c: c.update(metadata={"storage_path": "/tmp/sweeps"}), "storage: '/tmp/sweeps'"),
    # aws instance profiles
    "aws worker without instance profile": (_aws, lambda c: c["available_node_types"][_gpu_type(c)]["node_config"].pop(
        "IamInstanceProfile"), "IamInstanceProfile"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_rule_fails_on_a_broken_copy(name):
    base, mutate, expected = MUTATIONS[name]
    cfg, text = base()
    assert all_problems(cfg, text) == []
    mutate(cfg)
    problems = all_problems(cfg, text)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("base", [_aws, _local])
@pytest.mark.parametrize("line, expected", [
    ("# ray start --head --dashboard-host=0.0.0.0", "--dashboard-host=0.0.0.0 in the file's text"),
    ("# export RAY_AUTH_MODE=disabled", "RAY_AUTH_MODE=disabled in the file's text"),
])
def test_the_text_rules_see_comments(base, line, expected):
    """Not even a comment shows a public dashboard or disabled authentication to copy."""
    cfg, text = base()
    problems = cluster_problems(cfg, text + "\n" + line + "\n")
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("value, text, shared", [
    ("s3://bucket/sweeps", "", True),
    ("/mnt/nfs/sweeps", "    'export TUNELOOP_STORAGE=/mnt/nfs/sweeps'   # NFS, mounted on every node\n", True),
    ("/mnt/nfs/sweeps", "    'export TUNELOOP_STORAGE=/mnt/nfs/sweeps'\n", False),   # not documented as shared
    ("./results", "./results  # shared", False),
    ("~/results", "", False),
])
def test_storage_rule(value, text, shared):
    cfg, _ = _aws()
    cfg["setup_commands"].append(f"printf 'export TUNELOOP_STORAGE={value}' > ~/.storage_env")
    problems = [p for p in cluster_problems(cfg, text) if p.startswith("storage")]
    assert (problems == []) == shared, problems
