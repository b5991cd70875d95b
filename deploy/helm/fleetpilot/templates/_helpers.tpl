{{- define "fleetpilot.labels" -}}
app.kubernetes.io/part-of: fleetpilot
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "fleetpilot.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "fleetpilot.gatewayUrl" -}}
http://{{ .Release.Name }}-gateway.{{ .Release.Namespace }}.svc:{{ .Values.gateway.port }}
{{- end -}}

{{- define "fleetpilot.redisUrl" -}}
{{- if .Values.redis.url -}}
{{ .Values.redis.url }}
{{- else if .Values.redis.enabled -}}
redis://{{ .Release.Name }}-redis.{{ .Release.Namespace }}.svc:6379/0
{{- end -}}
{{- end -}}

{{- define "fleetpilot.adminSecret" -}}
{{- .Values.adminSecret | default (printf "%s-admin" .Release.Name) -}}
{{- end -}}
