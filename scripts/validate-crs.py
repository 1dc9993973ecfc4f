#!/usr/bin/env python3
"""The prometheus-operator objects of rendered manifests against the operator's CRD schemas.

    validate-crs.py MANIFEST.yaml ...

kubernetes-validate knows only Kubernetes' own kinds and skips ServiceMonitor, PodMonitor and
PrometheusRule. Their schemas come here from PyPI's cloudcoil-models-prometheus-operator: pydantic
models generated from prometheus-operator's CRDs (the version is its own: 0.80.1.0 is
prometheus-operator v0.80.1), with the CRDs' types, required fields, enums and patterns (a scrape
interval of "30 seconds" is refused, as the API server would). Pydantic drops fields a model does
not know instead of refusing them, so every document is also compared with what the model kept:
a field it dropped (a typo such as `scrapeTimout`) fails, as `kubectl apply` with the default
strict field validation would. Every other kind is left to kubernetes-validate.

Exits 1 naming each object and field that does not validate, and when a manifest has none of
these kinds at all (a check that checked nothing).
"""

import sys

import yaml
from pydantic import ValidationError
from cloudcoil.models.prometheus_operator import v1

MODELS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): v1.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): v1.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): v1.PrometheusRule,
}


def dropped(given, kept, path=""):
    """Paths of `given` that the model did not keep: fields unknown to the schema."""
    out = []
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "."]
        for key, value in given.items():
            sub = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(sub)
            else:
                out.extend(dropped(value, kept[key], sub))
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (g, k) in enumerate(zip(given, kept)):
            out.extend(dropped(g, k, f"{path}[{i}]"))
    return out


def main(paths):
    if not paths:
        print(__doc__)
        return 2
    errors, checked = [], 0
    for path in paths:
        found = 0
        for doc in yaml.safe_load_all(open(path)):
            if not doc:
                continue
            model = MODELS.get((doc.get("apiVersion"), doc.get("kind")))
            if model is None:
                continue
            found += 1
            name = f"{path}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
            try:
                obj = model.model_validate(doc)
            except ValidationError as e:
                for err in e.errors():
                    where = ".".join(str(p) for p in err["loc"])
                    errors.append(f"{name}: {where}: {err['msg']}")
                continue
            kept = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
            unknown = dropped(doc, kept)
            for field in unknown:
                errors.append(f"{name}: {field}: not a field of the {doc['kind']} schema")
            if not unknown:
                print(f"{name}: valid")
        if not found:
            errors.append(f"{path}: no ServiceMonitor, PodMonitor or PrometheusRule in it")
        checked += found
    for e in errors:
        print("ERROR", e)
    print(f"{checked} prometheus-operator objects checked against the CRD schemas, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
