{{- /*
  Labels of our objects. Call with (dict "root" $ "component" "quota").
*/}}
{{- define "aipower.selectorLabels" -}}
app.kubernetes.io/name: aipower-hub
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "aipower.labels" -}}
{{ include "aipower.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end }}

{{- /*
  Pods of the jupyterhub dependency, as z2jh 4.4 labels them (component, release).
*/}}
{{- define "aipower.z2jhPod" -}}
podSelector:
  matchLabels:
    component: {{ .component }}
    release: {{ .root.Release.Name | quote }}
{{- end }}

{{- /*
  A token of aipower-secrets: the value given, else the one the Secret already holds (an
  upgrade keeps it), else a new random one. Call with (list $ "key" .Values.secrets.x).
  Offline rendering (helm template) cannot look the Secret up and makes a new one.
*/}}
{{- define "aipower.token" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $given := index . 2 }}
{{- if $given }}
{{- $given | b64enc }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace "aipower-secrets" }}
{{- $data := dig "data" (dict) ($existing | default (dict)) }}
{{- if hasKey $data $key }}
{{- index $data $key }}
{{- else }}
{{- randAlphaNum 64 | b64enc }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aipower.quota.image" -}}
{{- $hub := .Values.jupyterhub.hub.image }}
{{- printf "%s:%s" (.Values.quota.image.name | default $hub.name) (.Values.quota.image.tag | default $hub.tag) }}
{{- end }}

{{- /* scan pods: quota.modelScan.image, else the quota service's image (the hub's) */}}
{{- define "aipower.modelScan.image" -}}
{{- $image := .Values.quota.modelScan.image }}
{{- if $image.name }}
{{- printf "%s:%s" $image.name ($image.tag | default "latest") }}
{{- else }}
{{- include "aipower.quota.image" . }}
{{- end }}
{{- end }}

{{- /* whether the quota service talks to the Kubernetes API: the purge or the model scan */}}
{{- define "aipower.quota.usesApi" -}}
{{- if or .Values.quota.storagePurge .Values.quota.modelScan.enabled }}true{{ end }}
{{- end }}

{{- /* the hub's URL prefix ("/" unless jupyterhub.hub.baseUrl says otherwise), with a trailing slash */}}
{{- define "aipower.baseUrl" -}}
{{- $base := .Values.jupyterhub.hub.baseUrl | default "/" }}
{{- if hasSuffix "/" $base }}{{ $base }}{{ else }}{{ $base }}/{{ end }}
{{- end }}
