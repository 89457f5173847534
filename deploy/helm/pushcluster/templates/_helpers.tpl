{{/* Names, labels and the environment every service shares. */}}

{{- define "pushcluster.name" -}}
{{ printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "pushcluster.labels" -}}
app.kubernetes.io/name: pushcluster
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pushcluster.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pushcluster.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" .Release.Name) }}
{{- end -}}

{{/* An environment variable from the chart's Secret. */}}
{{- define "pushcluster.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ include "pushcluster.secretName" .root }}, key: {{ .name }}}
{{- end -}}

{{/* What every service reads: production mode, the stores and the operators' key. */}}
{{- define "pushcluster.commonEnv" -}}
- {name: APP_ENV, value: production}
- {name: MONGO_DB, value: {{ .Values.mongoDb | quote }}}
- {name: STREAM_SHARDS, value: {{ .Values.streamShards | quote }}}
{{ include "pushcluster.secretEnv" (dict "root" . "name" "REDIS_URL") }}
{{ include "pushcluster.secretEnv" (dict "root" . "name" "MONGO_URL") }}
{{ include "pushcluster.secretEnv" (dict "root" . "name" "OPS_KEY") }}
{{- end -}}

{{/* Readiness and liveness from /healthz on the service's port (503 while a dependency is down). */}}
{{- define "pushcluster.probes" -}}
readinessProbe:
  httpGet: {path: /healthz, port: {{ . }}}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  tcpSocket: {port: {{ . }}}
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{/* A Deployment of one HTTP service: .component, .port, .replicas, .env (extra variables, YAML), .resources. */}}
{{- define "pushcluster.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "pushcluster.name" . }}
  labels: {{- include "pushcluster.labels" . | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  selector:
    matchLabels: {{- include "pushcluster.selector" . | nindent 6 }}
  template:
    metadata:
      labels: {{- include "pushcluster.labels" . | nindent 8 }}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .port | quote }}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: {{ .component }}
          image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}"
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          command: ["python", "-m", "services.{{ .component }}"]
          ports: [{name: http, containerPort: {{ .port }}}]
          env:
            {{- include "pushcluster.commonEnv" .root | nindent 12 }}
            {{- .env | nindent 12 }}
          {{- include "pushcluster.probes" .port | nindent 10 }}
          resources: {{- toYaml .resources | nindent 12 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "pushcluster.name" . }}
  labels: {{- include "pushcluster.labels" . | nindent 4 }}
spec:
  selector: {{- include "pushcluster.selector" . | nindent 4 }}
  ports: [{name: http, port: {{ .port }}, targetPort: http}]
{{- end -}}
