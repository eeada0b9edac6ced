{{/* Names and labels. */}}
{{- define "alert-responder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "alert-responder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "alert-responder.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "alert-responder.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "alert-responder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alert-responder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "alert-responder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "alert-responder.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "alert-responder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "alert-responder.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the daemon reads rules: the image's own, then a chart-managed or existing ConfigMap. */}}
{{- define "alert-responder.ruleDirs" -}}
{{- $dirs := list }}
{{- if or .Values.rules.includeImageRules (not (or .Values.rules.existingConfigMap .Values.rules.files)) }}
{{- $dirs = append $dirs "/app/rules" }}
{{- end }}
{{- if or .Values.rules.existingConfigMap .Values.rules.files }}
{{- $dirs = append $dirs "/etc/responder/rules" }}
{{- end }}
{{- toJson $dirs }}
{{- end }}

{{- define "alert-responder.usesSqlite" -}}
{{- if hasPrefix "sqlite:" (toString (dig "store" "url" "sqlite:///responder.db" .Values.config)) }}true{{ end }}
{{- end }}

{{/*
The config file: the user's `config` with the keys the chart owns (listen address, drain time, rule
directory) set from the chart's values, so the pod spec and the daemon cannot disagree.
*/}}
{{- define "alert-responder.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $server := mustMergeOverwrite (deepCopy (default (dict) $config.server)) (dict "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) "drain_seconds" (printf "%ds" (int .Values.drainSeconds))) }}
{{- $rules := mustMergeOverwrite (deepCopy (default (dict) $config.rules)) (dict "dirs" (include "alert-responder.ruleDirs" . | fromJsonArray)) }}
{{- $_ := set $config "server" $server }}
{{- $_ = set $config "rules" $rules }}
{{- toYaml $config }}
{{- end }}

{{/* Refuse value combinations that would run but lose work or leak secrets. */}}
{{- define "alert-responder.validate" -}}
{{- $storeUrl := toString (dig "store" "url" "sqlite:///responder.db" .Values.config) }}
{{- if gt (int .Values.replicas) 1 }}
{{- if not (or (hasPrefix "postgresql://" $storeUrl) (hasPrefix "postgres://" $storeUrl)) }}
{{- fail (printf "replicas is %d but config.store.url is %q: several replicas need a PostgreSQL store (postgresql://...); SQLite serves one process only" (int .Values.replicas) $storeUrl) }}
{{- end }}
{{- if not .Values.redis.enabled }}
{{- fail (printf "replicas is %d but redis.enabled is false: several replicas need Redis for cross-replica locks (set redis.enabled and redis.secretKey)" (int .Values.replicas)) }}
{{- end }}
{{- end }}
{{- if regexMatch "^[a-z]+://[^/@]*:[^/@]*@" $storeUrl }}
{{- fail "config.store.url contains a password, which would land in a ConfigMap: remove it and set PGPASSWORD through secretEnv" }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) (int .Values.drainSeconds)) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + drainSeconds (%d): the pod would be killed while jobs drain" (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) (int .Values.drainSeconds))) }}
{{- end }}
{{- if and .Values.mitigations.enabled (not .Values.mitigations.namespaces) }}
{{- fail "mitigations.enabled is true but mitigations.namespaces is empty: list the namespaces the responder may change" }}
{{- end }}
{{- range $env, $ref := .Values.secretEnv }}
{{- if and (not (kindIs "map" $ref)) (not $.Values.existingSecret) }}
{{- fail (printf "secretEnv.%s names key %q but existingSecret is empty" $env $ref) }}
{{- end }}
{{- end }}
{{- if and .Values.redis.enabled (not (or .Values.redis.secretName .Values.existingSecret)) }}
{{- fail "redis.enabled is true but neither redis.secretName nor existingSecret names the Secret holding the Redis URL" }}
{{- end }}
{{- end }}

{{/* The rules the collectors need to read namespaced objects (pods, logs, events, workloads, metrics). */}}
{{- define "alert-responder.readNamespacedRules" -}}
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [list]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [get, list]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list]
- apiGroups: [metrics.k8s.io]
  resources: [pods]
  verbs: [get, list]
{{- end }}

{{- define "alert-responder.readClusterRules" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list]
- apiGroups: [metrics.k8s.io]
  resources: [nodes]
  verbs: [get, list]
{{- end }}

{{/* The only writes the mitigations make: restart/roll back workloads, scale deployments, delete pods. */}}
{{- define "alert-responder.mitigationRules" -}}
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [patch, update]
- apiGroups: [""]
  resources: [pods]
  verbs: [delete]
{{- end }}
