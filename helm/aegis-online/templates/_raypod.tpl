{{/* One Ray pod template: the head or a worker group. Arguments: root, group (values), image (values), kind. */}}
{{- define "aegis-online.rayPod" -}}
{{- $root := .root -}}
{{- $g := .group -}}
metadata:
  labels:
    {{- include "aegis-online.labels" $root | nindent 4 }}
    app.kubernetes.io/component: ray-{{ .kind }}
  annotations:
    checksum/catalog: {{ include "aegis-online.catalogChecksum" $root }}
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  containers:
    - name: ray-{{ .kind }}
      image: {{ include "aegis-online.image" (dict "image" .image "root" $root) }}
      imagePullPolicy: {{ .image.pullPolicy }}
      ports:
        {{- if eq .kind "head" }}
        - {containerPort: 6379, name: gcs-server}
        - {containerPort: 8265, name: dashboard}
        - {containerPort: 10001, name: client}
        {{- end }}
        - {containerPort: 8000, name: serve}
        - {containerPort: 8080, name: ray-metrics}
      env:
        - {name: RAY_USAGE_STATS_ENABLED, value: "0"}
        {{- with include "aegis-online.redisEnv" $root }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- if ne .kind "head" }}
      # A pod joins the serve Service only when the application answers through its proxy. Liveness stays with
      # KubeRay's raylet check: /healthz through Serve would restart a node for an application-level failure.
      readinessProbe:
        httpGet: {path: /readyz, port: 8000}
        periodSeconds: 5
        timeoutSeconds: 2
        failureThreshold: 3
      lifecycle:
        preStop:
          exec:
            command: ["/bin/sh", "-c", "ray stop"]
      {{- end }}
      resources:
        {{- $resources := deepCopy $g.resources }}
        {{- if eq .kind "gpu-worker" }}
        {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (int $g.gpusPerPod)) (default (dict) $resources.limits)) }}
        {{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" (int $g.gpusPerPod)) (default (dict) $resources.requests)) }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: catalog, mountPath: {{ include "aegis-online.catalogDir" $root }}, readOnly: true}
        - {name: api-keys, mountPath: {{ include "aegis-online.keysDir" $root }}, readOnly: true}
        - {name: ray-logs, mountPath: /tmp/ray}
  volumes:
    - name: catalog
      configMap: {name: {{ include "aegis-online.fullname" $root }}-catalog}
    - name: api-keys
      secret: {secretName: {{ include "aegis-online.keysSecret" $root }}}
    - name: ray-logs
      emptyDir: {}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
