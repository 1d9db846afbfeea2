{{/* Names and labels. */}}
{{- define "homework-fhir.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "homework-fhir.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "homework-fhir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "homework-fhir.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "homework-fhir.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "homework-fhir.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "homework-fhir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "homework-fhir.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "homework-fhir.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding config.toml: the user's, or the one this chart renders. */}}
{{- define "homework-fhir.configSecret" -}}
{{- if and .Values.config.existingSecret .Values.config.toml -}}
{{- fail "set config.toml or config.existingSecret, not both" -}}
{{- end -}}
{{- if .Values.config.existingSecret -}}
{{- .Values.config.existingSecret -}}
{{- else if .Values.config.toml -}}
{{- printf "%s-config" (include "homework-fhir.fullname" .) -}}
{{- else -}}
{{- fail "no settings: set config.toml (deploy/config.example.toml) or config.existingSecret (a Secret with the key config.toml)" -}}
{{- end -}}
{{- end -}}

{{- define "homework-fhir.tritonUrl" -}}
{{- if and .Values.triton.enabled .Values.model.tritonUrl -}}
{{- fail "model.tritonUrl names your own Triton: set triton.enabled=false with it, or leave it empty" -}}
{{- end -}}
{{- if .Values.triton.enabled -}}
{{- printf "%s-triton:8001" (include "homework-fhir.fullname" .) -}}
{{- else -}}
{{- required "triton.enabled is false: set model.tritonUrl to your Triton's gRPC address (host:8001)" .Values.model.tritonUrl -}}
{{- end -}}
{{- end -}}

{{/* What every homework-fhir process (API, worker, `helm test`) shares. */}}
{{- define "homework-fhir.env" -}}
- name: HOMEWORK_FHIR_CONFIG_FILE
  value: /etc/homework-fhir/config.toml
- name: HOMEWORK_FHIR_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret: name the Secret holding the PostgreSQL URL (postgresql+psycopg://...)" .Values.database.existingSecret }}
      key: {{ .Values.database.key }}
- name: HOMEWORK_FHIR_DATA_DIR
  value: /var/lib/homework-fhir
- name: HOMEWORK_FHIR_LOG_FORMAT
  value: json
- name: HOMEWORK_FHIR_QUEUE__BACKEND
  value: procrastinate
- name: HOMEWORK_FHIR_QUEUE__WORKER_METRICS_PORT
  value: {{ .Values.worker.metricsPort | quote }}
- name: HOMEWORK_FHIR_MODEL__BACKEND
  value: triton
- name: HOMEWORK_FHIR_MODEL__TRITON_URL
  value: {{ include "homework-fhir.tritonUrl" . | quote }}
- name: HOMEWORK_FHIR_MODEL__TRITON_PROTOCOL
  value: grpc
{{- with .Values.model.operatingPoint }}
- name: HOMEWORK_FHIR_MODEL__OPERATING_POINT
  value: {{ . | quote }}
{{- end }}
- name: HOME
  value: /tmp
{{- end -}}

{{- define "homework-fhir.volumeMounts" -}}
- name: config
  mountPath: /etc/homework-fhir
  readOnly: true
- name: data
  mountPath: /var/lib/homework-fhir
- name: tmp
  mountPath: /tmp
{{- if .Values.keys.existingSecret }}
- name: keys
  mountPath: {{ .Values.keys.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "homework-fhir.volumes" -}}
- name: config
  secret:
    secretName: {{ include "homework-fhir.configSecret" . }}
    items:
      - key: config.toml
        path: config.toml
- name: data
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.keys.existingSecret }}
- name: keys
  secret:
    secretName: {{ .Values.keys.existingSecret }}
    defaultMode: 0440          # read by the pod's group (fsGroup)
{{- end }}
{{- end -}}

{{/* Roll the pods when the rendered settings change. */}}
{{- define "homework-fhir.podAnnotations" -}}
{{- if .Values.config.toml }}
checksum/config: {{ .Values.config.toml | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}
