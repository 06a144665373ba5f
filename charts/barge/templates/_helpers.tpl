{{/*
Names. The operator is a cluster-wide singleton (it owns the cluster-scoped BatchJob CRD and
watches every namespace), so its resources have fixed names rather than release-prefixed ones:
a second release in the same cluster would fight the first over every job.
*/}}
{{- define "barge.name" -}}
barge-operator
{{- end }}

{{/*
Cluster-scoped objects: fixed for the cluster-wide operator; with `watchNamespace` they carry the
release namespace, so that namespaced releases do not claim each other's objects.
*/}}
{{- define "barge.clusterObjectName" -}}
{{- if .Values.watchNamespace -}}
{{ include "barge.name" . }}-{{ .Release.Namespace }}
{{- else -}}
{{ include "barge.name" . }}
{{- end -}}
{{- end }}

{{/* The rights on the BatchJobs it reconciles and their pods, cluster-wide or in one namespace. */}}
{{- define "barge.jobRules" -}}
- apiGroups: ["barge.dev"]
  resources: ["batchjobs"]
  verbs: ["get", "list", "watch", "patch", "update", "delete"]
- apiGroups: ["barge.dev"]
  resources: ["batchjobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "barge.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ConfigMap name is fixed: the operator's docs and runbooks refer to it. */}}
{{- define "barge.configMapName" -}}
barge-operator-config
{{- end }}

{{- define "barge.serviceAccountName" -}}
{{ .Values.serviceAccount.name }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "barge.labels" -}}
helm.sh/chart: {{ include "barge.chart" . }}
{{ include "barge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: barge
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator's pods; never change them (Deployment selectors are immutable). */}}
{{- define "barge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "barge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "barge.operatorImage" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "barge.runnerImage" -}}
{{ printf "%s:%s" .Values.runner.image.repository (.Values.runner.image.tag | default .Chart.AppVersion) }}
{{- end }}
