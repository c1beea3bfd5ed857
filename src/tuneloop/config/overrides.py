"""`--set dotted.key=value` overrides, applied to the raw experiment mapping before validation."""

from __future__ import annotations

from tuneloop.config.errors import UserError
from tuneloop.config.yaml12 import parse_yaml


def apply_override(raw: dict, assignment: str, *, file: str) -> str:
    """Apply `dotted.key=value` (value parsed as YAML) to `raw` in place; return the key."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError("--set takes KEY=VALUE with a dotted key", file=file, key="--set", value=assignment,
                        choices=["run.epochs=5", "sweep.num_samples=4"])
    value = parse_yaml(text, file=f"--set {assignment}") if text.strip() else None
    parts = _override_path(key)
    node = raw
    for index, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            raise UserError("--set can only descend into mappings", file=file,
                            key=".".join(parts[: index + 1]), value=child, origin=f"--set {assignment}")
        node = child
    node[parts[-1]] = value
    return key


PARAM_FIELDS = ("type", "low", "high", "log", "step", "choices")


def _override_path(key: str) -> list[str]:
    """Split a dotted key; search-space keys are dotted themselves (`…search_space.<key>[.<field>]`)."""
    prefix = "sweep.search_space."
    if not key.startswith(prefix) or key == prefix:
        return key.split(".")
    param, _, field = key[len(prefix):].rpartition(".")
    if field in PARAM_FIELDS and param:
        return ["sweep", "search_space", param, field]
    return ["sweep", "search_space", key[len(prefix):]]
