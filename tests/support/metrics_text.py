"""Reading Prometheus text exposition in tests: one sample's value by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels` (summed over the
    samples that match, so a family can be read across labels left unnamed); 0 when
    no sample matches, as Prometheus reads a counter not yet seen."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
