#!/usr/bin/env bash
# Checks the deploy and operate artefacts with the real tools, without a cluster:
#
#   helm lint --strict               the chart, with defaults, ci/all-on-values.yaml (Jobs on)
#                                    and ci/podmonitor-values.yaml on top of it
#   helm template                    those renders and the tables one (routes too), plus renders
#                                    that must be refused
#   kubernetes-validate --strict     the renders, against Kubernetes $K8S_VERSIONS
#   prometheus-operator CRDs         ServiceMonitor, PodMonitor, PrometheusRule against the CRD
#                                    schemas (scripts/validate-crs.py; self-test: a typo fails)
#   rendered-manifest checks         every RELAY_* variable of src/config.rs mapped, security
#                                    context, probes, grace period, selectors and ports agree;
#                                    the Jobs and the helm test Pod run with the relay's settings
#                                    and are selected by none of its selectors; zone spread
#   chart README                     current with values.yaml's comments, every value documented
#                                    (scripts/chart-readme.py; self-test: an undocumented value
#                                    fails)
#   tables file                      the relay (debug build) reads the tables render's file:
#                                    `event-type` per table, one event type per route
#                                    (scripts/check-tables-file.py; self-test: a route the relay
#                                    refuses fails)
#   cfn-lint                         cloudformation/*.yaml, and the template's queues, lease
#                                    table and alarm against the relay's contract
#   promtool check rules / test rules  files/alerts.yaml, the PrometheusRule render, unit tests
#   runbooks                         each alert has a runbook_url to its docs/operating.md section
#   dashboards                       JSON, ${datasource} everywhere, every query parses (promtool)
#   metric names                     every metric in dashboards/ and alerts.yaml is exported by
#                                    src/metrics.rs
#   fresh relay                      a relay started against moto and the Nakadi test server
#                                    exports, once ready, a series for every selector of every
#                                    dashboard and alert query (and the check fails when one does
#                                    not: self-test)
#   hadolint                         Dockerfile (and base images pinned by digest)
#
# Installs missing tools first (scripts/install-deploy-tools.sh; a no-op once installed).
# Prints one line per check and exits non-zero when any failed. Renders are kept in
# test-output/deploy/ for inspection.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
CHART="helm/dynamodb-nakadi-relay"
ALL_ON="$CHART/ci/all-on-values.yaml"
PODMON="$CHART/ci/podmonitor-values.yaml"
TABLES="$CHART/ci/tables-values.yaml"
ALERTS="$CHART/files/alerts.yaml"
OUT="$ROOT/test-output/deploy"
K8S_VERSIONS="${K8S_VERSIONS:-1.34.0}"
HELM="$ROOT/.tools/bin/helm"
VENV="$ROOT/.tools/venv"
PY="$VENV/bin/python"
RELAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/dynamodb-nakadi-relay"

start=$SECONDS
passed=0
failed=0
failures=()
rm -rf "$OUT" && mkdir -p "$OUT"

# run_with FILE NAME CMD...: run, or fail when FILE (made by an earlier check) is missing.
run_with() {
  local file="$1"; shift
  if [[ -s "$file" ]]; then
    run "$@"
  else
    run "$1" bash -c "echo 'not run: ${file#"$ROOT"/} was not produced by an earlier check'; false"
  fi
}

# run NAME CMD...: runs a check, its output to $OUT/logs/NAME.log, shown only on failure.
mkdir -p "$OUT/logs"
run() {
  local name="$1"; shift
  local log="$OUT/logs/${name//[^A-Za-z0-9._-]/_}.log"
  local t0=$SECONDS
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    printf 'PASS  %-58s %3ss\n' "$name" "$((SECONDS - t0))"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %-58s %3ss\n' "$name" "$((SECONDS - t0))"
    sed 's/^/      | /' "$log" | tail -n 40
  fi
}

echo "check-deploy: installing/verifying tools"
if ! bash "$ROOT/scripts/install-deploy-tools.sh" >"$OUT/logs/install-deploy-tools.log" 2>&1; then
  cat "$OUT/logs/install-deploy-tools.log"
  echo "check-deploy: tools could not be installed"
  exit 1
fi
cat "$OUT/logs/install-deploy-tools.log"
echo "check-deploy: helm $("$HELM" version --short 2>/dev/null), kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), $("$VENV/bin/hadolint" --version), $(promtool --version 2>&1 | head -n1), cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $NF}')"
echo

# ---- helm ----------------------------------------------------------------------------------------
# helm lint only logs a template's `fail` in lint mode; treat that (and any warning) as failure.
helm_lint() {
  local out
  out="$("$HELM" lint --strict "$CHART" "$@" 2>&1)"; local rc=$?
  echo "$out"
  [[ $rc -eq 0 ]] || return 1
  ! grep -Eq 'funcMap (fail|required)|\[(WARNING|ERROR)\]' <<<"$out"
}
run "helm lint --strict (defaults)" helm_lint
run "helm lint --strict (ci/all-on-values.yaml)" helm_lint -f "$ALL_ON"
run "helm lint --strict (all-on + ci/podmonitor-values.yaml)" helm_lint -f "$ALL_ON" -f "$PODMON"

KUBE_VERSION="${K8S_VERSIONS%% *}"
run "helm template (defaults)" \
  bash -c "'$HELM' template relay '$CHART' --namespace payments --kube-version '$KUBE_VERSION' > '$OUT/default.yaml'"
run "helm template (ci/all-on-values.yaml)" \
  bash -c "'$HELM' template relay '$CHART' --namespace payments --kube-version '$KUBE_VERSION' -f '$ALL_ON' > '$OUT/all-on.yaml'"
run "helm template (all-on + ci/podmonitor-values.yaml)" \
  bash -c "'$HELM' template relay '$CHART' --namespace payments --kube-version '$KUBE_VERSION' -f '$ALL_ON' -f '$PODMON' > '$OUT/podmonitor.yaml'"
run "helm template (ci/tables-values.yaml)" \
  bash -c "'$HELM' template relay '$CHART' --namespace payments --kube-version '$KUBE_VERSION' -f '$TABLES' > '$OUT/tables.yaml'"

# NOTES.txt is rendered only on install: a client-side dry run renders it without a cluster.
notes_render() {
  local out
  out="$("$HELM" install relay "$CHART" --dry-run=client --namespace payments "$@" 2>&1)" || { echo "$out"; return 1; }
  sed -n '/^NOTES:/,$p' <<<"$out"
  grep -q 'Operating guide' <<<"$out"
}
run "helm install --dry-run=client (NOTES.txt, all-on)" notes_render -f "$ALL_ON"

# must_refuse NAME PATTERN ARGS...: a render the chart must refuse, with PATTERN in its error.
must_refuse() {
  local pattern="$1"; shift
  local out
  if out="$("$HELM" template relay "$CHART" "$@" 2>&1)"; then
    echo "rendered, but should have been refused: helm template $*"
    return 1
  fi
  echo "$out"
  grep -Eq "$pattern" <<<"$out" || { echo "refused, but without /$pattern/"; return 1; }
}
run "refuses grace period <= RELAY_SHUTDOWN_TIMEOUT+5s" \
  must_refuse 'terminationGracePeriodSeconds \(40\) must be at least' \
  --set config.shutdownTimeout=36s --set terminationGracePeriodSeconds=40
run "refuses a config key that is no relay setting (schema)" \
  must_refuse 'workerId|additional' --set config.workerId=fixed
run "refuses a config key that is no relay setting (template)" \
  must_refuse 'config.bogus is not a setting of the relay' --set config.bogus=1 --skip-schema-validation
run "refuses invalid enum and duration values (schema)" \
  must_refuse 'logFormat|nakadiTimeout' --set config.logFormat=xml --set config.nakadiTimeout=soon
run "refuses tables together with single-table settings" \
  must_refuse 'config.tableName is set per table' -f "$TABLES" --set config.tableName=orders
run "refuses token secret together with a token file" \
  must_refuse 'not both' --set nakadiToken.existingSecret=tok --set config.nakadiTokenFile=/t
run "refuses ServiceMonitor together with PodMonitor" \
  must_refuse 'podMonitor.enabled or serviceMonitor.enabled, not both' --set serviceMonitor.enabled=true --set podMonitor.enabled=true
run "refuses an unknown Job setting (schema)" \
  must_refuse 'jobs|additional' --set jobs.snapshot.tabel=orders
# Indexes are those of ci/tables-values.yaml: table 2 is shop (routes and a fallback), 3 inventory
# (routes only). The nested case proves `not` and `all` are checked all the way down.
run "refuses a nested condition with two operators (schema)" \
  must_refuse "tables/2/route/1/when/all/1/not': additional properties 'equals' not allowed" -f "$TABLES" \
  --set-json 'tables[2].route[1].when={"all":[{"attribute":"pk","begins_with":"CUSTOMER#"},{"not":{"attribute":"deleted_at","exists":true,"equals":"x"}}]}'
run "refuses a route without event_type (schema)" \
  must_refuse "tables/2/route/1': missing property 'event_type'" -f "$TABLES" \
  --set-json 'tables[2].route[1]={"when":{"attribute":"pk","begins_with":"CUSTOMER#"}}'
run "refuses a table without event_type or routes (schema)" \
  must_refuse "tables/3': missing property 'event_type'" -f "$TABLES" --set-json 'tables[3].route=[]'

# ---- kubernetes-validate -------------------------------------------------------------------------
# Strict: unknown fields fail. Only the prometheus-operator kinds have no schema there (WARN);
# they are checked against the CRD schemas below, and their selectors, ports and rules after that.
k8s_validate() {
  local file="$1" out rc
  for v in $K8S_VERSIONS; do
    out="$("$VENV/bin/kubernetes-validate" --strict -k "$v" "$file" 2>&1)"; rc=$?
    echo "$out"
    [[ $rc -eq 0 ]] || return 1
    if grep -E '^(WARN|ERROR|FATAL)' <<<"$out" | grep -Ev 'for kind (ServiceMonitor|PodMonitor|PrometheusRule) with api version monitoring.coreos.com/v1 '; then
      return 1
    fi
  done
}
run_with "$OUT/default.yaml" "kubernetes-validate --strict -k $K8S_VERSIONS (defaults)" k8s_validate "$OUT/default.yaml"
run_with "$OUT/all-on.yaml" "kubernetes-validate --strict -k $K8S_VERSIONS (all-on)" k8s_validate "$OUT/all-on.yaml"
run_with "$OUT/podmonitor.yaml" "kubernetes-validate --strict -k $K8S_VERSIONS (podmonitor)" k8s_validate "$OUT/podmonitor.yaml"
run_with "$OUT/tables.yaml" "kubernetes-validate --strict -k $K8S_VERSIONS (tables)" k8s_validate "$OUT/tables.yaml"

# ---- prometheus-operator objects against the CRD schemas -----------------------------------------
run_with "$OUT/podmonitor.yaml" "ServiceMonitor, PodMonitor, PrometheusRule: CRD schemas" \
  "$PY" "$ROOT/scripts/validate-crs.py" "$OUT/all-on.yaml" "$OUT/podmonitor.yaml"
# The check fails on what the API server would refuse: a field the CRD does not have (pydantic
# alone would drop it silently) and a value its pattern refuses.
crd_check_must_fail() {
  local bad="$OUT/crd-must-fail"
  mkdir -p "$bad"
  sed 's/^\( *\)scrapeTimeout:/\1scrapeTimout:/' "$OUT/podmonitor.yaml" >"$bad/typo.yaml"
  sed 's/^\( *\)interval: 15s/\1interval: 15 seconds/' "$OUT/all-on.yaml" >"$bad/pattern.yaml"
  crd_check_fails "$bad/typo.yaml" 'podMetricsEndpoints[0].scrapeTimout: not a field of the PodMonitor schema' || return 1
  crd_check_fails "$bad/pattern.yaml" 'endpoints.0.interval: String should match pattern' || return 1
}
# crd_check_fails FILE TEXT: validate-crs.py must fail on FILE, naming TEXT.
crd_check_fails() {
  local log
  if log="$("$PY" "$ROOT/scripts/validate-crs.py" "$1" 2>&1)"; then
    echo "$log"; echo "passed, but should have failed on $1"; return 1
  fi
  echo "$log"
  grep -qF "$2" <<<"$log" || { echo "failed, but without naming $2"; return 1; }
}
run_with "$OUT/podmonitor.yaml" "the CRD check fails on a typo, a bad interval (self-test)" crd_check_must_fail

# ---- rendered manifests against the relay's own contract -----------------------------------------
check_manifests() {
  "$PY" - "$OUT/default.yaml" "$OUT/all-on.yaml" "$ROOT/src/config.rs" "$ALERTS" "$OUT/prometheusrule-spec.yaml" "$OUT/tables.yaml" "$TABLES" "$OUT/podmonitor.yaml" <<'PY'
import re, sys, tomllib, yaml

default_file, all_on_file, config_rs, alerts_file, rule_spec_out, tables_file, tables_values, podmonitor_file = sys.argv[1:]
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)

def load(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    return by_kind

def seconds(text):
    units = {"ms": 0.001, "msec": 0.001, "msecs": 0.001, "millis": 0.001, "s": 1, "sec": 1, "secs": 1,
             "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
             "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)\s*([a-z]+)", text))

# Every variable the relay reads, from its config parser.
read_vars = set(re.findall(r'"(RELAY_[A-Z0-9_]+)"', open(config_rs).read()))
check(len(read_vars) >= 20, f"found only {len(read_vars)} RELAY_* variables in src/config.rs")

def subset(sel, labels):
    return all(labels.get(k) == v for k, v in sel.items())

for name, path in (("defaults", default_file), ("all-on", all_on_file), ("podmonitor", podmonitor_file)):
    k = load(path)
    kinds_ok = True
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        if len(k.get(kind, [])) != 1:
            kinds_ok = False
            errors.append(f"{name}: expected one {kind}, got {len(k.get(kind, []))}")
    if not kinds_ok:
        continue
    dep, svc, pdb = k["Deployment"][0], k["Service"][0], k["PodDisruptionBudget"][0]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    accounts = {a["metadata"]["name"]: a for a in k.get("ServiceAccount", [])}
    if spec["serviceAccountName"] not in accounts:
        errors.append(f"{name}: pods do not use the chart's ServiceAccount")
        continue
    sa = accounts[spec["serviceAccountName"]]
    labels = pod["metadata"]["labels"]
    (c,) = spec["containers"]
    env = c.get("env", [])
    names = [e["name"] for e in env]
    values = {e["name"]: e.get("value") for e in env}
    check(len(names) == len(set(names)), f"{name}: duplicate env variables {sorted(n for n in names if names.count(n) > 1)}")
    for e in env:
        if e["name"].startswith("RELAY_") and "value" in e:
            check(e["value"] not in ("", None), f"{name}: {e['name']} rendered empty")
    wid = [e for e in env if e["name"] == "RELAY_WORKER_ID"]
    check(wid and wid[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
          f"{name}: RELAY_WORKER_ID must come from the pod name (downward API)")
    # security
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod seccomp RuntimeDefault")
    check(csc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities drop ALL")
    check(csc.get("runAsNonRoot") is True, f"{name}: container runAsNonRoot")
    check(spec.get("automountServiceAccountToken") is False, f"{name}: automountServiceAccountToken false")
    # probes, ports
    check(c["livenessProbe"]["httpGet"]["path"] == "/health/live", f"{name}: liveness probe path")
    check(c["readinessProbe"]["httpGet"]["path"] == "/health/ready", f"{name}: readiness probe path")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    addr = values.get("RELAY_HTTP_ADDR") or "0.0.0.0:8080"
    check(ports.get("http") == int(addr.rsplit(":", 1)[1]), f"{name}: containerPort {ports.get('http')} != port of RELAY_HTTP_ADDR {addr}")
    check(c["livenessProbe"]["httpGet"]["port"] in ports and c["readinessProbe"]["httpGet"]["port"] in ports,
          f"{name}: probes must use a named container port")
    check("limits" in c.get("resources", {}) and "requests" in c.get("resources", {}), f"{name}: resources")
    # graceful shutdown
    shutdown = seconds(values.get("RELAY_SHUTDOWN_TIMEOUT") or "20s")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(grace > shutdown, f"{name}: terminationGracePeriodSeconds {grace} <= RELAY_SHUTDOWN_TIMEOUT {shutdown}s")
    # selectors and ports agree
    check(subset(dep["spec"]["selector"]["matchLabels"], labels), f"{name}: Deployment selector does not match its pods")
    check(subset(svc["spec"]["selector"], labels), f"{name}: Service selector does not match the pods")
    check(subset(pdb["spec"]["selector"]["matchLabels"], labels), f"{name}: PDB selector does not match the pods")
    check(all(p["targetPort"] in ports for p in svc["spec"]["ports"]), f"{name}: Service targetPort not a container port")
    # The start-up probe must outlast the relay's start-up retries of AWS faults (60s).
    sp = c.get("startupProbe", {})
    check(sp.get("httpGet", {}).get("path") == "/health/live" and sp["httpGet"].get("port") in ports,
          f"{name}: startup probe /health/live on a named port")
    check(sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) >= 90,
          f"{name}: startup probe gives up before the relay's 60s of start-up retries (and the lease table's creation)")
    # Zone spread, selecting the relay's pods (a constraint without selector counts nothing).
    spread = spec.get("topologySpreadConstraints", [])
    zone = [t for t in spread if t.get("topologyKey") == "topology.kubernetes.io/zone"]
    check(zone and zone[0].get("whenUnsatisfiable") == "ScheduleAnyway", f"{name}: no zone spread with ScheduleAnyway")
    for t in spread:
        sel = t.get("labelSelector", {}).get("matchLabels", {})
        check(sel and subset(sel, labels), f"{name}: spread over {t.get('topologyKey')} does not select the relay's pods")
    # The one-off pods (Jobs, helm test) run the relay's binary as the relay does, and nothing
    # that selects relay pods (Service, PDB, Deployment, PodMonitor, spread) selects them.
    selectors = {"Deployment": dep["spec"]["selector"]["matchLabels"], "Service": svc["spec"]["selector"],
                 "PodDisruptionBudget": pdb["spec"]["selector"]["matchLabels"]}
    for pm in k.get("PodMonitor", []):
        selectors["PodMonitor"] = pm["spec"]["selector"]["matchLabels"]
    oneoff = [(f"Job {j['metadata']['name']}", j["spec"]["template"]) for j in k.get("Job", [])]
    oneoff += [(f"Pod {p['metadata']['name']}", p) for p in k.get("Pod", [])]
    for what, tmpl in oneoff:
        ospec, olabels = tmpl["spec"], tmpl["metadata"].get("labels", {})
        (oc,) = ospec["containers"]
        for sel_kind, sel in selectors.items():
            check(not subset(sel, olabels), f"{name}: {what}'s pod is selected by the {sel_kind}")
        check(olabels.get("app.kubernetes.io/instance") == labels["app.kubernetes.io/instance"], f"{name}: {what}: no instance label")
        check(oc["image"] == c["image"] and oc.get("imagePullPolicy") == c.get("imagePullPolicy"), f"{name}: {what}: not the relay's image")
        check(oc.get("env") == c.get("env"), f"{name}: {what}: not the relay's environment")
        check(oc.get("volumeMounts") == c.get("volumeMounts") and ospec.get("volumes") == spec.get("volumes"),
              f"{name}: {what}: not the relay's volumes and mounts")
        check(oc.get("securityContext") == csc and ospec.get("securityContext") == psc, f"{name}: {what}: not the relay's security context")
        check(ospec.get("automountServiceAccountToken") is False, f"{name}: {what}: automountServiceAccountToken false")
        for field in ("imagePullSecrets", "nodeSelector", "tolerations"):
            check(ospec.get(field) == spec.get(field), f"{name}: {what}: {field} differs from the relay's")
        check(ospec.get("restartPolicy") == "Never", f"{name}: {what}: restartPolicy Never")
        check(oc.get("resources", {}).get("limits", {}).get("memory"), f"{name}: {what}: no memory limit")
        check(ospec["serviceAccountName"] in accounts or not k.get("ServiceAccount"), f"{name}: {what}: runs as an account the chart did not create")
    jobs = {j["metadata"]["labels"].get("app.kubernetes.io/component"): j for j in k.get("Job", [])}
    for component, j in jobs.items():
        rules = j["spec"].get("podFailurePolicy", {}).get("rules", [])
        check(any(r["action"] == "FailJob" and r.get("onExitCodes", {}).get("values") == [2] for r in rules),
              f"{name}: Job {component}: a configuration error (exit 2) must fail it without retries")
    tests = [p for p in k.get("Pod", []) if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    check(len(tests) == 1 and tests[0]["spec"]["containers"][0].get("args") == ["check"]
          and tests[0]["spec"]["serviceAccountName"] == spec["serviceAccountName"],
          f"{name}: one helm test Pod running `check` as the relay's ServiceAccount")
    if name == "defaults":
        check(not jobs, "defaults: the Jobs must be opt-in")
    if name == "all-on":
        check(set(jobs) == {"snapshot", "redrive"}, f"all-on: Jobs {sorted(jobs)}, expected snapshot and redrive")
        args = lambda c: c["spec"]["template"]["spec"]["containers"][0].get("args")
        if "snapshot" in jobs:
            snap = jobs["snapshot"]["spec"]["template"]["spec"]
            check(args(jobs["snapshot"]) == ["snapshot", "--table", "orders", "--restart"], f"all-on: snapshot args {args(jobs['snapshot'])}")
            own = accounts.get(snap["serviceAccountName"], {})
            check(snap["serviceAccountName"] != spec["serviceAccountName"]
                  and own.get("metadata", {}).get("annotations", {}).get("eks.amazonaws.com/role-arn", "").endswith("-snapshot"),
                  "all-on: the snapshot Job runs as its own ServiceAccount with its own IRSA role")
        if "redrive" in jobs:
            check(args(jobs["redrive"]) == ["redrive", "--once"], f"all-on: redrive args {args(jobs['redrive'])}")
            check(jobs["redrive"]["spec"]["template"]["spec"]["serviceAccountName"] == spec["serviceAccountName"],
                  "all-on: the redrive Job runs as the relay's ServiceAccount")
    for sm in k.get("ServiceMonitor", []):
        check(subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]), f"{name}: ServiceMonitor selector does not match the Service")
        svc_ports = {p["name"] for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            check(ep.get("port") in svc_ports, f"{name}: ServiceMonitor port {ep.get('port')} not on the Service")
            check(ep.get("path") == "/metrics", f"{name}: ServiceMonitor path")
    for pm in k.get("PodMonitor", []):
        check(subset(pm["spec"]["selector"]["matchLabels"], labels), f"{name}: PodMonitor selector does not match the pods")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            check(ep.get("port") in ports, f"{name}: PodMonitor port {ep.get('port')} is no container port")
            check(ep.get("path") == "/metrics", f"{name}: PodMonitor path")
    if name == "podmonitor":
        check(len(k.get("PodMonitor", [])) == 1 and not k.get("ServiceMonitor"), "podmonitor: one PodMonitor and no ServiceMonitor expected")
    if name == "defaults":
        check(not k.get("ServiceMonitor") and not k.get("PodMonitor") and not k.get("PrometheusRule"),
              "defaults: ServiceMonitor/PodMonitor/PrometheusRule must be opt-in")
    if name == "all-on":
        # RELAY_TABLES_FILE replaces the single-table variables, so only the tables render sets it.
        missing = sorted(read_vars - set(names) - {"RELAY_TABLES_FILE"})
        check(not missing, f"all-on: RELAY_* variables the relay reads but the chart cannot set: {missing}")
        unknown = sorted(n for n in names if n.startswith("RELAY_") and n not in read_vars)
        check(not unknown, f"all-on: the chart sets RELAY_* variables the relay does not read: {unknown}")
        check(sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "").startswith("arn:aws:iam::"),
              "all-on: ServiceAccount lacks the IRSA role annotation")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        token = values.get("RELAY_NAKADI_TOKEN_FILE", "")
        check("nakadi-token" in mounts and token.startswith(mounts.get("nakadi-token", "?") + "/"),
              "all-on: RELAY_NAKADI_TOKEN_FILE does not point into the mounted token secret")
        check(all(m.get("readOnly") for m in c.get("volumeMounts", [])), "all-on: every mount read-only")
        check(k.get("ServiceMonitor") and k.get("PrometheusRule"), "all-on: ServiceMonitor and PrometheusRule expected")
        for pr in k.get("PrometheusRule", []):
            source = yaml.safe_load(open(alerts_file))
            got = pr["spec"]
            src_alerts = [r["alert"] for g in source["groups"] for r in g["rules"] if "alert" in r]
            got_alerts = [r["alert"] for g in got["groups"] for r in g["rules"] if "alert" in r]
            check(src_alerts == got_alerts, f"all-on: PrometheusRule alerts {got_alerts} != alerts.yaml {src_alerts}")
            src_exprs = [r["expr"] for g in source["groups"] for r in g["rules"]]
            got_exprs = [r["expr"] for g in got["groups"] for r in g["rules"]]
            check(src_exprs == got_exprs, "all-on: PrometheusRule expressions differ from alerts.yaml")
            for g in got["groups"]:
                for r in g["rules"]:
                    check(r.get("labels", {}).get("team") == "payments", f"all-on: ruleLabels not applied to {r.get('alert')}")
                    check(r.get("annotations", {}).get("runbook_url", "").startswith("https://"), f"all-on: runbookBaseUrl not applied to {r.get('alert')}")
            yaml.safe_dump(got, open(rule_spec_out, "w"), sort_keys=False)
    print(f"{name}: {len(k.get('Deployment', []))} Deployment, env {len(names)} variables, grace {grace}s > shutdown {shutdown}s, "
          f"Jobs {sorted(jobs)}, {len(tests)} helm test Pod, spread over {[t.get('topologyKey') for t in spread]}")

# The tables render: the file the relay reads is .Values.tables, mounted where the variable points.
k = load(tables_file)
(dep,) = k["Deployment"]
(cm,) = k.get("ConfigMap", [None])
(c,) = dep["spec"]["template"]["spec"]["containers"]
values = {e["name"]: e.get("value") for e in c.get("env", [])}
mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
tables_path = values.get("RELAY_TABLES_FILE") or ""
check(cm is not None, "tables: no ConfigMap rendered")
check("tables" in mounts and mounts["tables"].get("readOnly") and tables_path == mounts["tables"]["mountPath"] + "/tables.toml",
      f"tables: RELAY_TABLES_FILE {tables_path!r} is not the mounted tables.toml")
single = {"RELAY_TABLE_NAME", "RELAY_STREAM_ARN", "RELAY_EVENT_TYPE", "RELAY_DATA_TYPE"} & set(values)
check(not single, f"tables: single-table variables set too: {sorted(single)}")
if cm is not None:
    rendered = tomllib.loads(cm["data"]["tables.toml"])
    check(rendered == {"table": yaml.safe_load(open(tables_values))["tables"]},
          f"tables: tables.toml does not hold .Values.tables: {rendered}")
    # toToml writes routes as [[table.route]] and conditions as nested tables and arrays of
    # tables; the comparison above proves them only if the values nest every kind.
    routes = [r for t in rendered["table"] for r in t.get("route", [])]
    operators = set()
    def walk(cond):
        for op, arg in cond.items():
            operators.add(op)
            if op == "not":
                walk(arg)
            elif op == "all":
                for c in arg:
                    walk(c)
    for r in routes:
        walk(r.get("when", {}))
    every = {"attribute", "equals", "equals_number", "begins_with", "exists", "any_of", "not", "all"}
    check(operators == every, f"tables: {tables_values} should use every condition operator, missing {sorted(every - operators)}")
    check(any("when" not in r for r in routes), f"tables: {tables_values} should have a route without when")
    check(any("event_type" not in t and t.get("route") for t in rendered["table"]),
          f"tables: {tables_values} should have a table of routes only")
check("checksum/tables" in dep["spec"]["template"]["metadata"].get("annotations", {}),
      "tables: pods do not roll when the tables change")
print(f"tables: {len(rendered['table']) if cm else 0} tables, {len(routes) if cm else 0} routes in {tables_path}")

print(f"RELAY_* variables read by src/config.rs: {len(read_vars)}")
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
PY
}
run_with "$OUT/podmonitor.yaml" "rendered manifests: env 1:1, security, probes, Jobs, test" check_manifests

# ---- the relay reads the rendered tables file ----------------------------------------------------
# The schema cannot know everything the relay refuses (a route after one without `when`, a key
# attribute a route drops); the relay's `event-type` reads the file as the pods would, without AWS.
relay_reads_tables() {
  "${CARGO:-cargo}" build --locked --bin dynamodb-nakadi-relay || return 1
  "$PY" "$ROOT/scripts/check-tables-file.py" --render "$1" --relay "$RELAY_BIN" --out "$2"
}
run_with "$OUT/tables.yaml" "the relay reads the tables file: an event type per route" \
  relay_reads_tables "$OUT/tables.yaml" "$OUT/tables-file"
# A render the schema accepts and the relay refuses: the check must fail on it, or it proves nothing.
relay_check_must_fail() {
  local bad="$OUT/tables-file-must-fail" log
  mkdir -p "$bad"
  "$HELM" template relay "$CHART" --namespace payments -f "$TABLES" \
    --set-json 'tables[3].route[2]={"event_type":"inventory.never-reached"}' >"$bad/render.yaml" || return 1
  if log="$(relay_reads_tables "$bad/render.yaml" "$bad" 2>&1)"; then
    echo "$log"; echo "passed, but the relay should have refused a route after one without when"; return 1
  fi
  echo "$log"
  grep -Eq 'inventory.*route 3' <<<"$log" || { echo "failed, but without naming inventory's route 3"; return 1; }
}
run_with "$OUT/tables.yaml" "tables-file check fails when the relay refuses (self-test)" relay_check_must_fail

# ---- chart README --------------------------------------------------------------------------------
run "chart README current, every value documented" \
  "$PY" "$ROOT/scripts/chart-readme.py" --check --chart "$CHART"
# The check fails on a value without a comment (top level and nested) and on a stale README.
readme_check_must_fail() {
  local copy="$OUT/readme-must-fail" log
  readme_check_fails() {
    local what="$1"
    rm -rf "$copy" && cp -r "$CHART" "$copy"
    "$PY" - "$copy/values.yaml" "$what" <<'PY' || return 1
import sys
path, what = sys.argv[1:]
text = open(path).read()
if what == "undocumentedValue":
    text += "\nundocumentedValue: 1\n"
elif what == "config.leaseTable":
    text = text.replace("  # RELAY_LEASE_TABLE: lease table (required).\n", "", 1)
elif what == "not current":
    text = text.replace("# RELAY_LEASE_TABLE: lease table (required).", "# RELAY_LEASE_TABLE: the lease table (required).", 1)
open(path, "w").write(text)
PY
    if log="$("$PY" "$ROOT/scripts/chart-readme.py" --check --chart "$copy" 2>&1)"; then
      echo "$log"; echo "passed, but should have failed on: $what"; return 1
    fi
    echo "$log"
    grep -qF "$what" <<<"$log" || { echo "failed, but without naming $what"; return 1; }
  }
  readme_check_fails undocumentedValue || return 1
  readme_check_fails config.leaseTable || return 1
  readme_check_fails "not current" || return 1
  rm -rf "$copy"
}
run "the README check fails when undocumented (self-test)" readme_check_must_fail

# ---- alert rules ---------------------------------------------------------------------------------
run "promtool check rules files/alerts.yaml" promtool check rules "$ALERTS"
run_with "$OUT/prometheusrule-spec.yaml" "promtool check rules (PrometheusRule as rendered)" promtool check rules "$OUT/prometheusrule-spec.yaml"
run "promtool test rules ci/alerts_test.yaml" promtool test rules "$CHART/ci/alerts_test.yaml"

check_runbooks() {
  "$PY" - "$ALERTS" "$ROOT/docs/operating.md" <<'PY'
import re, sys, yaml
alerts_file, doc_file = sys.argv[1:]
doc = open(doc_file).read()
# GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'.
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+\s+(.*)$", doc, re.M)}
errors = []
rules = [r for g in yaml.safe_load(open(alerts_file))["groups"] for r in g["rules"] if "alert" in r]
for r in rules:
    a = r["alert"]
    url = r.get("annotations", {}).get("runbook_url", "")
    if url != f"docs/operating.md#{a.lower()}":
        errors.append(f"{a}: runbook_url {url!r} should be docs/operating.md#{a.lower()}")
    if a.lower() not in anchors:
        errors.append(f"{a}: docs/operating.md has no section '{a}'")
    if r.get("labels", {}).get("severity") not in ("warning", "critical"):
        errors.append(f"{a}: severity label must be warning or critical")
    for key in ("summary", "description"):
        if not r.get("annotations", {}).get(key):
            errors.append(f"{a}: annotation {key} missing")
for link in sorted(set(re.findall(r"\]\(#([^)]+)\)", doc))):
    if link not in anchors:
        errors.append(f"docs/operating.md links to #{link}, which is no heading")
print(f"{len(rules)} alerts, each with severity, summary, description and a runbook section")
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
PY
}
run "alerts: runbook_url -> docs/operating.md section" check_runbooks

# ---- dashboards and metric names -----------------------------------------------------------------
# Writes every dashboard query (Grafana variables substituted) into a rules file for promtool,
# and checks that every metric name used in dashboards/ and alerts.yaml is one src/metrics.rs
# exports (histograms: with _bucket, _sum, _count).
check_dashboards() {
  "$PY" - "$ROOT/dashboards" "$OUT/dashboard-queries.rules.yaml" <<'PY'
import glob, json, os, re, sys, yaml
dash_dir, rules_out = sys.argv[1:]
errors = []
groups = []
files = sorted(glob.glob(os.path.join(dash_dir, "*.json")))
if not files:
    errors.append("no dashboards/*.json")
uids = set()
for f in files:
    d = json.load(open(f))
    base = os.path.basename(f)
    if d.get("uid") in uids:
        errors.append(f"{base}: duplicate uid {d.get('uid')}")
    uids.add(d.get("uid"))
    tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    if tvars.get("datasource", {}).get("type") != "datasource" or tvars["datasource"].get("query") != "prometheus":
        errors.append(f"{base}: needs a Prometheus datasource template variable named 'datasource'")
    panels = []
    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))
    walk(d.get("panels", []))
    ids = [p["id"] for p in panels]
    if len(ids) != len(set(ids)):
        errors.append(f"{base}: duplicate panel ids")
    rules = []
    def add(expr, where):
        e = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "5m", expr)
        e = re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", e)
        rules.append({"record": f"dashboard:{re.sub(r'[^a-zA-Z0-9_]', '_', where)}", "expr": e})
    for p in panels:
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"{base}: panel {p['id']} '{p.get('title')}' does not use ${{datasource}}")
        if not p.get("targets"):
            errors.append(f"{base}: panel {p['id']} '{p.get('title')}' has no query")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"{base}: panel {p['id']} target {t.get('refId')} does not use ${{datasource}}")
            add(t["expr"], f"{base}_panel_{p['id']}_{t['refId']}")
    for name, v in tvars.items():
        if v.get("type") == "query":
            if v.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"{base}: variable {name} does not use ${{datasource}}")
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q.strip())
            if not m:
                errors.append(f"{base}: variable {name}: unsupported query {q!r}")
            else:
                add(m.group(1), f"{base}_var_{name}")
    groups.append({"name": base, "rules": rules})
    print(f"{base}: {len(panels)} panels, {len(rules)} queries")
yaml.safe_dump({"groups": groups}, open(rules_out, "w"), sort_keys=False)
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
PY
}
run "dashboards: JSON, \${datasource}, queries collected" check_dashboards
run_with "$OUT/dashboard-queries.rules.yaml" "promtool parses every dashboard query" promtool check rules "$OUT/dashboard-queries.rules.yaml"

check_metric_names() {
  "$PY" - "$ROOT/src/metrics.rs" "$ALERTS" "$OUT/dashboard-queries.rules.yaml" <<'PY'
import re, sys, yaml
metrics_rs, alerts_file, dash_rules = sys.argv[1:]
src = open(metrics_rs).read()
exported = set(re.findall(r'"(relay_[a-z0-9_]+)"', src))
histograms = set(re.findall(r'HistogramOpts::new\(\s*"(relay_[a-z0-9_]+)"', src))
allowed = set(exported)
for h in histograms:
    allowed |= {h + "_bucket", h + "_sum", h + "_count"}
# The names the product promises (DESIGN.md, issue 7): the exporter must have them all.
promised = """relay_records_read_total relay_events_published_total relay_publish_retries_total
relay_dlq_sent_total relay_dlq_write_failures_total relay_dlq_redrained_total
relay_lease_takeovers_total relay_leases_lost_total relay_checkpoints_total
relay_records_trimmed_total relay_aws_errors_total relay_publish_duration_seconds relay_dlq_depth
relay_leases_owned relay_workers relay_shards relay_stream_lag_seconds relay_build_info
relay_parking_depth relay_event_delay_seconds""".split()
errors = [f"src/metrics.rs does not define {m}" for m in promised if m not in exported]

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                                    # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                                   # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name in KEYWORDS:
            continue
        names.add(name)
    return names

used = {}
for path, label in ((alerts_file, "alerts.yaml"), (dash_rules, "dashboards")):
    for g in yaml.safe_load(open(path))["groups"]:
        for r in g["rules"]:
            if "__name__" in r["expr"]:
                errors.append(f"{r.get('alert') or r.get('record')}: select metrics by name, not by __name__, so they can be checked")
            for n in metric_names(r["expr"]):
                used.setdefault(n, set()).add(label)
for n in sorted(used):
    if n not in allowed:
        errors.append(f"{n} (used in {', '.join(sorted(used[n]))}) is not exported by src/metrics.rs")
print("metrics used:", ", ".join(sorted(used)))
unused = sorted(m for m in exported if m not in used and not any(u.startswith(m) for u in used))
if unused:
    print("exported but not on a dashboard or alert:", ", ".join(unused))
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
PY
}
run_with "$OUT/dashboard-queries.rules.yaml" "metric names in dashboards/ and alerts.yaml exported" check_metric_names

# ---- a freshly started relay exports every series the dashboards and alerts query ---------------
# The names above are only defined: a labelled series exists once its label value was used, so a
# panel or an alert can still query a series the relay does not export until its first event (or
# never). This starts the relay (debug build) against moto and the Nakadi test server, scrapes
# /metrics as soon as it is ready, and checks every selector of every query against that scrape.
FRESH="$OUT/fresh-relay"
fresh_relay_scrape() {
  "${CARGO:-cargo}" build --locked --bin dynamodb-nakadi-relay || return 1
  [[ -x "$ROOT/.venv/bin/python" ]] || { echo ".venv missing: run make venv (moto, boto3)"; return 1; }
  mkdir -p "$FRESH"
  "$ROOT/.venv/bin/python" - "$ROOT" "$RELAY_BIN" "$FRESH" <<'PY'
import json, os, signal, socket, subprocess, sys, time, urllib.request
import boto3

root, relay_bin, out = sys.argv[1:]
procs = []

def stop_all():
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

def start_server(name, script):
    p = subprocess.Popen([sys.executable, os.path.join(root, "tests/servers", script), "--port", "0"],
                         stdout=subprocess.PIPE, stderr=open(os.path.join(out, f"{name}.log"), "w"), text=True)
    procs.append(p)
    line = p.stdout.readline()
    if not line.startswith("LISTENING "):
        raise SystemExit(f"{name} did not start (see {out}/{name}.log)")
    return int(line.split()[1])

try:
    moto = start_server("moto", "moto_server.py")
    nakadi = start_server("nakadi", "nakadi_server.py")
    endpoint = f"http://127.0.0.1:{moto}"
    session = boto3.Session(region_name="eu-central-1", aws_access_key_id="check",
                            aws_secret_access_key="check")
    ddb = session.client("dynamodb", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)
    ddb.create_table(TableName="orders", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    # A DLQ with its parking queue, as docs/operating.md sets them up.
    parking = sqs.create_queue(QueueName="orders-relay-parking")["QueueUrl"]
    parking_arn = sqs.get_queue_attributes(QueueUrl=parking, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    dlq = sqs.create_queue(QueueName="orders-relay-dlq", Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": parking_arn, "maxReceiveCount": "10"})})["QueueUrl"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http = s.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", ""), "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "eu-central-1",
           "AWS_ACCESS_KEY_ID": "check", "AWS_SECRET_ACCESS_KEY": "check",
           "RELAY_TABLE_NAME": "orders", "RELAY_LEASE_TABLE": "orders-relay-leases",
           "RELAY_CREATE_LEASE_TABLE": "true", "RELAY_NAKADI_URL": f"http://127.0.0.1:{nakadi}",
           "RELAY_EVENT_TYPE": "payments.order-changed", "RELAY_DLQ_URL": dlq,
           "RELAY_HTTP_ADDR": f"127.0.0.1:{http}", "RELAY_WORKER_ID": "check-deploy"}
    relay = subprocess.Popen([relay_bin], env=env, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(out, "relay.log"), "w"))
    procs.append(relay)
    base = f"http://127.0.0.1:{http}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/health/ready", timeout=2).read()
            break
        except OSError:
            if relay.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the relay did not become ready (see {out}/relay.log)")
            time.sleep(0.2)
    scrape = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    open(os.path.join(out, "metrics.txt"), "w").write(scrape)
    print(f"{len(scrape.splitlines())} lines scraped from {base}/metrics once the relay was ready")
finally:
    stop_all()
PY
}
run "a freshly started relay (moto, Nakadi test server): scrape" fresh_relay_scrape
run_with "$FRESH/metrics.txt" "every dashboard and alert selector selects a series of it" \
  "$PY" "$ROOT/scripts/check-series.py" --scrape "$FRESH/metrics.txt" --rules "$ALERTS" \
  --dashboard "$ROOT"/dashboards/*.json

# The check fails on a query of a series the relay does not export: a metric it never defines, a
# label value it never uses, and a series that would appear only with its first event.
series_check_fails() {
  local what="$1"; shift
  local log
  if log="$("$PY" "$ROOT/scripts/check-series.py" "$@" 2>&1)"; then
    echo "$log"; echo "passed, but should have failed on $what"; return 1
  fi
  echo "$log"
  grep -qF "$what" <<<"$log" || { echo "failed, but without naming $what"; return 1; }
}
series_check_must_fail() {
  local bad="$FRESH/must-fail"
  mkdir -p "$bad"
  "$PY" - "$ROOT/dashboards/dynamodb-nakadi-relay.json" "$ALERTS" "$bad" <<'PY' || return 1
import json, sys, yaml
dash_file, alerts_file, bad = sys.argv[1:]
dash = json.load(open(dash_file))
panel = next(p for p in dash["panels"] if p.get("targets"))
panel["targets"].append({"refId": "Z", "datasource": {"type": "prometheus", "uid": "${datasource}"},
    "expr": 'sum(rate(relay_does_not_exist_total{namespace=~"$namespace", job=~"$job"}[$__rate_interval]))'})
json.dump(dash, open(f"{bad}/dashboard.json", "w"))
rules = yaml.safe_load(open(alerts_file))
rules["groups"][0]["rules"].append(
    {"alert": "NoSuchState", "expr": 'max by (namespace, job) (relay_dlq_depth{state="lost"}) > 0'})
yaml.safe_dump(rules, open(f"{bad}/alerts.yaml", "w"))
PY
  grep -v '^relay_aws_errors_total{' "$FRESH/metrics.txt" >"$bad/metrics-without-aws-errors.txt"
  series_check_fails relay_does_not_exist_total \
    --scrape "$FRESH/metrics.txt" --dashboard "$bad/dashboard.json" || return 1
  series_check_fails 'relay_dlq_depth{state="lost"}' \
    --scrape "$FRESH/metrics.txt" --rules "$bad/alerts.yaml" || return 1
  series_check_fails relay_aws_errors_total \
    --scrape "$bad/metrics-without-aws-errors.txt" --dashboard "$ROOT"/dashboards/*.json || return 1
}
run_with "$FRESH/metrics.txt" "the selector check fails on unexported series (self-test)" series_check_must_fail

# ---- CloudFormation ------------------------------------------------------------------------------
# cfn-lint: the resource schemas of every AWS resource type, intrinsic functions, references.
run "cfn-lint cloudformation/*.yaml" "$VENV/bin/cfn-lint" cloudformation/*.yaml
# What the relay itself needs of these resources. The IAM policy is checked against the
# relay's source by tests/it/security.rs (cargo test), not here.
check_cloudformation() {
  "$PY" "$ROOT/scripts/cfn-to-json.py" cloudformation/relay.yaml >"$OUT/relay-template.json" || return 1
  "$PY" - "$OUT/relay-template.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
r = t["Resources"]
errors = []
def check(cond, msg):
    if not cond:
        errors.append(msg)
def of_type(kind):
    return {n: v["Properties"] for n, v in r.items() if v["Type"] == kind}
tables = of_type("AWS::DynamoDB::Table")
check(len(tables) == 1, f"one lease table, got {sorted(tables)}")
for n, p in tables.items():
    check(p.get("KeySchema") == [{"AttributeName": "lease_key", "KeyType": "HASH"}], f"{n}: hash key lease_key only")
    check({"AttributeName": "lease_key", "AttributeType": "S"} in p.get("AttributeDefinitions", []), f"{n}: lease_key is a string")
    check(p.get("BillingMode") == "PAY_PER_REQUEST", f"{n}: on-demand billing")
queues = of_type("AWS::SQS::Queue")
dlq = [n for n, p in queues.items() if "RedrivePolicy" in p]
check(len(dlq) == 1, f"one queue with a redrive policy (the DLQ), got {dlq}")
for n in dlq:
    target = queues[n]["RedrivePolicy"]["deadLetterTargetArn"]
    parking = target.get("Fn::GetAtt", [None])[0]
    check(parking in queues and parking != n, f"{n}: redrive policy to another queue of the template, got {target}")
    check(not queues[n].get("FifoQueue"), f"{n}: the relay sends to a standard queue")
    if parking in queues:
        check(queues[parking].get("MessageRetentionPeriod", 345600) >= queues[n].get("MessageRetentionPeriod", 345600),
              "the parking queue keeps messages at least as long as the DLQ (a moved message keeps its enqueue time)")
        alarms = [p for p in of_type("AWS::CloudWatch::Alarm").values()
                  if p.get("Namespace") == "AWS/SQS" and any(d.get("Value") == {"Fn::GetAtt": [parking, "QueueName"]} for d in p.get("Dimensions", []))]
        check(alarms and alarms[0]["MetricName"] == "ApproximateNumberOfMessagesVisible"
              and alarms[0]["ComparisonOperator"] == "GreaterThanThreshold" and alarms[0]["Threshold"] == 0,
              "an alarm on the parking queue's visible messages > 0")
roles = of_type("AWS::IAM::Role")
for n, p in roles.items():
    trust = p["AssumeRolePolicyDocument"]
    text = trust.get("Fn::Sub", "") if isinstance(trust, dict) else ""
    check("sts:AssumeRoleWithWebIdentity" in text and ":sub" in text and "system:serviceaccount:" in text,
          f"{n}: IRSA trust (AssumeRoleWithWebIdentity, restricted to one ServiceAccount)")
print(f"lease table {sorted(tables)}, queues {sorted(queues)}, roles {sorted(roles)}")
for e in errors:
    print("ERROR", e)
sys.exit(1 if errors else 0)
PY
}
run "cloudformation: lease table, DLQ -> parking, alarm, IRSA" check_cloudformation

# ---- Dockerfile ----------------------------------------------------------------------------------
run "hadolint Dockerfile" "$VENV/bin/hadolint" Dockerfile
dockerfile_pins() {
  local bad
  bad="$(grep -E '^FROM ' Dockerfile | grep -Ev '^FROM [^ ]+:[^ @]+@sha256:[0-9a-f]{64}( AS [a-z-]+)?$')"
  [[ -z "$bad" ]] || { echo "base image not pinned by tag and digest: $bad"; return 1; }
  grep -Eq '^USER [0-9]+(:[0-9]+)?$' Dockerfile || { echo "no numeric non-root USER"; return 1; }
  grep -Eq '^ENTRYPOINT \[' Dockerfile || { echo "ENTRYPOINT not in exec form"; return 1; }
  grep -Eq 'cargo build --release --locked' Dockerfile || { echo "no cargo build --release --locked"; return 1; }
  [[ -f .dockerignore ]] || { echo ".dockerignore missing"; return 1; }
}
run "Dockerfile: digests, numeric USER, exec ENTRYPOINT" dockerfile_pins

echo
# What passing here does not prove, so that nobody reads more into it.
echo "check-deploy: not checked here: the chart installed into a cluster (whether the Jobs and the"
echo "  helm test Pod run, and what \`check\` says there); the prometheus-operator objects against"
echo "  the CRDs of the operator you run (checked against v0.80.1's, from PyPI); the CloudFormation"
echo "  template deployed (cfn-lint checks it against the resource schemas; its IAM policy is tested"
echo "  against the relay's source by cargo test, tests/it/security.rs)"
echo "check-deploy: took $((SECONDS - start))s; renders and logs in ${OUT#"$ROOT"/}/"
if ((failed)); then
  printf 'check-deploy: FAILED: %s\n' "${failures[@]}"
fi
echo "check-deploy: $passed passed, $failed failed"
((failed == 0))
