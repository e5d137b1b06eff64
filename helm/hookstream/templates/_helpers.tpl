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

{{/* Secrets reach the pods as files, never as environment variables (those show in /proc/<pid>/environ, crash
dumps and child processes): one read-only projected volume per pod, mounted at hookstream.secretsDir, and
NAME_FILE variables naming the files (ops/settings.py reads NAME from the file NAME_FILE names). */}}
{{- define "hookstream.secretsDir" -}}
/etc/hookstream/secrets
{{- end }}

{{/* The secret files of a component, as a JSON list of {env, secret, key, file}. The gateway reads the signing
secrets; both components read the SASL password with a SASL_* protocol. Call with (list $ "gateway"). */}}
{{- define "hookstream.secretFiles" -}}
{{- $ := index . 0 }}
{{- $files := list }}
{{- if eq (index . 1) "gateway" }}
{{- $files = append $files (dict "env" "STRIPE_WEBHOOK_SECRETS_FILE" "secret" (include "hookstream.stripe.secretName" $) "key" $.Values.stripe.secretKey "file" "stripe-webhook-secrets") }}
{{- end }}
{{- if and (hasPrefix "SASL_" $.Values.kafka.securityProtocol) $.Values.kafka.sasl.existingSecret }}
{{- $files = append $files (dict "env" "KAFKA_SASL_PASSWORD_FILE" "secret" $.Values.kafka.sasl.existingSecret "key" $.Values.kafka.sasl.passwordKey "file" "kafka-sasl-password") }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{- define "hookstream.secretFiles.env" -}}
{{- $dir := include "hookstream.secretsDir" (index . 0) }}
{{- range fromJsonArray (include "hookstream.secretFiles" .) }}
- name: {{ .env }}
  value: {{ printf "%s/%s" $dir .file | quote }}
{{- end }}
{{- end }}

{{- define "hookstream.secretFiles.volumeMounts" -}}
{{- if fromJsonArray (include "hookstream.secretFiles" .) }}
- name: secrets
  mountPath: {{ include "hookstream.secretsDir" (index . 0) }}
  readOnly: true
{{- end }}
{{- end }}

{{/* A component's topologySpreadConstraints: its own from values, else (spreadOverNodes) its pods spread over
nodes where the cluster allows it: a node's loss takes one gateway, or one worker's partitions, not all of them.
Call with (list $ "gateway") or (list $ "worker"). */}}
{{- define "hookstream.topologySpread" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $values := index $root.Values $component }}
{{- if $values.topologySpreadConstraints }}
{{- toYaml $values.topologySpreadConstraints }}
{{- else if $values.spreadOverNodes }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include (printf "hookstream.%s.selectorLabels" $component) $root | nindent 6 }}
{{- end }}
{{- end }}

{{/* Mode 0440: owner root, group the pod's fsGroup (podSecurityContext.fsGroup, the image's gid 10001 by default),
which the kubelet gives the files and the container's user belongs to; nobody else reads them. */}}
{{- define "hookstream.secretFiles.volumes" -}}
{{- $files := fromJsonArray (include "hookstream.secretFiles" .) }}
{{- if $files }}
- name: secrets
  projected:
    defaultMode: 288  # 0440
    sources:
      {{- range $files }}
      - secret:
          name: {{ .secret }}
          items:
            - key: {{ .key }}
              path: {{ .file }}
      {{- end }}
{{- end }}
{{- end }}

{{/* Grace periods must cover the stops they bound (the kubelet kills a pod whose grace period runs out).
A seconds setting NAME and the value it comes from, as JSON {value, from}: the component's extra env (container
env wins over the ConfigMap), else config.extra, else the default.
Call with (list $ componentEnv "component.env" "NAME" default "the value holding the default"). */}}
{{- define "hookstream.secondsSetting" -}}
{{- $ := index . 0 }}
{{- $env := index . 1 | default dict }}
{{- $extra := $.Values.config.extra | default dict }}
{{- $envPath := printf "%s.%s" (index . 2) (index . 3) }}
{{- $name := index . 3 }}
{{- $value := index . 4 }}
{{- $from := index . 5 }}
{{- if hasKey $extra $name }}
{{- $value = index $extra $name }}
{{- $from = printf "config.extra.%s" $name }}
{{- end }}
{{- if hasKey $env $name }}
{{- $value = index $env $name }}
{{- $from = $envPath }}
{{- end }}
{{- toJson (dict "value" (float64 $value) "from" $from) }}
{{- end }}

{{/* Gateway: the preStop sleep, then uvicorn's graceful shutdown (ceil(GATEWAY_CLIENT_TIMEOUT +
GATEWAY_PUBLISH_TIMEOUT) + 2 s, gateway/server.py: a request still arriving, then its publish), then the producer's
close (up to GATEWAY_PUBLISH_TIMEOUT, gateway/publisher.py), then 5 s to close the admin client and exit. */}}
{{- define "hookstream.gateway.checkGrace" -}}
{{- $v := .Values.gateway }}
{{- $t := fromJson (include "hookstream.secondsSetting" (list . $v.env "gateway.env" "GATEWAY_PUBLISH_TIMEOUT" $v.publishTimeout "gateway.publishTimeout")) }}
{{- $c := fromJson (include "hookstream.secondsSetting" (list . $v.env "gateway.env" "GATEWAY_CLIENT_TIMEOUT" $v.clientTimeout "gateway.clientTimeout")) }}
{{- $publish := float64 $t.value }}
{{- $client := float64 $c.value }}
{{- $pre := int $v.preStopSleepSeconds }}
{{- $drain := add (int (ceil (addf $client $publish))) 2 }}
{{- $close := int (ceil $publish) }}
{{- $need := add $pre $drain $close 5 }}
{{- $grace := int $v.terminationGracePeriodSeconds }}
{{- if lt $grace (int $need) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) is shorter than a gateway's stop may take with GATEWAY_PUBLISH_TIMEOUT %v s (%s) and GATEWAY_CLIENT_TIMEOUT %v s (%s): %d s = gateway.preStopSleepSeconds (%d) + uvicorn's graceful shutdown (%d: the client timeout + the publish timeout + 2) + the producer's close (%d: the publish timeout) + 5 to exit. Raise gateway.terminationGracePeriodSeconds to at least %d, or lower the timeouts." $grace $publish $t.from $client $c.from $need $pre $drain $close $need) }}
{{- end }}
{{- end }}

{{/* Worker: events in flight get HANDLER_TIMEOUT to finish, cancelled ones CANCEL_PATIENCE (5 s,
streams/actors.py) to end, then 15 s to commit, flush the changelog producer, leave the group and exit. */}}
{{- define "hookstream.worker.checkGrace" -}}
{{- $v := .Values.worker }}
{{- $t := fromJson (include "hookstream.secondsSetting" (list . $v.env "worker.env" "HANDLER_TIMEOUT" 30 "worker.env.HANDLER_TIMEOUT")) }}
{{- $handler := float64 $t.value }}
{{- $run := int (ceil $handler) }}
{{- $need := add $run 5 15 }}
{{- $from := $t.from }}{{- /* the value to change; where the current one comes from: */}}
{{- if not (or (hasKey ($v.env | default dict) "HANDLER_TIMEOUT") (hasKey (.Values.config.extra | default dict) "HANDLER_TIMEOUT")) }}
{{- $from = "the default of ops/settings.py" }}
{{- end }}
{{- $grace := int $v.terminationGracePeriodSeconds }}
{{- if lt $grace (int $need) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) is shorter than a worker's stop may take with HANDLER_TIMEOUT %v s (%s): %d s = the handler timeout (%d) + cancelled handlers' patience (5, CANCEL_PATIENCE) + 15 to commit, flush and leave the group. Raise worker.terminationGracePeriodSeconds to at least %d, or lower %s." $grace $handler $from $need $run $need $t.from) }}
{{- end }}
{{- end }}

{{- define "hookstream.kafka.caDir" -}}
/etc/hookstream/kafka-ca
{{- end }}

{{- define "hookstream.kafka.clientCertDir" -}}
/etc/hookstream/kafka-client
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
{{- /* the password itself: KAFKA_SASL_PASSWORD_FILE, see hookstream.secretFiles */}}
{{- end }}
{{- if .Values.kafka.tls.caSecret }}
- name: KAFKA_SSL_CAFILE
  value: {{ printf "%s/%s" (include "hookstream.kafka.caDir" .) .Values.kafka.tls.caKey | quote }}
{{- end }}
{{- with .Values.kafka.tls.clientSecret }}
{{- if not (hasSuffix "SSL" $protocol) }}
{{- fail (printf "kafka.tls.clientSecret (a client certificate, sent only over TLS) needs kafka.securityProtocol SSL or SASL_SSL, not %s" $protocol) }}
{{- end }}
{{- $dir := include "hookstream.kafka.clientCertDir" $ }}
- name: KAFKA_SSL_CERTFILE
  value: {{ printf "%s/%s" $dir $.Values.kafka.tls.certKey | quote }}
- name: KAFKA_SSL_KEYFILE
  value: {{ printf "%s/%s" $dir $.Values.kafka.tls.keyKey | quote }}
{{- with $.Values.kafka.tls.keyPasswordKey }}
- name: KAFKA_SSL_KEY_PASSWORD_FILE
  value: {{ printf "%s/%s" $dir (include "hookstream.kafka.keyPasswordFile" $) | quote }}
{{- end }}
{{- end }}
{{- if and .Values.kafka.tls.keyPasswordKey (not .Values.kafka.tls.clientSecret) }}
{{- fail "kafka.tls.keyPasswordKey (the password of the client key) needs kafka.tls.clientSecret (the key)" }}
{{- end }}
{{- end }}

{{/* The file, beside the client certificate and key, holding the key's password (KAFKA_SSL_KEY_PASSWORD_FILE). */}}
{{- define "hookstream.kafka.keyPasswordFile" -}}
key-password
{{- end }}

{{- define "hookstream.kafka.volumeMounts" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: {{ include "hookstream.kafka.caDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientSecret }}
- name: kafka-client-cert
  mountPath: {{ include "hookstream.kafka.clientCertDir" . }}
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
{{- with .Values.kafka.tls.clientSecret }}
- name: kafka-client-cert
  secret:
    secretName: {{ . }}
    defaultMode: 288  # 0440: the key readable by the pod's group (fsGroup), as the secret files above
    items:
      - key: {{ $.Values.kafka.tls.certKey }}
        path: {{ $.Values.kafka.tls.certKey }}
      - key: {{ $.Values.kafka.tls.keyKey }}
        path: {{ $.Values.kafka.tls.keyKey }}
      {{- with $.Values.kafka.tls.keyPasswordKey }}
      - key: {{ . }}
        path: {{ include "hookstream.kafka.keyPasswordFile" $ }}
      {{- end }}
{{- end }}
{{- end }}

{{/* What no values map may set: the variables of the pods' own env lists (a duplicate there is kept or refused
depending on the client, and one that wins breaks what the chart set up: a data directory off the volume, a
peer address nobody answers), the secret files and the secrets themselves (Secrets, not values), and the ports,
which the probes, Services and NetworkPolicies are built on. */}}
{{- define "hookstream.podEnv" -}}
POD_NAME POD_NAMESPACE WORKER_WEB_HOST WORKER_WEB_BIND STATE_STORE WORKER_DATA_DIR WORKER_MAX_INFLIGHT HOOKSTREAM_HANDLERS KAFKA_SSL_CAFILE KAFKA_SSL_CERTFILE KAFKA_SSL_KEYFILE GATEWAY_PORT WORKER_WEB_PORT {{ include "hookstream.secretEnv" . }}
{{- end }}

{{/* The secrets, which come from Secrets only (as files), never from values. */}}
{{- define "hookstream.secretEnv" -}}
KAFKA_SSL_KEY_PASSWORD KAFKA_SSL_KEY_PASSWORD_FILE STRIPE_WEBHOOK_SECRETS STRIPE_WEBHOOK_SECRETS_FILE KAFKA_SASL_PASSWORD KAFKA_SASL_PASSWORD_FILE
{{- end }}

{{/* Why a values map may not set NAME. Call with (list $ NAME "where.NAME"). */}}
{{- define "hookstream.refuseEnv" -}}
{{- $name := index . 1 }}
{{- if has $name (splitList " " (include "hookstream.secretEnv" (index . 0))) }}
{{- fail (printf "%s: a secret, which the chart mounts from a Secret as a file (see stripe.*, kafka.sasl.existingSecret and kafka.tls.keyPasswordKey in values.yaml), never as a plain environment variable" (index . 2)) }}
{{- end }}
{{- fail (printf "%s: the chart sets %s itself (see values.yaml); set that value instead" (index . 2) $name) }}
{{- end }}

{{/* Extra NAME: value pairs as container env. Call with (list $ .Values.gateway.env "gateway.env"). */}}
{{- define "hookstream.extraEnv" -}}
{{- $set := splitList " " (include "hookstream.podEnv" (index . 0)) }}
{{- $where := index . 2 }}
{{- range $name, $value := index . 1 }}
{{- if has $name $set }}
{{- include "hookstream.refuseEnv" (list (index $ 0) $name (printf "%s.%s" $where $name)) }}
{{- end }}
- name: {{ $name }}
  value: {{ include "hookstream.envValue" $value | quote }}
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

{{/*
An environment variable's value from a values file: a whole number as its digits. Helm reads every number of a
values file (-f) as a float, which prints 2097152 as "2.097152e+06", and no setting parses that. (Beyond 1e15 it is
left as printed: an int64 would wrap, and no setting takes such a number anyway.)
*/}}
{{- define "hookstream.envValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) (lt . 1e15) (gt . -1e15) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
