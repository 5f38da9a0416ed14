"""YAML text for the generated files: key order as built, no aliases, stable bytes."""

from __future__ import annotations

from typing import Any


def dump(data: Any) -> str:
    """`data` as block-style YAML, keys in insertion order."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=1000)


def dump_all(documents: list[Any]) -> str:
    """Several documents in one file, separated by `---`."""
    return "---\n".join(dump(doc) for doc in documents)
