{{/* Chart name, at most 63 characters. */}}
{{- define "archiver-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "archiver-operator.fullname" -}}
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

{{- define "archiver-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "archiver-operator.labels" -}}
helm.sh/chart: {{ include "archiver-operator.chart" . }}
{{ include "archiver-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: archiver-operator
{{- end }}

{{/* Labels the Deployment selects its pods by (immutable: never add to them). */}}
{{- define "archiver-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "archiver-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "archiver-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "archiver-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "archiver-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "archiver-operator.workerImage" -}}
{{- default (include "archiver-operator.image" .) .Values.workers.image }}
{{- end }}

{{/* Namespaces of the ArchiverShards (and so of the worker pods), one per line. */}}
{{- define "archiver-operator.workerNamespaces" -}}
{{- if .Values.workers.namespaces }}
{{- range .Values.workers.namespaces }}
{{ . }}
{{- end }}
{{- else }}
{{ default .Release.Namespace .Values.watchNamespace }}
{{- end }}
{{- end }}
