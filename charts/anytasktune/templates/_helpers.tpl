{{/* Names and labels shared by every template. */}}

{{- define "anytasktune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "anytasktune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "anytasktune.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "anytasktune.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "anytasktune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anytasktune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "anytasktune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "anytasktune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "anytasktune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anytasktune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "anytasktune.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The RayJobs' image: operator.trainingImage, else the release's trainjob image. */}}
{{- define "anytasktune.trainingImage" -}}
{{- default (printf "ghcr.io/anytasktune/trainjob:%s" .Chart.AppVersion) .Values.operator.trainingImage }}
{{- end }}
