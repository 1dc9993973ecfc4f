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
snapshotSegments: RELAY_SNAPSHOT_SEGMENTS
snapshotPageSize: RELAY_SNAPSHOT_PAGE_SIZE
snapshotReadCapacity: RELAY_SNAPSHOT_READ_CAPACITY
{{- end }}

{{/* The tables file: .Values.tables as TOML [[table]] entries. */}}
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
