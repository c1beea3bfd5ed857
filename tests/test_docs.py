"""The README and the documentation site agree with the code.

The site builds with `mkdocs build --strict` (no broken link, anchor or API reference); every
`tuneloop <command>` shown (in a code block or an inline code span) is a real command whose help
lists each flag the line uses; every ```yaml block that is an experiment, or a fragment of one
(merged into the default experiment), validates through tuneloop's own loader; every key of the
schema is on the experiment-files page; the files, scripts, flags and tests the pages name exist.
No Ray starts here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from tuneloop import cli
from tuneloop.config import ExperimentConfig, load_experiment
from tuneloop.config.yaml12 import parse_yaml

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(ROOT.joinpath("docs").rglob("*.md"))
DOCUMENTS = [ROOT / "README.md", *PAGES]
DEFAULT_EXPERIMENT = ROOT / "experiments" / "digits_mlp.yaml"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of a Markdown file."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def inline_code(path: Path) -> list[str]:
    """The inline code spans outside fenced blocks."""
    prose = FENCE.sub("", path.read_text())
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", prose)


def name(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- the site ------------------------------------------------------------------------------

def test_the_site_builds_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice on stderr is not a problem of ours
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "callbacks" / "index.html").is_file()


def test_every_page_is_in_the_nav():
    nav = ROOT.joinpath("mkdocs.yml").read_text()
    for page in PAGES:
        assert f" {page.relative_to(ROOT / 'docs').as_posix()}" in nav, f"{name(page)} is not in mkdocs.yml's nav"


# --- the README ------------------------------------------------------------------------------

SWEEP_COMMAND = "./scripts/setup && .venv/bin/tuneloop sweep experiments/digits_mlp.yaml --overwrite"
TEST_COMMAND = "./scripts/setup && .venv/bin/python -m pytest"


def test_the_readme_is_short_and_keeps_the_two_set_up_commands():
    readme = ROOT.joinpath("README.md").read_text()
    assert len(readme.splitlines()) <= 150
    blocks = [text.strip() for _, text in code_blocks(ROOT / "README.md")]
    assert SWEEP_COMMAND in blocks and TEST_COMMAND in blocks
    assert TEST_COMMAND in ROOT.joinpath(".ci", "run").read_text()


def test_the_readmes_relative_links_and_images_exist():  # the site's: mkdocs build --strict
    for target in re.findall(r"\]\(([^)\s]+)\)", ROOT.joinpath("README.md").read_text()):
        if re.match(r"[a-z]+://|#", target):
            continue
        assert (ROOT / target.partition("#")[0]).exists(), f"README.md links to {target}, which does not exist"


# --- commands and flags ---------------------------------------------------------------------

COMMAND = re.compile(r"(?:^|[\s/'\"])tuneloop (\w+)([^#'\n]*)")


def command_lines(path: Path) -> list[str]:
    """Every `tuneloop <command> ...` of a page: in code blocks (not Python) and inline code."""
    texts = [text for lang, text in code_blocks(path) if lang not in ("python", "yaml")] + inline_code(path)
    return [m.group(0).strip(" '\"/") for text in texts for line in text.splitlines()
            for m in COMMAND.finditer(line)]


def help_of(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        cli.make_parser().parse_args([command, "--help"])
    assert exited.value.code == 0, f"tuneloop {command} --help exited {exited.value.code}"
    return out.getvalue()


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_command_shown_exists_with_its_flags(document):
    lines = command_lines(document)
    helps: dict[str, str] = {}
    for line in lines:
        command, rest = re.match(r"tuneloop (\w+)(.*)", line).groups()
        if command not in helps:
            helps[command] = help_of(command)
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            assert re.search(rf"(?<![\w-]){flag}\b", helps[command]), \
                f"{name(document)}: `{line}` uses {flag}, which `tuneloop {command} --help` does not list"


def test_the_pages_show_every_command():
    shown = {re.match(r"tuneloop (\w+)", line).group(1) for doc in DOCUMENTS for line in command_lines(doc)}
    commands = cli.make_parser()._subparsers._group_actions[0].choices
    assert set(commands) <= shown, f"commands no page shows: {sorted(set(commands) - shown)}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_scripts_tests_and_experiments_named_exist(document):
    text = document.read_text()
    for script, flags in re.findall(r"(benchmarks/\w+\.py)((?:[ \t]+--?[\w-]+(?:[ \t]+[\w.]+)*)*)", text):
        source = ROOT.joinpath(script).read_text()
        for flag in re.findall(r"--[a-z][a-z-]*", flags):
            assert f'"{flag}"' in source, f"{name(document)}: {script} has no option {flag}"
    for test_file, test in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", text):
        assert (ROOT / test_file).is_file(), f"{name(document)} names {test_file}, which does not exist"
        if test:
            assert f"def {test}(" in (ROOT / test_file).read_text(), f"{name(document)}: no {test} in {test_file}"
    for experiment in re.findall(r"experiments/\w+\.yaml", text):
        assert experiment == "experiments/x.yaml" or (ROOT / experiment).is_file(), \
            f"{name(document)} names {experiment}, which does not exist"


# --- experiment files -----------------------------------------------------------------------

def merged(base: dict, fragment: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in fragment.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def experiment_blocks(path: Path) -> list[dict]:
    """The ```yaml blocks that are an experiment or a fragment of one (top-level keys run, sweep)."""
    found = []
    for lang, text in code_blocks(path):
        if lang == "yaml":
            raw = parse_yaml(text, file=name(path))
            if isinstance(raw, dict) and raw and set(raw) <= {"run", "sweep"}:
                found.append(raw)
    return found


def test_the_pages_have_experiment_blocks():
    assert sum(len(experiment_blocks(doc)) for doc in DOCUMENTS) >= 8


@pytest.mark.parametrize("document", DOCUMENTS, ids=name)
def test_every_yaml_block_validates(document):
    default = parse_yaml(DEFAULT_EXPERIMENT.read_text(), file=name(DEFAULT_EXPERIMENT))
    for raw in experiment_blocks(document):
        complete = isinstance(raw.get("run"), dict) and {"name", "data", "net", "optimizer"} <= set(raw["run"])
        load_experiment(raw if complete else merged(default, raw))  # raises UserError with the key and rule


def _models(annotation) -> list[tuple[type[BaseModel], str]]:
    """The models an annotation holds, each with the suffix its keys take in a dotted path."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    if origin is typing.Annotated:
        return _models(args[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in args for m in _models(arg)]
    if origin is list:
        return [(model, "[]" + suffix) for model, suffix in _models(args[0])]
    if origin is dict:
        return [(model, ".<key>" + suffix) for model, suffix in _models(args[1])]
    return []


def schema_keys(model: type[BaseModel], prefix: str, seen: tuple = ()) -> list[str]:
    keys = []
    for field_name, field in model.model_fields.items():
        path = f"{prefix}.{field.alias or field_name}" if prefix else field.alias or field_name
        subs = _models(field.annotation)
        if not any(suffix == "" for _, suffix in subs):  # a section (run.checkpoint_config) is its keys
            keys.append(path)
        for sub, suffix in subs:  # a model inside itself (a sub-space's parameters) is listed once
            if sub not in seen:
                keys += schema_keys(sub, path + suffix, (*seen, model, *(m for m, _ in subs)))
    return list(dict.fromkeys(keys))


def test_every_key_of_the_schema_is_on_the_experiment_files_page():
    page = ROOT.joinpath("docs", "experiment-files.md").read_text()
    keys = schema_keys(ExperimentConfig, "")
    assert "run.early_stopping_config.patience" in keys and "sweep.search_space.<key>.low" in keys
    missing = [key for key in keys if f"`{key}`" not in page]
    assert not missing, f"keys of the schema missing from docs/experiment-files.md: {missing}"
