{{/* Names, labels and the one serve configuration every process of the release reads. */}}

{{- define "aegis-online.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aegis-online.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aegis-online.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aegis-online.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aegis-online.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "aegis-online.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aegis-online
{{- end -}}

{{- define "aegis-online.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "aegis-online.redisName" -}}
{{- printf "%s-redis" (include "aegis-online.fullname" .) -}}
{{- end -}}

{{/* The release's Ray pods (head and worker groups): what the Ray NetworkPolicy protects and lets in. */}}
{{- define "aegis-online.rayPodSelector" -}}
matchLabels:
  {{- include "aegis-online.selectorLabels" . | nindent 2 }}
matchExpressions:
  - {key: app.kubernetes.io/component, operator: In, values: [ray-head, ray-cpu-worker, ray-gpu-worker]}
{{- end -}}

{{/* The Secret with Ray's auth token (key auth_token): ray.auth.existingSecret or the chart's. */}}
{{- define "aegis-online.rayAuthSecret" -}}
{{- default (printf "%s-ray-auth" (include "aegis-online.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{- define "aegis-online.keysSecret" -}}
{{- default (printf "%s-api-keys" (include "aegis-online.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Where the pods find the catalog, the API keys and the serve config. */}}
{{- define "aegis-online.catalogDir" -}}/etc/aegis/experts{{- end -}}
{{- define "aegis-online.keysDir" -}}/etc/aegis/keys{{- end -}}
{{- define "aegis-online.configDir" -}}/etc/aegis/config{{- end -}}

{{/* The Secret (name and key) that holds the Redis URL: the bundled Redis's (its password is generated) or
redis.external.existingSecret; empty for a plain redis.external.url. */}}
{{- define "aegis-online.redisUrlSecret" -}}
{{- if .Values.redis.bundled.enabled -}}
{{- include "aegis-online.redisName" . }}/url
{{- else if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret }}/{{ .Values.redis.external.existingSecretKey }}
{{- end -}}
{{- end -}}

{{/* The Redis URL written into the config. A URL held in a Secret reaches the pods as AEGIS_SERVE_STORE__REDIS_URL
instead (the environment wins over the config), and the config names where it comes from. */}}
{{- define "aegis-online.redisUrl" -}}
{{- $secret := include "aegis-online.redisUrlSecret" . -}}
{{- if $secret -}}
{{- printf "redis://from-secret-%s" (first (splitList "/" $secret)) -}}
{{- else -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* The environment entry that gives a pod the Redis URL from its Secret (nothing for a plain URL). */}}
{{- define "aegis-online.redisEnv" -}}
{{- $secret := include "aegis-online.redisUrlSecret" . -}}
{{- if $secret -}}
- name: AEGIS_SERVE_STORE__REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ first (splitList "/" $secret) }}
      key: {{ last (splitList "/" $secret) }}
{{- end -}}
{{- end -}}

{{/* The service configuration: values.serve with what the chart owns wired in. One source for serveConfigV2 (the
RayService) and the <release>-config ConfigMap (the feedback workers), so learner, prefix, experts and topics agree. */}}
{{- define "aegis-online.serveConfig" -}}
{{- $config := deepCopy (default (dict) .Values.serve) -}}
{{- $owned := dict
  "server" (dict "host" "0.0.0.0" "port" 8000)
  "store" (dict "kind" "redis" "redis_url" (include "aegis-online.redisUrl" .))
  "bus" (dict "kind" "kafka" "bootstrap_servers" .Values.kafka.bootstrapServers "topic" .Values.kafka.topic "dead_letter_topic" .Values.kafka.deadLetterTopic)
  "auth" (dict "keys_file" (printf "%s/keys.yaml" (include "aegis-online.keysDir" .)))
  "experts" (dict "catalog" (include "aegis-online.catalogDir" .))
  "ray" (dict "address" "auto")
-}}
{{- toYaml (mustMergeOverwrite $config $owned) -}}
{{- end -}}

{{/* serveConfigV2: Ray Serve's deploy config; the application is built by aegis_online.rayserve.kuberay from the
embedded service configuration. */}}
{{- define "aegis-online.serveConfigV2" -}}
{{- $app := dict
  "name" "aegis-online"
  "route_prefix" "/"
  "import_path" "aegis_online.rayserve.kuberay:app_builder"
  "args" (dict "config" (include "aegis-online.serveConfig" . | fromYaml))
-}}
{{- $serve := dict
  "proxy_location" "EveryNode"
  "http_options" (dict "host" "0.0.0.0" "port" 8000)
  "logging_config" (dict "enable_access_log" false "log_level" .Values.ray.serveLogLevel)
  "applications" (list $app)
-}}
{{- toYaml $serve -}}
{{- end -}}

{{/* Checksums that roll pods when what they mount changes. */}}
{{- define "aegis-online.catalogChecksum" -}}
{{- include (print .Template.BasePath "/configmap-catalog.yaml") . | sha256sum -}}
{{- end -}}
