"""The one Prometheus text helper both /metrics producers (proxy, supervisor) use."""

from __future__ import annotations

import math

from proxy import prometheus
from supervisor import metrics as supervisor_metrics


def test_label_values_are_escaped_as_the_exposition_format_says() -> None:
    text = prometheus.labels(a='say "hi"', b="back\\slash", c="two\nlines", d=3)
    assert text == '{a="say \\"hi\\"",b="back\\\\slash",c="two\\nlines",d="3"}'


def test_no_labels_is_an_empty_string() -> None:
    assert prometheus.labels() == ""


def test_family_and_bucket_bounds() -> None:
    assert prometheus.family("x_total", "counter", "Things.", ["x_total 1"]) == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        "x_total 1",
    ]
    assert prometheus.le(0.25) == "0.25" and prometheus.le(math.inf) == "+Inf"


def test_the_supervisor_uses_the_same_escaper() -> None:
    # Two escapers used to disagree (one dropped quotes, the other escaped them).
    assert supervisor_metrics._labels is prometheus.labels
