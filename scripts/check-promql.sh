#!/usr/bin/env bash
# Runs a real Prometheus (Debian's package) against a running relay and checks the PromQL of the
# dashboards and the alert rules on what it scraped:
#
#   scripts/check-promql.sh [--duration SECONDS] RELAY_URL      e.g. http://127.0.0.1:8080
#
# 1. promtool check metrics on one scrape of RELAY_URL/metrics;
# 2. a Prometheus with a temporary config and data directory, on a free loopback port, scraping
#    RELAY_URL every second (with namespace and pod labels, as the Prometheus operator adds them)
#    and loading helm/dynamodb-nakadi-relay/files/alerts.yaml as its rules;
# 3. after SECONDS (default 30) of scraping: every alert rule evaluated without error and every
#    expression accepted by the query API; every dashboard query (Grafana variables substituted)
#    accepted and returning data.
#
# The relay must be doing work meanwhile (records read and published) for the throughput panels
# to have data. Prometheus is stopped and its directory removed on exit. Exits non-zero on any
# failure; the last line is "check-promql: N passed, M failed".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION=30
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) break ;;
  esac
done
[[ $# -eq 1 ]] || { echo "usage: $0 [--duration SECONDS] RELAY_URL" >&2; exit 2; }
RELAY_URL="$1"
[[ "$RELAY_URL" == http://* || "$RELAY_URL" == https://* ]] || RELAY_URL="http://$RELAY_URL"
RELAY_URL="${RELAY_URL%/}"

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  bash "$ROOT/scripts/install-deploy-tools.sh" >&2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-promql.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# The Python below starts and always stops Prometheus itself (atexit, SIGTERM, SIGINT).
python3 - "$ROOT" "$RELAY_URL" "$DURATION" "$WORK" <<'PY'
import atexit, json, os, re, signal, socket, subprocess, sys, time, urllib.error, urllib.parse, urllib.request

root, relay_url, duration, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
alerts_file = os.path.join(root, "helm/dynamodb-nakadi-relay/files/alerts.yaml")
dash_dir = os.path.join(root, "dashboards")
passed = failed = 0

def result(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    print(f"{'PASS' if ok else 'FAIL'}  {what}" + (f"  ({detail})" if detail else ""), flush=True)

def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()

# ---- 1. the relay is up, and its exposition passes promtool ------------------------------------
deadline = time.time() + 20
while True:
    try:
        scrape = get(relay_url + "/metrics")
        break
    except (urllib.error.URLError, OSError) as e:
        if time.time() > deadline:
            print(f"check-promql: {relay_url}/metrics not reachable: {e}")
            sys.exit(1)
        time.sleep(0.5)
check = subprocess.run(["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True)
result(check.returncode == 0, "promtool check metrics on a scrape of " + relay_url + "/metrics",
       (check.stdout + check.stderr).strip().replace("\n", "; "))

# ---- 2. a real Prometheus scraping it ------------------------------------------------------------
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
target = urllib.parse.urlsplit(relay_url)
config = {
    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
    "rule_files": [alerts_file],
    "scrape_configs": [{
        "job_name": "dynamodb-nakadi-relay",
        "scheme": target.scheme,
        "metrics_path": (target.path or "") + "/metrics",
        "static_configs": [{"targets": [target.netloc],
                            "labels": {"namespace": "check-promql", "pod": "relay-0"}}],
    }],
}
cfg_path = os.path.join(work, "prometheus.yml")
with open(cfg_path, "w") as f:
    json.dump(config, f)          # JSON is YAML
api = f"http://127.0.0.1:{port}"
log = open(os.path.join(work, "prometheus.log"), "w")
prom = subprocess.Popen(
    ["prometheus", f"--config.file={cfg_path}", f"--storage.tsdb.path={os.path.join(work, 'data')}",
     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
    stdout=log, stderr=subprocess.STDOUT)
def stop(*_):
    if prom.poll() is None:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
atexit.register(stop)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
signal.signal(signal.SIGINT, lambda *_: sys.exit(1))

def finish(code):
    stop()
    print(f"check-promql: {passed} passed, {failed} failed")
    sys.exit(code)

def query(expr):
    q = urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(get(f"{api}/api/v1/query?{q}"))
    except urllib.error.HTTPError as e:
        body = json.loads(e.read().decode() or "{}")
    return body

deadline = time.time() + 30
while True:
    try:
        get(api + "/-/ready", timeout=1)
        break
    except (urllib.error.URLError, OSError):
        if prom.poll() is not None or time.time() > deadline:
            log.flush()
            print(open(os.path.join(work, "prometheus.log")).read())
            result(False, "prometheus started")
            finish(1)
        time.sleep(0.3)
version = json.loads(get(api + "/api/v1/status/buildinfo"))["data"]["version"]
result(True, f"prometheus {version} started on 127.0.0.1:{port}, scraping {relay_url}")

deadline = time.time() + 20
while True:
    targets = json.loads(get(api + "/api/v1/targets"))["data"]["activeTargets"]
    if targets and all(t["health"] == "up" for t in targets):
        break
    if time.time() > deadline:
        result(False, "scrape target up", "; ".join(t.get("lastError", "") for t in targets))
        finish(1)
    time.sleep(0.5)
result(True, "scrape target up")
print(f"check-promql: scraping for {duration}s", flush=True)
time.sleep(duration)

# ---- 3a. alert rules: loaded, evaluated without error, each expression accepted ------------------
groups = json.loads(get(api + "/api/v1/rules"))["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
expected = len(re.findall(r"^\s*-\s*alert:", open(alerts_file).read(), re.M))
result(len(rules) == expected and expected > 0, f"Prometheus loaded {len(rules)} of {expected} alert rules")
for r in rules:
    ok = r.get("health") == "ok" and not r.get("lastError")
    body = query(r["query"])
    ok = ok and body.get("status") == "success"
    n = len(body.get("data", {}).get("result", [])) if body.get("status") == "success" else 0
    result(ok, f"alert {r['name']}: evaluates", r.get("lastError") or body.get("error") or f"{n} series now, state {r.get('state')}")

# ---- 3b. dashboard queries: accepted and returning data ------------------------------------------
def substitute(expr):
    expr = re.sub(r"\$__rate_interval\b|\$\{__rate_interval\}", "15s", expr)
    expr = re.sub(r"\$__interval\b|\$\{__interval\}", "5s", expr)
    expr = re.sub(r"\$__range\b|\$\{__range\}", f"{duration}s", expr)
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)

for name in sorted(os.listdir(dash_dir)):
    if not name.endswith(".json"):
        continue
    dash = json.load(open(os.path.join(dash_dir, name)))
    exprs = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q.strip())
            exprs.append((f"variable {v['name']}", m.group(1) if m else q))
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop(0)
        stack[:0] = p.get("panels", [])
        for t in p.get("targets", []):
            exprs.append((f"panel '{p.get('title')}' {t.get('refId')}", t["expr"]))
    for where, expr in exprs:
        body = query(substitute(expr))
        if body.get("status") != "success":
            result(False, f"{name}: {where}: parses", body.get("error", "no answer"))
            continue
        n = len(body["data"]["result"])
        result(n > 0, f"{name}: {where}: returns data", f"{n} series" if n else "no data: " + substitute(expr))

finish(1 if failed else 0)
PY
