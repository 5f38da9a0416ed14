"""Names on the command line (`api`, `api.2`) resolved to services and instance indexes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import TargetError

if TYPE_CHECKING:
    from .service import Service

Target = tuple["Service", int | None]


def resolve(services: Mapping[str, Service], targets: Sequence[str]) -> list[Target]:
    """`api` → the whole service, `api.2` → one instance; no targets → every service.

    Unknown names raise TargetError, listing what exists.
    """
    if not targets:
        return [(s, None) for s in services.values()]
    out: list[Target] = []
    for target in targets:
        name, _, index = target.partition(".")
        service = services.get(name)
        if service is None:
            known = ", ".join(services) or "none"
            raise TargetError(f"no service {name!r} (services: {known})")
        if not index:
            out.append((service, None))
            continue
        if not index.isdigit() or int(index) not in service.instances:
            have = ", ".join(f"{name}.{i}" for i in sorted(service.instances)) or "none"
            raise TargetError(f"no instance {target!r} (instances: {have})")
        out.append((service, int(index)))
    return out
