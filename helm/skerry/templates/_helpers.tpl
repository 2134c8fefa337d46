{{/* The prefix of every object's name: the release's, cut so that "-proxy-public" still fits 63. */}}
{{- define "skerry.prefix" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels of an object of component $component (dict "root" . "component" "hub"). */}}
{{- define "skerry.labels" -}}
app.kubernetes.io/name: skerry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* What selects the pods of one component. */}}
{{- define "skerry.selector" -}}
app.kubernetes.io/name: skerry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "skerry.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The platform's pods: never root, no privilege escalation, no capabilities. */}}
{{- define "skerry.podSecurity" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "skerry.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The catalog URL's Secret reference. */}}
{{- define "skerry.catalogEnv" -}}
- name: SKERRY_CATALOG_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.catalog.url }}
      name: {{ include "skerry.prefix" . }}-catalog
      key: url
      {{- else if .Values.catalog.existingSecret }}
      name: {{ .Values.catalog.existingSecret.name }}
      key: {{ .Values.catalog.existingSecret.key }}
      {{- else }}
      {{- fail "catalog: give url or existingSecret (the catalog's PostgreSQL URL)" }}
      {{- end }}
{{- end -}}
