#!/usr/bin/env python3
"""Every series a dashboard or alert queries must be one a freshly started relay exports.

    check-series.py --scrape METRICS_TEXT [--rules RULES.yaml ...] [--dashboard DASH.json ...]

METRICS_TEXT is one scrape of /metrics (Prometheus text format) of a relay that has just become
ready. Every vector selector in every alert expression, dashboard panel query and dashboard
variable query (`label_values(SELECTOR, LABEL)`) must select at least one series of that scrape;
a variable's series must also carry LABEL. Grafana variables are replaced as Grafana's "All"
would (`.*`). Matchers on the labels Prometheus adds to a target (namespace, job, pod, ...) are
left out: a scrape has none.

Why a scrape and not the list of names in src/metrics.rs: a labelled series exists only once a
label value was used, so a name can be defined and still have no series (an alert's `increase()`
then misses the first event, a panel shows "No data"), and a label value a query names may never
be exported at all. Exits 1 and names each selector that selects nothing.
"""

import argparse
import json
import re
import sys

import yaml

# Labels the scrape configuration adds (the Prometheus operator's ServiceMonitor, check-promql).
TARGET_LABELS = {"namespace", "job", "pod", "instance", "service", "endpoint", "container"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}

TOKEN = re.compile(
    r'''(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')'''
    r'''|(?P<matchers>\{(?:[^}"']|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')*\})'''
    r'''|(?P<range>\[[^\]]*\])'''
    r'''|(?P<number>(?<![\w:])[0-9][0-9.]*(?:e[+-]?[0-9]+)?[a-z]*)'''
    r'''|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)'''
    r'''|(?P<open>\()|(?P<close>\))|(?P<other>.)''',
    re.S,
)
MATCHER = re.compile(
    r'''\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*(?:,|$)'''
)


def unquote(s):
    if s.startswith("'"):
        s = '"' + s[1:-1].replace('\\"', '"').replace('"', '\\"') + '"'
    return json.loads(s)


def parse_matchers(block):
    """`{a="x", b=~"y"}` -> [("a", "=", "x"), ("b", "=~", "y")]; None when it is not one."""
    body = block[1:-1].strip()
    out, pos = [], 0
    while pos < len(body):
        m = MATCHER.match(body, pos)
        if not m:
            return None
        out.append((m.group(1), m.group(2), unquote(m.group(3))))
        pos = m.end()
    return out


def selectors(expr):
    """The vector selectors of a PromQL expression: (metric name or None, [matchers])."""
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if not m.group().isspace()]
    found = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "ident" and text in GROUPING and nxt[0] == "open":
            depth, i = 0, i + 1
            while i < len(tokens):       # skip the label list
                depth += {"open": 1, "close": -1}.get(tokens[i][0], 0)
                if depth == 0:
                    break
                i += 1
        elif kind == "ident" and (nxt[0] == "open" or (nxt[0] == "ident" and nxt[1] in GROUPING)):
            pass                         # a function, or an aggregation: `max by (...) (...)`
        elif kind == "ident" and text.lower() not in KEYWORDS:
            if nxt[0] == "matchers":
                found.append((text, parse_matchers(nxt[1]), nxt[1]))
                i += 1
            else:
                found.append((text, [], ""))
        elif kind == "matchers":
            found.append((None, parse_matchers(text), text))
        i += 1
    return found


def substitute(expr):
    expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "5m", expr)
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)


def parse_scrape(text):
    series = []
    label = re.compile(r'\s*([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"\s*,?')
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+", line)
        if not m:
            raise SystemExit(f"check-series: not a sample line of the scrape: {line!r}")
        labels = {k: json.loads(f'"{v}"') for k, v in label.findall(m.group(3) or "")}
        series.append((m.group(1), labels))
    return series


def matches(labels, matchers):
    for name, op, value in matchers:
        if name in TARGET_LABELS:
            continue
        have = labels.get(name, "")
        ok = {
            "=": have == value,
            "!=": have != value,
            "=~": re.fullmatch(value, have) is not None,
            "!~": re.fullmatch(value, have) is None,
        }[op]
        if not ok:
            return False
    return True


def queries(rules_files, dashboard_files):
    """(where, expression, label a variable asks for or None)."""
    for path in rules_files:
        for group in yaml.safe_load(open(path))["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                yield f"{path}: {name}", rule["expr"], None
    for path in dashboard_files:
        dash = json.load(open(path))
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
            if m:
                yield f"{path}: variable {var['name']}", m.group(1), m.group(2)
            else:
                yield f"{path}: variable {var['name']}", q, None
        stack = list(dash.get("panels", []))
        while stack:
            panel = stack.pop(0)
            stack[:0] = panel.get("panels", [])
            for t in panel.get("targets", []):
                yield f"{path}: panel '{panel.get('title')}' {t.get('refId')}", t["expr"], None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scrape", required=True)
    ap.add_argument("--rules", nargs="*", default=[])
    ap.add_argument("--dashboard", nargs="*", default=[])
    args = ap.parse_args()
    scrape = parse_scrape(open(args.scrape).read())
    names = {name for name, _ in scrape}
    errors, checked, count = [], set(), 0
    for where, expr, label in queries(args.rules, args.dashboard):
        count += 1
        for name, matchers, text in selectors(substitute(expr)):
            if matchers is None:
                errors.append(f"{where}: cannot read the label matchers {text}")
                continue
            if name is None:
                errors.append(f"{where}: {text} selects by __name__; name the metric so it can be checked")
                continue
            selected = [labels for n, labels in scrape if n == name and matches(labels, matchers)]
            shown = name + text
            checked.add(shown)
            if not selected:
                why = "no such metric" if name not in names else "no series with these labels"
                errors.append(f"{where}: {shown} selects nothing a freshly started relay exports ({why})")
            elif label and label not in TARGET_LABELS and not any(labels.get(label) for labels in selected):
                errors.append(f"{where}: {shown} has no series with the label {label}")
    print(f"check-series: {count} queries, {len(checked)} distinct selectors, "
          f"{len(scrape)} series in the scrape ({len(names)} names)")
    for e in errors:
        print("ERROR", e)
    sys.exit(1 if errors or count == 0 else 0)


if __name__ == "__main__":
    main()
