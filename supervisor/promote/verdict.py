"""Per-field verdicts: what became of each setting of each service on one target.

A target records `mapped` (same behaviour), `approximated` (the target's nearest equivalent;
the note says how it differs) or `dropped` (no equivalent; the note says what to do instead)
for every field of every service and of the proxy. Whatever a target forgot to judge is
recorded as dropped by `complete`, so nothing is ever lost without a word.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator
from dataclasses import dataclass

from config.model import ProxySpec, Roll, ScaleSpec, ServiceSpec

PROXY = "[proxy]"  # the "service" name proxy settings are recorded under
UNJUDGED = "Corral has no translation of this setting for this target yet"
# The fields only the proxy reads (config/model.py: "ignored when ... [proxy] is absent").
PROXY_SIDE = ("route", "balance", "hash_key", "weights", "default_weight", "drain_timeout")


class Verdict(enum.Enum):
    MAPPED = "mapped"
    APPROXIMATED = "approximated"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class Finding:
    """The verdict on one field of one service (or of the proxy)."""

    service: str
    field: str
    verdict: Verdict
    note: str = ""


def field_paths(value: object) -> Iterator[str]:
    """Dotted names of `value`'s fields; nested dataclasses (health, route) expand."""
    assert dataclasses.is_dataclass(value)
    for f in dataclasses.fields(value):
        inner = getattr(value, f.name)
        if dataclasses.is_dataclass(inner) and not isinstance(inner, type):
            yield from (f"{f.name}.{sub}" for sub in field_paths(inner))
        else:
            yield f.name


def is_default(spec: object, path: str) -> bool:
    """Whether the field of dotted `path` (its top-level field) still has its declared default."""
    name = path.split(".")[0]
    for f in dataclasses.fields(spec):  # type: ignore[arg-type]
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return bool(getattr(spec, name) == f.default)
            if f.default_factory is not dataclasses.MISSING:
                return bool(getattr(spec, name) == f.default_factory())
            return False
    raise KeyError(name)


class Findings:
    """The verdicts of one promotion, in the order they were recorded."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._found: dict[tuple[str, str], Finding] = {}

    def record(self, service: str, field: str, verdict: Verdict, note: str = "") -> None:
        # The first verdict wins: shared helpers judge first, targets may not undo them silently.
        self._found.setdefault((service, field), Finding(service, field, verdict, note))

    def mapped(self, service: str, field: str, note: str = "") -> None:
        self.record(service, field, Verdict.MAPPED, note)

    def approximated(self, service: str, field: str, note: str) -> None:
        self.record(service, field, Verdict.APPROXIMATED, note)

    def dropped(self, service: str, field: str, note: str) -> None:
        self.record(service, field, Verdict.DROPPED, note)

    def unless_default(
        self,
        spec: ServiceSpec | ProxySpec,
        field: str,
        verdict: Verdict,
        note: str,
        default_note: str = "default",
    ) -> None:
        """`verdict` for a field the user set; a field left at its default loses nothing.

        `field` may be dotted (`route.path`): then its top-level field decides.
        """
        owner = spec.name if isinstance(spec, ServiceSpec) else PROXY
        if is_default(spec, field):
            self.mapped(owner, field, default_note)
        else:
            self.record(owner, field, verdict, note)

    def drop_service(self, spec: ServiceSpec, note: str, under: str = "") -> None:
        """Every field of a service the target cannot run at all (or every one `under.`)."""
        for name in field_paths(spec):
            if not under or name.startswith(under + "."):
                self.dropped(spec.name, name, note)

    def not_proxied(self, spec: ServiceSpec, note: str = "not proxied") -> None:
        """The proxy-side fields of a service no proxy routes to: nothing is lost."""
        for name in field_paths(spec):
            if name.split(".")[0] in PROXY_SIDE:
                self.mapped(spec.name, name, note)

    def complete(self, services: list[ServiceSpec], proxy: ProxySpec | None) -> None:
        """Record every field nobody judged as dropped (UNJUDGED), so none goes unmentioned."""
        for spec in services:
            for name in field_paths(spec):
                self.record(spec.name, name, Verdict.DROPPED, UNJUDGED)
        if proxy is not None:
            for name in field_paths(proxy):
                self.record(PROXY, name, Verdict.DROPPED, UNJUDGED)

    def all(self) -> list[Finding]:
        return list(self._found.values())

    def get(self, service: str, field: str) -> Finding | None:
        return self._found.get((service, field))

    def dropped_any(self) -> bool:
        return any(f.verdict is Verdict.DROPPED for f in self._found.values())

    def to_json(self) -> list[dict[str, str]]:
        return [
            {"service": f.service, "field": f.field, "verdict": f.verdict.value, "note": f.note}
            for f in self._found.values()
        ]

    def report(self) -> str:
        """Short text: counts per verdict, then every approximation and drop with its note.

        A service dropped whole (every field, one reason) takes one line.
        """
        found = self.all()
        counts = {v: sum(1 for f in found if f.verdict is v) for v in Verdict}
        lines = [
            f"{self.target}: {counts[Verdict.MAPPED]} mapped, "
            f"{counts[Verdict.APPROXIMATED]} approximated, {counts[Verdict.DROPPED]} dropped"
        ]
        by_service: dict[str, list[Finding]] = {}
        for f in found:
            by_service.setdefault(f.service, []).append(f)
        for service, findings in by_service.items():
            notes = {f.note for f in findings}
            if all(f.verdict is Verdict.DROPPED for f in findings) and len(notes) == 1:
                what = "every setting" if service == PROXY else "the whole service"
                lines.append(f"  {'dropped':<12} {service} ({what}): {notes.pop()}")
                continue
            lines += [
                f"  {f.verdict.value:<12} {service}.{f.field}: {f.note}"
                for f in findings
                if f.verdict is not Verdict.MAPPED
            ]
        return "\n".join(lines)


# `scale.min`, `scale.max`, then the autoscaler's own settings.
SCALE_FIELDS = tuple(f"scale.{f.name}" for f in dataclasses.fields(ScaleSpec))


def fixed_count(spec: ServiceSpec) -> int:
    """The replicas of a service on a target that cannot autoscale it: scale.min, at least 1
    (at zero nothing would answer, and nothing there starts one on a request)."""
    return max(spec.scale.min, 1) if spec.scale is not None else spec.instances


def judge_fixed_scale(found: Findings, spec: ServiceSpec, who: str) -> None:
    """`scale` on a target without request-driven autoscaling: a fixed count of replicas."""
    if spec.scale is None:
        found.mapped(spec.name, "scale", "not autoscaled")
        return
    count = f"{fixed_count(spec)} replicas, fixed: {who} does not scale by requests"
    for field in SCALE_FIELDS[:2]:
        found.approximated(spec.name, field, f"{count} (the knative target does)")
    for field in SCALE_FIELDS[2:]:
        found.dropped(
            spec.name,
            field,
            f"{who} has no request-driven autoscaling: use the knative target, or KEDA's "
            "HTTP add-on on Kubernetes",
        )


# Supervision settings of Corral's own (start-up, crash loops, how a roll goes) that every
# target judges the same way, with its own words.
START_FIELDS = ("min_uptime", "start_timeout")
CRASH_LOOP_FIELDS = ("crash_loop", "cooldown_initial", "cooldown_max")


def judge_supervision(
    found: Findings,
    spec: ServiceSpec,
    *,
    start: str,
    loops: Verdict,
    loops_note: str,
    surge: tuple[Verdict, str],
    in_place: tuple[Verdict, str],
    loops_default: str = "default",
    start_timeout: tuple[Verdict, str] | None = None,
) -> None:
    """Verdicts on min_uptime, start_timeout, crash_loop, crash_cooldown and roll.

    `surge` / `in_place`: how the target's own updates compare with each kind of roll;
    `start_timeout`: what the target makes of it, where it is more than `start` says.
    """
    for field in START_FIELDS:
        if field == "start_timeout" and start_timeout is not None:
            found.record(spec.name, field, *start_timeout)
            continue
        found.unless_default(spec, field, Verdict.DROPPED, start, "default")
    for field in CRASH_LOOP_FIELDS:
        found.unless_default(spec, field, loops, loops_note, loops_default)
    # `roll` is resolved by config.load ("auto" becomes surge or in-place), so never at its
    # declared default: judged as what it became.
    verdict, note = in_place if spec.roll is Roll.IN_PLACE else surge
    found.record(spec.name, "roll", verdict, f"{spec.roll.value}: {note}")
