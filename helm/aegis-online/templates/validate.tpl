{{/* Combinations values.schema.json cannot express. Each message names the value to change. Included by
rayservice.yaml, so every render runs it. */}}
{{- define "aegis-online.validate" -}}
{{- $v := .Values -}}
{{- if not $v.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers: required, the Kafka brokers of the feedback topic (e.g. my-cluster-kafka-bootstrap.kafka:9092)" -}}
{{- end -}}
{{- $external := or $v.redis.external.url $v.redis.external.existingSecret -}}
{{- if and $v.redis.bundled.enabled $external -}}
{{- fail "redis: set either redis.bundled.enabled or redis.external (url or existingSecret), not both" -}}
{{- end -}}
{{- if not (or $v.redis.bundled.enabled $external) -}}
{{- fail "redis: enable redis.bundled or give redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- if and $v.redis.external.url $v.redis.external.existingSecret -}}
{{- fail "redis.external: give url or existingSecret, not both" -}}
{{- end -}}
{{- if and (not $v.auth.existingSecret) (not $v.auth.keys) -}}
{{- fail "auth: the service is exposed, so it needs API keys: set auth.keys or auth.existingSecret (see deploy/keys.example.yaml)" -}}
{{- end -}}
{{- if gt (int $v.feedbackWorker.replicas) (int $v.kafka.partitions) -}}
{{- fail (printf "feedbackWorker.replicas (%d) exceeds kafka.partitions (%d): a consumer group gives each partition to one worker, the rest would idle" (int $v.feedbackWorker.replicas) (int $v.kafka.partitions)) -}}
{{- end -}}
{{- if and $v.feedbackWorker.autoscaling.enabled (gt (int $v.feedbackWorker.autoscaling.maxReplicas) (int $v.kafka.partitions)) -}}
{{- fail (printf "feedbackWorker.autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d)" (int $v.feedbackWorker.autoscaling.maxReplicas) (int $v.kafka.partitions)) -}}
{{- end -}}
{{- if and $v.feedbackWorker.autoscaling.enabled (gt (int $v.feedbackWorker.autoscaling.minReplicas) (int $v.feedbackWorker.autoscaling.maxReplicas)) -}}
{{- fail "feedbackWorker.autoscaling: minReplicas exceeds maxReplicas" -}}
{{- end -}}
{{- range $group := list "cpuWorkers" "gpuWorkers" -}}
{{- $g := index $v.ray $group -}}
{{- if $g.enabled -}}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) -}}
{{- fail (printf "ray.%s: replicas (%d) must lie between minReplicas (%d) and maxReplicas (%d)" $group (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $v.ray.auth.existingSecret (not $v.ray.auth.enabled) -}}
{{- fail "ray.auth: existingSecret is set but ray.auth.enabled is false; Ray would run without token authentication" -}}
{{- end -}}
{{- $np := $v.ray.networkPolicy -}}
{{- if and $np.enabled $np.serveFrom $v.metrics.serviceMonitor.enabled (not $np.metricsFrom) -}}
{{- fail "ray.networkPolicy.metricsFrom: Prometheus scrapes /metrics on the Serve port, which ray.networkPolicy.serveFrom restricts; list Prometheus's pods in metricsFrom (or leave serveFrom empty)" -}}
{{- end -}}
{{- if and (not $v.ray.cpuWorkers.enabled) (not $v.ray.gpuWorkers.enabled) (not $v.ray.head.schedulable) -}}
{{- fail "ray: no pod can run Serve replicas: enable ray.cpuWorkers or ray.gpuWorkers, or set ray.head.schedulable" -}}
{{- end -}}
{{- end -}}
