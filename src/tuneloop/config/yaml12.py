"""YAML as experiment files are written: YAML 1.2 numbers (`1e-3` and `1e4` are floats, which
PyYAML's YAML 1.1 reads as strings), duplicate keys refused, malformed YAML a UserError."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tuneloop.config.errors import UserError, Verbatim


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads numbers as YAML 1.2 does (`1e-3`, `1e4` are floats) and refuses duplicate keys."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:map", lambda l, n: _construct_mapping(l, n, deep=True))


def parse_yaml(text: str, *, file: str | None = None) -> Any:
    """YAML text → Python objects, with YAML 1.2 numbers; malformed YAML is a UserError."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if mark is None:
            raise UserError(f"is not valid YAML: {problem}", file=file) from None
        lines = text.splitlines()
        found = Verbatim(repr(lines[mark.line])) if mark.line < len(lines) else Verbatim("the end of the file")
        raise UserError(f"is not valid YAML: {problem}", file=file, key=f"line {mark.line + 1}, column {mark.column + 1}",
                        value=found) from None


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
