"""Parse Prometheus text format from stdin with the reference parser
(prometheus_client), print every sample as JSON: {"name{k="v",...}": value}
with labels sorted. Used by tests/tests/metrics.rs."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> None:
    samples = {}
    for family in text_string_to_metric_families(sys.stdin.read()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
