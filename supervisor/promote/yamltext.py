"""YAML text for the generated files: key order as built, no aliases, stable bytes."""

from __future__ import annotations

from typing import Any


def dump(data: Any) -> str:
    """`data` as block-style YAML, keys in insertion order."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        # Scripts (init containers' python -c) read as code in a literal block, not one line.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)

    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=1000)


def dump_all(documents: list[Any]) -> str:
    """Several documents in one file, separated by `---`."""
    return "---\n".join(dump(doc) for doc in documents)
