{{/* Chart name, shortened to Kubernetes' 63-character label limit. */}}
{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already contains the chart's. */}}
{{- define "relay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: fixed for the life of a release (a Deployment's selector is immutable). */}}
{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "relay.labels" -}}
helm.sh/chart: {{ include "relay.chart" . }}
{{ include "relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relay.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The port the relay listens on: the port of config.httpAddr, else the relay's default 8080. */}}
{{- define "relay.httpPort" -}}
{{- with .Values.config.httpAddr }}
{{- regexReplaceAll "^.*:" (toString .) "" | int }}
{{- else }}
{{- 8080 }}
{{- end }}
{{- end }}

{{/*
Seconds of a humantime duration such as 20s, 1m30s, 1m 30s or 500ms (the units the schema
allows), rounded up. Used to check terminationGracePeriodSeconds against the longest shutdown.
*/}}
{{- define "relay.durationSeconds" -}}
{{- $ms := 0 }}
{{- range (regexFindAll "[0-9]+ *[a-z]+" (toString .) -1) }}
{{- $n := regexFind "^[0-9]+" . | int }}
{{- $unit := regexReplaceAll "^[0-9]+ *" . "" }}
{{- if has $unit (list "ms" "msec" "msecs" "millis") }}{{ $ms = add $ms $n }}
{{- else if has $unit (list "s" "sec" "secs" "second" "seconds") }}{{ $ms = add $ms (mul $n 1000) }}
{{- else if has $unit (list "m" "min" "mins" "minute" "minutes") }}{{ $ms = add $ms (mul $n 60000) }}
{{- else if has $unit (list "h" "hr" "hrs" "hour" "hours") }}{{ $ms = add $ms (mul $n 3600000) }}
{{- else }}{{ fail (printf "unsupported duration unit %q in %q" $unit (toString $)) }}
{{- end }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/*
config.<key> -> RELAY_* variable. The only place the mapping lives; keys not in it are rejected
(by values.schema.json, and here again for installs that skip schema validation).
*/}}
{{- define "relay.configEnv" -}}
tableName: RELAY_TABLE_NAME
streamArn: RELAY_STREAM_ARN
leaseTable: RELAY_LEASE_TABLE
createLeaseTable: RELAY_CREATE_LEASE_TABLE
nakadiUrl: RELAY_NAKADI_URL
eventType: RELAY_EVENT_TYPE
dataType: RELAY_DATA_TYPE
nakadiTokenFile: RELAY_NAKADI_TOKEN_FILE
nakadiTokenName: RELAY_NAKADI_TOKEN_NAME
dlqUrl: RELAY_DLQ_URL
dlqS3Bucket: RELAY_DLQ_S3_BUCKET
initialPosition: RELAY_INITIAL_POSITION
onPublishFailure: RELAY_ON_PUBLISH_FAILURE
compactionKey: RELAY_COMPACTION_KEY
ttlDeletes: RELAY_TTL_DELETES
eventNames: RELAY_EVENT_NAMES
dropAttributes: RELAY_DROP_ATTRIBUTES
httpAddr: RELAY_HTTP_ADDR
dlqRedrainInterval: RELAY_DLQ_REDRAIN_INTERVAL
dlqRedrainRate: RELAY_DLQ_REDRAIN_RATE
logFormat: RELAY_LOG_FORMAT
nakadiBatchSize: RELAY_NAKADI_BATCH_SIZE
nakadiBatchBytes: RELAY_NAKADI_BATCH_BYTES
nakadiGzipMinBytes: RELAY_NAKADI_GZIP_MIN_BYTES
nakadiTimeout: RELAY_NAKADI_TIMEOUT
nakadiMaxAttempts: RELAY_NAKADI_MAX_ATTEMPTS
nakadiMaxRetryTime: RELAY_NAKADI_MAX_RETRY_TIME
leaseDuration: RELAY_LEASE_DURATION
leaseRenewInterval: RELAY_LEASE_RENEW_INTERVAL
leaseCallTimeout: RELAY_LEASE_CALL_TIMEOUT
shardSyncInterval: RELAY_SHARD_SYNC_INTERVAL
idlePollInterval: RELAY_IDLE_POLL_INTERVAL
checkpointInterval: RELAY_CHECKPOINT_INTERVAL
shutdownTimeout: RELAY_SHUTDOWN_TIMEOUT
workerThreads: RELAY_WORKER_THREADS
snapshotSegments: RELAY_SNAPSHOT_SEGMENTS
snapshotPageSize: RELAY_SNAPSHOT_PAGE_SIZE
snapshotReadCapacity: RELAY_SNAPSHOT_READ_CAPACITY
{{- end }}

{{/*
The tables file: .Values.tables as TOML [[table]] entries. toToml writes routes as
[[table.route]] and each `when` as nested tables ([table.route.when], [[table.route.when.all]])
where a person would write inline ones; TOML reads both alike, and check-deploy has the relay
read the result.
*/}}
{{- define "relay.tablesToml" -}}
{{- toToml (dict "table" .Values.tables) }}
{{- end }}

{{/* Where the tables file is mounted. */}}
{{- define "relay.tablesDir" -}}
/etc/dynamodb-nakadi-relay
{{- end }}

{{/* A value as the string an environment variable holds; whole numbers never in e-notation. */}}
{{- define "relay.envValue" -}}
{{- if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* The env list of the relay container. */}}
{{- define "relay.env" -}}
{{- $mapping := include "relay.configEnv" . | fromYaml }}
{{- range $key, $_ := .Values.config }}
{{- if not (hasKey $mapping $key) }}
{{- fail (printf "config.%s is not a setting of the relay (known: %s)" $key (keys $mapping | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- if .Values.tables }}
{{- range $key := list "tableName" "streamArn" "eventType" "dataType" "compactionKey" "ttlDeletes" "eventNames" "dropAttributes" }}
{{- $value := index $.Values.config $key }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{- fail (printf "config.%s is set per table when tables is set; leave it empty" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- $tokenMounted := ne (toString .Values.nakadiToken.existingSecret) "" }}
{{- if and $tokenMounted .Values.config.nakadiTokenFile }}
{{- fail "set either nakadiToken.existingSecret (the chart mounts it and sets RELAY_NAKADI_TOKEN_FILE) or config.nakadiTokenFile, not both" }}
{{- end }}
- name: RELAY_WORKER_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- range $key := keys $mapping | sortAlpha }}
{{- $value := index $.Values.config $key }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
- name: {{ index $mapping $key }}
  value: {{ include "relay.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- if $tokenMounted }}
- name: RELAY_NAKADI_TOKEN_FILE
  value: {{ printf "%s/%s" (trimSuffix "/" .Values.nakadiToken.mountPath) .Values.nakadiToken.fileName | quote }}
{{- end }}
{{- if .Values.tables }}
- name: RELAY_TABLES_FILE
  value: {{ printf "%s/tables.toml" (include "relay.tablesDir" .) | quote }}
{{- end }}
{{- with .Values.nakadiToken.credentialsDir }}
- name: CREDENTIALS_DIR
  value: {{ . | quote }}
{{- end }}
{{- with .Values.aws.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The pieces every pod of the release shares: the relay's Deployment, the snapshot and re-drive
Jobs and the helm test Pod all run the relay's binary with the same settings, so they take them
from here. Each define is called with the root context.
*/}}

{{/* Pod-level fields: identity (service account), hardening, pull secrets and where it may run. */}}
{{- define "relay.podCommon" -}}
# The relay never calls the Kubernetes API. IRSA mounts its own projected token.
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container-level fields: image, hardening, settings and their mounts (no command, ports, probes). */}}
{{- define "relay.containerCommon" -}}
image: {{ include "relay.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
env:
  {{- include "relay.env" . | trim | nindent 2 }}
{{- if or .Values.nakadiToken.existingSecret .Values.tables .Values.extraVolumeMounts }}
volumeMounts:
  {{- if .Values.nakadiToken.existingSecret }}
  # A directory mount, not subPath: Kubernetes updates it when the secret rotates.
  - name: nakadi-token
    mountPath: {{ .Values.nakadiToken.mountPath }}
    readOnly: true
  {{- end }}
  {{- if .Values.tables }}
  - name: tables
    mountPath: {{ include "relay.tablesDir" . }}
    readOnly: true
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The volumes behind relay.containerCommon's mounts. */}}
{{- define "relay.volumes" -}}
{{- if or .Values.nakadiToken.existingSecret .Values.tables .Values.extraVolumes }}
volumes:
  {{- if .Values.nakadiToken.existingSecret }}
  - name: nakadi-token
    secret:
      secretName: {{ .Values.nakadiToken.existingSecret }}
      defaultMode: 0440
      items:
        - key: {{ .Values.nakadiToken.secretKey }}
          path: {{ .Values.nakadiToken.fileName }}
  {{- end }}
  {{- if .Values.tables }}
  - name: tables
    configMap:
      name: {{ include "relay.fullname" . }}-tables
  {{- end }}
  {{- with .Values.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
Labels of the pods that run a one-off command (component: snapshot, redrive, check). They
leave out app.kubernetes.io/name on purpose: the Service, the PodDisruptionBudget, the PodMonitor
and the zone spread select the relay's pods by name and instance, and a Job's pod must not be
scraped, counted as a relay replica or routed to. Called with (dict "root" $ "component" NAME).
*/}}
{{- define "relay.componentLabels" -}}
helm.sh/chart: {{ include "relay.chart" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: {{ include "relay.name" .root }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* The relay's resources unless a one-off pod has its own. Called with (dict "root" $ "resources" MAP). */}}
{{- define "relay.componentResources" -}}
{{- toYaml (.resources | default .root.Values.resources) }}
{{- end }}

{{/* The snapshot Job's service account: its own when jobs.snapshot.serviceAccount says so, else the relay's. */}}
{{- define "relay.snapshotServiceAccountName" -}}
{{- with .Values.jobs.snapshot.serviceAccount }}
{{- if .create }}
{{- default (printf "%s-snapshot" (include "relay.fullname" $ | trunc 54 | trimSuffix "-")) .name }}
{{- else }}
{{- default (include "relay.serviceAccountName" $) .name }}
{{- end }}
{{- end }}
{{- end }}

{{/* A Job's name: <fullname>-<component>-<revision>. Called with (dict "root" $ "component" NAME). */}}
{{- define "relay.jobName" -}}
{{- printf "%s-%s-%d" (include "relay.fullname" .root | trunc 42 | trimSuffix "-") .component (int .root.Release.Revision) }}
{{- end }}

{{/*
A Job running one relay command. Called with (dict "root" $ "component" NAME "job" VALUES
"args" LIST "serviceAccountName" NAME). Its name carries the release revision: a Job's pod
template cannot be changed, so every upgrade that keeps the Job on creates a new one (and Helm
deletes the previous revision's).
*/}}
{{- define "relay.job" -}}
{{- $root := .root }}
{{- $job := .job }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "relay.jobName" . }}
  labels:
    {{- include "relay.componentLabels" . | nindent 4 }}
spec:
  backoffLimit: {{ $job.backoffLimit }}
  {{- with $job.activeDeadlineSeconds }}
  activeDeadlineSeconds: {{ . }}
  {{- end }}
  {{- if not (kindIs "invalid" $job.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
  {{- end }}
  podFailurePolicy:
    rules:
      # Exit code 2 is a configuration error: another try fails the same way.
      - action: FailJob
        onExitCodes:
          containerName: relay
          operator: In
          values: [2]
      # An evicted or preempted pod is tried again without counting against backoffLimit.
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
  template:
    metadata:
      {{- with $job.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      labels:
        {{- include "relay.componentLabels" . | nindent 8 }}
    spec:
      serviceAccountName: {{ .serviceAccountName }}
      {{- include "relay.podCommon" $root | nindent 6 }}
      # podFailurePolicy needs Never; a retry is a new pod.
      restartPolicy: Never
      # SIGTERM stops the command at its next safe point (a snapshot saves its progress).
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      containers:
        - name: relay
          {{- include "relay.containerCommon" $root | nindent 10 }}
          args:
            {{- toYaml .args | nindent 12 }}
          resources:
            {{- include "relay.componentResources" (dict "root" $root "resources" $job.resources) | nindent 12 }}
      {{- with include "relay.volumes" $root | trim }}
      {{- . | nindent 6 }}
      {{- end }}
{{- end }}
