"""Prometheus text exposition helpers shared by the proxy and the supervisor's /metrics.

One escaper for label values, as the exposition format defines it (backslash, double quote and
line feed are escaped; everything else is passed as is), so every metric Corral serves parses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def escape(value: object) -> str:
    """A label value escaped for the text format."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**kv: object) -> str:
    """`{k="v",...}` with every value escaped; "" when there are no labels."""
    if not kv:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in kv.items()) + "}"


def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    """One metric family: its HELP and TYPE lines, then its sample lines."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def le(bound: float) -> str:
    """A histogram bucket's `le` label value (`+Inf` for the last bucket)."""
    return "+Inf" if math.isinf(bound) else f"{bound:g}"
