{{/* The release's base name: the release name, or "podvault" in it. */}}
{{- define "podvault.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "podvault.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "controller"). */}}
{{- define "podvault.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "podvault.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "podvault.webhookService" -}}
{{- printf "%s-webhook" (include "podvault.fullname" .) -}}
{{- end -}}

{{- define "podvault.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "podvault.fullname" .) -}}
{{- end -}}

{{/* Settings every podvault process shares: namespace, storage, logs. */}}
{{- define "podvault.env" -}}
- name: PODVAULT_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: PODVAULT_STORAGE
  value: {{ required "storage.location is required (s3:BUCKET/PREFIX)" .Values.storage.location | quote }}
{{- with .Values.storage.endpoint }}
- name: PODVAULT_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.region }}
- name: PODVAULT_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .Values.storage.pathStyle }}
- name: PODVAULT_S3_PATH_STYLE
  value: "true"
{{- end }}
{{- end -}}

{{- define "podvault.envFrom" -}}
{{- with .Values.storage.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end -}}

{{- define "podvault.scrape" -}}
{{- if .root.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
{{- end }}
{{- end -}}
