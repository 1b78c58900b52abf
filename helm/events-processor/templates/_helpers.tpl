{{/*
Helpers of the events-processor chart.
*/}}

{{/* Chart name, overridable. */}}
{{- define "evp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every resource: <release>-<chart>, or the release name when it
already contains the chart name. */}}
{{- define "evp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the DLQ worker's resources (52 characters leave room for suffixes). */}}
{{- define "evp.dlqWorkerName" -}}
{{- printf "%s-dlq-worker" (include "evp.fullname" . | trunc 52 | trimSuffix "-") -}}
{{- end -}}

{{- define "evp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "evp.labels" -}}
helm.sh/chart: {{ include "evp.chart" . }}
app.kubernetes.io/name: {{ include "evp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: events-processor
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "events-processor"). The
component is also the Prometheus job name (ServiceMonitor jobLabel). */}}
{{- define "evp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "evp.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "evp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "evp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "evp.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with POSTGRES_DSN and the NATS credentials. */}}
{{- define "evp.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else -}}
{{- include "evp.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Secret data (chart-managed Secret only); fails when the DSN is missing. */}}
{{- define "evp.secretData" -}}
POSTGRES_DSN: {{ required "secret.postgresDsn is required (or set secret.existingSecret)" .Values.secret.postgresDsn | b64enc | quote }}
{{- with .Values.secret.natsUser }}
NATS_USER: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secret.natsPassword }}
NATS_PASSWORD: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secret.natsToken }}
NATS_TOKEN: {{ . | b64enc | quote }}
{{- end }}
{{- end -}}

{{/* The settings of .Values.config as a map of strings, null and "" left out. Integers
are printed as integers (Helm reads numbers as float64, which would print 1e+06). */}}
{{- define "evp.configMap" -}}
{{- $out := dict -}}
{{- range $key, $value := .Values.config -}}
{{- if not (kindIs "invalid" $value) -}}
{{- if kindIs "float64" $value -}}
{{- $_ := set $out $key (int64 $value | toString) -}}
{{- else if ne (toString $value) "" -}}
{{- $_ := set $out $key (toString $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Volume of the NATS .creds file, when configured. */}}
{{- define "evp.natsCredsVolume" -}}
{{- if .Values.natsCreds.secretName -}}
- name: nats-creds
  secret:
    secretName: {{ .Values.natsCreds.secretName }}
    defaultMode: 0440
    items:
      - key: {{ .Values.natsCreds.key }}
        path: {{ .Values.natsCreds.key }}
{{- end }}
{{- end -}}

{{- define "evp.natsCredsMount" -}}
{{- if .Values.natsCreds.secretName -}}
- name: nats-creds
  mountPath: /var/run/secrets/nats
  readOnly: true
{{- end }}
{{- end -}}

{{- define "evp.natsCredsEnv" -}}
{{- if .Values.natsCreds.secretName -}}
- name: NATS_CREDS_FILE
  value: {{ printf "/var/run/secrets/nats/%s" .Values.natsCreds.key | quote }}
{{- end }}
{{- end -}}
