#!/usr/bin/env python3
"""The relay itself reads the tables file a chart render holds.

    check-tables-file.py --render RENDER.yaml --relay BIN --out DIR

The schema and tomllib only prove that the chart's values make a TOML file; whether the relay
takes it (conditions, route order, options) is the relay's to say. This extracts tables.toml
from the render's ConfigMap and runs `BIN event-type --owning-application x --key pk --table
NAME` for each of its tables, with the literal RELAY_* variables of the rendered Deployment and
RELAY_TABLES_FILE pointing at the extracted file. `event-type` calls no AWS and no Nakadi, so
this needs neither. Each run must exit 0 and print one event type per route, in route order, the
table's own event_type last (the fallback counts as a route): one body for a table of one route,
a list of bodies otherwise, each with its route's cleanup_policy.

Exits 1 on the first table whose run does not, printing the relay's output. Python stdlib and
PyYAML only (the tools venv of scripts/install-deploy-tools.sh has both).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib

import yaml


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", required=True, help="helm template output with tables set")
    parser.add_argument("--relay", required=True, help="the relay binary")
    parser.add_argument("--out", required=True, help="where tables.toml and the outputs go")
    args = parser.parse_args()

    docs = [d for d in yaml.safe_load_all(open(args.render)) if d]
    configmaps = [d for d in docs if d["kind"] == "ConfigMap" and "tables.toml" in d.get("data", {})]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if len(configmaps) != 1 or len(deployments) != 1:
        print(f"{args.render}: expected one Deployment and one ConfigMap with tables.toml, "
              f"got {len(deployments)} and {len(configmaps)}")
        return 1
    os.makedirs(args.out, exist_ok=True)
    tables_path = os.path.join(args.out, "tables.toml")
    text = configmaps[0]["data"]["tables.toml"]
    open(tables_path, "w").write(text)

    # The pod's own settings: a setting the chart renders wrong fails here as it would there.
    (container,) = deployments[0]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    if "RELAY_TABLES_FILE" not in env:
        print("the Deployment does not set RELAY_TABLES_FILE")
        return 1
    env["RELAY_TABLES_FILE"] = tables_path
    env["PATH"] = os.environ.get("PATH", "")

    tables = tomllib.loads(text)["table"]
    for i, table in enumerate(tables):
        name = table.get("name") or re.search(r":table/([^/]+)/stream/", table["stream_arn"]).group(1)
        routes = table.get("route", [])
        expected = [(r["event_type"], r.get("compaction_key", False)) for r in routes]
        if "event_type" in table:
            expected.append((table["event_type"], table.get("compaction_key", False)))
        cmd = [args.relay, "event-type", "--owning-application", "x", "--key", "pk", "--table", name]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        open(os.path.join(args.out, f"event-type-{i}-{name}.json"), "w").write(run.stdout)
        shown = f"$ RELAY_TABLES_FILE={tables_path} {' '.join(cmd)}"
        if run.returncode != 0:
            print(f"{shown}\nexit {run.returncode}\n{run.stderr}{run.stdout}")
            print(f"the relay refuses the rendered tables file (run for table {name})")
            return 1
        try:
            printed = json.loads(run.stdout)
        except json.JSONDecodeError as e:
            print(f"{shown}\n{run.stdout}\ntable {name}: output is no JSON: {e}")
            return 1
        # One route prints the body alone, as before routes existed; several print a list.
        bodies = printed if isinstance(printed, list) else [printed]
        if len(expected) > 1 and not isinstance(printed, list):
            print(f"table {name}: {len(expected)} routes, but one event type printed, not a list")
            return 1
        got = [(b.get("name"), b.get("cleanup_policy") == "compact") for b in bodies]
        if got != expected:
            print(f"{shown}\ntable {name}: event types (name, compacted) {got}, expected {expected}")
            return 1
        print(f"table {name}: {len(bodies)} event type(s): {', '.join(n for n, _ in got)}")
    print(f"the relay reads {tables_path}: {len(tables)} tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
