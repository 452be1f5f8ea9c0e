{{- define "gantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gantry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "gantry.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "gantry.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "gantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gantry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gantry.serviceAccountName" -}}
{{- default (include "gantry.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "gantry.buildNamespace" -}}
{{- .Values.buildNamespace.name }}
{{- end }}

{{/* PostgreSQL is used when a database URL Secret is given. */}}
{{- define "gantry.postgres" -}}
{{- if .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/* Several replicas elect the one that runs the engine. */}}
{{- define "gantry.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "gantry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
TOML from a values map. Helm's own toToml writes every number as a float (8.0), which Gantry's
integer keys refuse, so the file is written here: whole numbers as integers, keys quoted.
*/}}
{{- define "gantry.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 $v) (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "gantry.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }}, {{ end }}{{ toJson $k }} = {{ include "gantry.toml.value" (get $v $k) }}{{ end -}} }
{{- end -}}
{{- end -}}

{{- define "gantry.toml.isTables" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) (kindIs "map" (first .)) }}true{{ end -}}
{{- end -}}

{{- define "gantry.toml.table" -}}
{{- $path := .path -}}
{{- $m := .map -}}
{{- range $k := keys $m | sortAlpha }}
{{- $v := get $m $k }}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v) (include "gantry.toml.isTables" $v)) }}
{{ toJson $k }} = {{ include "gantry.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $m | sortAlpha }}
{{- $v := get $m $k }}
{{- $p := ternary (toJson $k) (printf "%s.%s" $path (toJson $k)) (eq $path "") }}
{{- if kindIs "map" $v }}

[{{ $p }}]
{{- include "gantry.toml.table" (dict "path" $p "map" $v) }}
{{- else if include "gantry.toml.isTables" $v }}
{{- range $e := $v }}

[[{{ $p }}]]
{{- include "gantry.toml.table" (dict "path" $p "map" $e) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
