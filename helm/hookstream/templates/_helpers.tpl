{{/* Names */}}
{{- define "hookstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookstream.fullname" -}}
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

{{- define "hookstream.gateway.fullname" -}}
{{- printf "%s-gateway" (include "hookstream.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookstream.worker.fullname" -}}
{{- printf "%s-worker" (include "hookstream.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The headless Service that gives every worker pod a stable DNS name (StatefulSet serviceName). */}}
{{- define "hookstream.worker.headless" -}}
{{- printf "%s-worker-headless" (include "hookstream.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hookstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels */}}
{{- define "hookstream.labels" -}}
helm.sh/chart: {{ include "hookstream.chart" . }}
{{ include "hookstream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hookstream
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "hookstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hookstream.gateway.selectorLabels" -}}
{{ include "hookstream.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "hookstream.worker.selectorLabels" -}}
{{ include "hookstream.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "hookstream.gateway.labels" -}}
{{ include "hookstream.labels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "hookstream.worker.labels" -}}
{{ include "hookstream.labels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "hookstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hookstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hookstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret with STRIPE_WEBHOOK_SECRETS: existingSecret, else <fullname>-stripe (created by the chart when
stripe.webhookSecrets is given, by the user otherwise). */}}
{{- define "hookstream.stripe.secretName" -}}
{{- if and .Values.stripe.existingSecret .Values.stripe.webhookSecrets }}
{{- fail "stripe: set either stripe.existingSecret (a Secret you manage) or stripe.webhookSecrets (the chart creates the Secret), not both" }}
{{- end }}
{{- default (printf "%s-stripe" (include "hookstream.fullname" .)) .Values.stripe.existingSecret }}
{{- end }}

{{- define "hookstream.kafka.caDir" -}}
/etc/hookstream/kafka-ca
{{- end }}

{{/* Kafka connection environment for both components (plain values come from the ConfigMap). */}}
{{- define "hookstream.kafka.env" -}}
{{- $protocol := .Values.kafka.securityProtocol }}
{{- if hasPrefix "SASL_" $protocol }}
{{- if not .Values.kafka.sasl.username }}
{{- fail (printf "kafka.sasl.username is required with kafka.securityProtocol=%s" $protocol) }}
{{- end }}
{{- if not .Values.kafka.sasl.existingSecret }}
{{- fail (printf "kafka.sasl.existingSecret (the Secret holding the SASL password) is required with kafka.securityProtocol=%s" $protocol) }}
{{- end }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
- name: KAFKA_SSL_CAFILE
  value: {{ printf "%s/%s" (include "hookstream.kafka.caDir" .) .Values.kafka.tls.caKey | quote }}
{{- end }}
{{- end }}

{{- define "hookstream.kafka.volumeMounts" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: {{ include "hookstream.kafka.caDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "hookstream.kafka.volumes" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- end }}

{{/* Extra NAME: value pairs as container env. */}}
{{- define "hookstream.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* True when the Prometheus Operator's API is there, or rendering is forced. Call with (list $ "serviceMonitor"). */}}
{{- define "hookstream.monitoring.render" -}}
{{- $ := index . 0 }}
{{- $cfg := index $.Values.metrics (index . 1) }}
{{- if and $cfg.enabled (or ($.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") $cfg.force) -}}
true
{{- end }}
{{- end }}

{{/* Prometheus job name of a component (ServiceMonitor jobLabel). ops/prometheus/alerts.yaml matches jobs that
contain "hookstream" and "gateway" / "worker": keep both words in it whatever the release is called.
Call with (list $ "gateway"). */}}
{{- define "hookstream.jobName" -}}
{{- $ := index . 0 }}
{{- $name := printf "%s-%s" (include "hookstream.fullname" $) (index . 1) }}
{{- if not (contains "hookstream" $name) }}
{{- $name = printf "hookstream-%s" $name }}
{{- end }}
{{- $name | trunc 63 | trimSuffix "-" }}
{{- end }}
