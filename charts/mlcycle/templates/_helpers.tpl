{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "mlcycle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-qualified name of namespaced objects; a release name that already contains the chart name is
used as it is.
*/}}
{{- define "mlcycle.fullname" -}}
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

{{/*
The name of cluster-scoped objects (ClusterRoles, their bindings, the ClusterKopfPeering). It carries the
release namespace too: two releases of the same name in different namespaces (each watching its own
namespaces) must not fight over one ClusterRole.
*/}}
{{- define "mlcycle.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "mlcycle.fullname" .) | trunc 253 | trimSuffix "-" }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "mlcycle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels. Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "mlcycle.labels" -}}
helm.sh/chart: {{ include "mlcycle.chart" .ctx }}
{{ include "mlcycle.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: mlcycle
{{- end }}

{{/*
Selector labels: immutable in a Deployment, so only name, instance and component.
Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "mlcycle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlcycle.name" .ctx | quote }}
app.kubernetes.io/instance: {{ .ctx.Release.Name | quote }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The operator's ServiceAccount: created here, or named by the user. */}}
{{- define "mlcycle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlcycle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image@digest when a digest is given, else image:tag, the tag defaulting to the chart's appVersion. Call with
(dict "image" .Values.image "ctx" $). */}}
{{- define "mlcycle.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion (toString .image.tag)) }}
{{- end }}
{{- end }}

{{/* The in-chart Prometheus' name. */}}
{{- define "mlcycle.prometheus.fullname" -}}
{{- printf "%s-prometheus" (include "mlcycle.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the operator queries Prometheus: prometheus.url, else the in-chart one, else nothing. */}}
{{- define "mlcycle.prometheusUrl" -}}
{{- if .Values.prometheus.url }}
{{- .Values.prometheus.url }}
{{- else if .Values.prometheus.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "mlcycle.prometheus.fullname" .) .Release.Namespace (int .Values.prometheus.service.port) }}
{{- end }}
{{- end }}

{{/* The Kopf peering object's name; the operator gets it as MLCYCLE_PEERING. */}}
{{- define "mlcycle.peeringName" -}}
{{- default (include "mlcycle.clusterName" .) .Values.peering.name }}
{{- end }}

{{/* The restricted container securityContext every container of the chart runs with. */}}
{{- define "mlcycle.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
