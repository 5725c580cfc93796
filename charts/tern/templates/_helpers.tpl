{{/*
Names and labels.
*/}}
{{- define "tern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tern.fullname" -}}
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

{{- define "tern.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tern.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tern.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tern.labels" -}}
helm.sh/chart: {{ include "tern.chart" . }}
{{ include "tern.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tern
{{- end }}

{{- define "tern.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tern.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tern.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The resource name of a group: the full name for topology "all", else "<fullname>-<group>".
Argument: dict root, name.
*/}}
{{- define "tern.groupFullname" -}}
{{- if eq .root.Values.topology "all" }}
{{- include "tern.fullname" .root }}
{{- else }}
{{- printf "%s-%s" (include "tern.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The effective groups, as YAML: name -> groupDefaults merged with the group's own keys, with
`roles` (the roles the process runs) and `args` (the roles on the command line, empty for
all). Disabled groups are left out.
*/}}
{{- define "tern.groups" -}}
{{- $groups := dict }}
{{- if eq .Values.topology "all" }}
{{- $g := mergeOverwrite (deepCopy .Values.groupDefaults) (deepCopy .Values.allInOne) }}
{{- $_ := set $g "roles" (list "is" "gs" "ns" "js" "as") }}
{{- $_ := set $g "args" (list) }}
{{- $_ := set $groups "all" $g }}
{{- else }}
{{- range $name, $group := .Values.groups }}
{{- $g := mergeOverwrite (deepCopy $.Values.groupDefaults) (deepCopy $group) }}
{{- if $g.enabled }}
{{- $_ := set $g "args" $g.roles }}
{{- $_ := set $groups $name $g }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $groups }}
{{- end }}

{{/* The configuration section of each role. */}}
{{- define "tern.roleSections" -}}
is: identity-server
gs: gateway-server
ns: network-server
js: join-server
as: application-server
{{- end }}

{{/* Whether any enabled group runs the role given as .role ("true" or ""). */}}
{{- define "tern.runsRole" -}}
{{- $groups := fromYaml (include "tern.groups" .root) }}
{{- range $name, $g := $groups }}
{{- if has $.role $g.roles }}true{{ end }}
{{- end }}
{{- end }}

{{/* The most replicas a group may have: its replicas, or the autoscaler's maximum. */}}
{{- define "tern.maxReplicas" -}}
{{- if .autoscaling.enabled }}{{ .autoscaling.maxReplicas | int }}{{ else }}{{ .replicas | int }}{{ end }}
{{- end }}

{{/* Several tern processes ("true" or ""): split topology, or more than one replica. */}}
{{- define "tern.multiProcess" -}}
{{- if eq .Values.topology "split" }}true
{{- else }}
{{- $g := mergeOverwrite (deepCopy .Values.groupDefaults) (deepCopy .Values.allInOne) }}
{{- if gt (include "tern.maxReplicas" $g | int) 1 }}true{{ end }}
{{- end }}
{{- end }}

{{/* Whether the data directory is a PersistentVolumeClaim ("true" or ""). */}}
{{- define "tern.persistentData" -}}
{{- if and (eq .Values.topology "all") (not .Values.postgresql.enabled) .Values.persistence.enabled }}true{{ end }}
{{- end }}

{{/*
Checks what the schema cannot express: every violation stops the render with the value at
fault and the way out.
*/}}
{{- define "tern.validate" -}}
{{- $groups := fromYaml (include "tern.groups" .) }}
{{- $multi := include "tern.multiProcess" . }}
{{- $sections := fromYaml (include "tern.roleSections" .) }}
{{- if eq .Values.topology "split" }}
{{- if not $groups }}
{{- fail "groups: topology is \"split\" but no group is enabled" }}
{{- end }}
{{- $seen := dict }}
{{- range $name, $g := $groups }}
{{- if not $g.roles }}
{{- fail (printf "groups.%s.roles: a group runs at least one role" $name) }}
{{- end }}
{{- range $role := $g.roles }}
{{- if hasKey $seen $role }}
{{- fail (printf "groups.%s.roles: role %q already runs in group %q; each role runs in one group" $name $role (get $seen $role)) }}
{{- end }}
{{- $_ := set $seen $role $name }}
{{- end }}
{{- end }}
{{- if not .Values.etcd.enabled }}
{{- range $role, $section := $sections }}
{{- if and (not (hasKey $seen $role)) (not (hasKey $.Values.cluster.externalAddresses $section)) }}
{{- fail (printf "cluster.externalAddresses.%s: role %q runs in no group, so its address is needed (or enable etcd)" $section $role) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name, $g := $groups }}
{{- $where := ternary "allInOne" (printf "groups.%s" $name) (eq $.Values.topology "all") }}
{{- if and $g.autoscaling.enabled (or (has "ns" $g.roles) (has "js" $g.roles)) }}
{{- fail (printf "%s.autoscaling.enabled: the group runs ns or js, which own per-instance state; only groups of gs, as, is autoscale" $where) }}
{{- end }}
{{- if and $g.autoscaling.enabled (gt ($g.autoscaling.minReplicas | int) ($g.autoscaling.maxReplicas | int)) }}
{{- fail (printf "%s.autoscaling: minReplicas %v is above maxReplicas %v" $where $g.autoscaling.minReplicas $g.autoscaling.maxReplicas) }}
{{- end }}
{{- if and (gt (include "tern.maxReplicas" $g | int) 1) (or (has "gs" $g.roles) (has "ns" $g.roles)) (not $.Values.etcd.enabled) }}
{{- fail (printf "%s: more than one replica running gs or ns needs etcd.enabled (downlinks must reach the Gateway Server holding the gateway, and devices are sharded over the live Network Servers)" $where) }}
{{- end }}
{{- end }}
{{- if and .Values.etcd.enabled .Values.cluster.externalAddresses }}
{{- fail "cluster.externalAddresses: with etcd.enabled every process registers its own address; static addresses and etcd are exclusive" }}
{{- end }}
{{- if and .Values.etcd.enabled (not .Values.etcd.endpoints) }}
{{- fail "etcd.endpoints: at least one etcd client URL is needed, e.g. [\"http://etcd:2379\"]" }}
{{- end }}
{{- if and $multi (not .Values.postgresql.enabled) }}
{{- fail "postgresql.enabled: several tern processes (topology split, or more than one replica) share their state in PostgreSQL; the embedded store belongs to one process" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- if and $multi (not .Values.secrets.clusterKeys) (not .Values.secrets.networkServerApiKey) }}
{{- fail "secrets.clusterKeys: several tern processes need a shared cluster key (at least 16 characters), or set secrets.existingSecret" }}
{{- end }}
{{- if .Values.postgresql.enabled }}
{{- $runs := dict }}
{{- range $role := list "ns" "js" "as" }}
{{- $_ := set $runs $role (include "tern.runsRole" (dict "root" $ "role" $role)) }}
{{- end }}
{{- if not .Values.secrets.postgresUrl }}
{{- fail "secrets.postgresUrl: required with postgresql.enabled (or set secrets.existingSecret with TERN_STORE__POSTGRES__URL)" }}
{{- end }}
{{- if and $runs.js (not .Values.secrets.rootKeyKek) }}
{{- fail "secrets.rootKeyKek: required with postgresql.enabled: the data directory is not kept, and root keys stored in PostgreSQL are encrypted with it" }}
{{- end }}
{{- $nsLabel := dig "join-server" "ns-kek-label" "ns:local" .Values.config }}
{{- if and $nsLabel (or $runs.ns $runs.js) (not .Values.secrets.networkServerKek) }}
{{- fail (printf "secrets.networkServerKek: required with postgresql.enabled: session keys stored in PostgreSQL are wrapped under KEK %q" $nsLabel) }}
{{- end }}
{{- if and (or $runs.as $runs.js) (not .Values.secrets.applicationServerKek) }}
{{- fail "secrets.applicationServerKek: required with postgresql.enabled: AppSKeys stored in PostgreSQL are wrapped under it" }}
{{- end }}
{{- end }}
{{- if and .Values.etcd.enabled .Values.etcd.username (not .Values.secrets.etcdPassword) }}
{{- fail "secrets.etcdPassword: required when etcd.username is set" }}
{{- end }}
{{- end }}
{{- $asLabel := dig "application-server" "kek-label" "as:local" .Values.config }}
{{- $jsAsLabel := dig "join-server" "as-kek-label" "as:local" .Values.config }}
{{- if and (ne $asLabel $jsAsLabel) (include "tern.runsRole" (dict "root" . "role" "as")) (include "tern.runsRole" (dict "root" . "role" "js")) }}
{{- fail (printf "config.application-server.kek-label %q differs from config.join-server.as-kek-label %q: the Join Server would wrap AppSKeys under a KEK this Application Server does not have" $asLabel $jsAsLabel) }}
{{- end }}
{{- end }}

{{/*
The tern.toml of a group, as a dict: what the chart manages, then `config` on top.
Argument: dict root, name, group.
*/}}
{{- define "tern.groupConfig" -}}
{{- $v := .root.Values }}
{{- $c := dict }}
{{- if $v.postgresql.enabled }}
{{- $pg := dict "pool-size" $v.postgresql.poolSize "connect-timeout" $v.postgresql.connectTimeout }}
{{- if $v.postgresql.schema }}{{ $_ := set $pg "schema" $v.postgresql.schema }}{{ end }}
{{- $_ := set $c "store" (dict "backend" "postgres" "postgres" $pg) }}
{{- end }}
{{- $cluster := dict }}
{{- if $v.etcd.enabled }}
{{- $etcd := dict "endpoints" $v.etcd.endpoints "prefix" $v.etcd.prefix "lease-ttl" $v.etcd.leaseTtl }}
{{- if $v.etcd.username }}{{ $_ := set $etcd "username" $v.etcd.username }}{{ end }}
{{- $_ := set $cluster "etcd" $etcd }}
{{- else if eq $v.topology "split" }}
{{- $groups := fromYaml (include "tern.groups" .root) }}
{{- $sections := fromYaml (include "tern.roleSections" .root) }}
{{- range $role, $section := $sections }}
{{- if not (has $role $.group.roles) }}
{{- range $other, $g := $groups }}
{{- if has $role $g.roles }}
{{- $_ := set $cluster $section (printf "http://%s:1884" (include "tern.groupFullname" (dict "root" $.root "name" $other))) }}
{{- end }}
{{- end }}
{{- if hasKey $v.cluster.externalAddresses $section }}
{{- $_ := set $cluster $section (get $v.cluster.externalAddresses $section) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if $cluster }}{{ $_ := set $c "cluster" $cluster }}{{ end }}
{{- if $v.nats.enabled }}
{{- $nats := dict "url" $v.nats.url "subject-prefix" $v.nats.subjectPrefix "encoding" $v.nats.encoding }}
{{- if or $v.nats.credentialsSecret.name $v.secrets.natsCredentials }}
{{- $_ := set $nats "credentials" "/etc/tern/nats/nats.creds" }}
{{- end }}
{{- $_ := set $c "events" (dict "nats" $nats) }}
{{- end }}
{{- if and (has "gs" .group.roles) $v.basicStation.tls.secretName }}
{{- $_ := set $c "gateway-server" (dict "basic-station" (dict "tls-cert" "/etc/tern/basic-station-tls/tls.crt" "tls-key" "/etc/tern/basic-station-tls/tls.key")) }}
{{- end }}
{{- if and (has "as" .group.roles) $v.mqtt.tls.secretName }}
{{- $_ := set $c "application-server" (dict "mqtt" (dict "cert" "/etc/tern/mqtt-tls/tls.crt" "key" "/etc/tern/mqtt-tls/tls.key")) }}
{{- end }}
{{- toYaml (mergeOverwrite $c (deepCopy $v.config)) }}
{{- end }}

{{/*
TOML rendering. Helm reads every number in values as a float, so whole numbers are written
as integers (tern refuses 1.0 where it expects an integer; a float option accepts 15).
*/}}
{{- define "tern.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "tern.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}{{ if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "tern.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" . }}{ {{- range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ include "tern.toml.key" $k }} = {{ include "tern.toml.value" (get $ $k) }}{{ end }} }
{{- else }}{{ fail (printf "config: cannot write %v (%s) in TOML" . (kindOf .)) }}
{{- end }}
{{- end }}

{{/* A table: its plain keys, then its sub-tables. Argument: dict prefix, table. */}}
{{- define "tern.toml.table" -}}
{{- $prefix := .prefix }}
{{- range $k, $val := .table }}
{{- if and (not (kindIs "map" $val)) (not (kindIs "invalid" $val)) }}
{{ include "tern.toml.key" $k }} = {{ include "tern.toml.value" $val }}
{{- end }}
{{- end }}
{{- range $k, $val := .table }}
{{- if kindIs "map" $val }}
{{- $name := include "tern.toml.key" $k }}
{{- if $prefix }}{{ $name = printf "%s.%s" $prefix $name }}{{ end }}

[{{ $name }}]
{{- include "tern.toml.table" (dict "prefix" $name "table" $val) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret holding the TERN_* variables, or "" when there is none. */}}
{{- define "tern.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if include "tern.secretData" . }}
{{- include "tern.fullname" . }}
{{- end }}
{{- end }}

{{/*
The chart's Secret data: TERN_* variables in the syntax of tern's environment overrides.
Strings are quoted so that hex made only of digits stays a string.
*/}}
{{- define "tern.secretData" -}}
{{- $s := .Values.secrets }}
{{- $nsLabel := dig "join-server" "ns-kek-label" "ns:local" .Values.config }}
{{- $asLabel := dig "application-server" "kek-label" "as:local" .Values.config }}
{{- $jsAsLabel := dig "join-server" "as-kek-label" "as:local" .Values.config }}
{{- if not $s.existingSecret }}
{{- if $s.clusterKeys }}
TERN_CLUSTER__KEYS: {{ toJson $s.clusterKeys | b64enc | quote }}
{{- end }}
{{- if $s.rootKeyKek }}
TERN_JOIN_SERVER__ROOT_KEY_KEK: {{ toJson $s.rootKeyKek | b64enc | quote }}
{{- end }}
{{- $jsKeks := dict }}
{{- if and $s.networkServerKek $nsLabel }}
{{- $_ := set $jsKeks $nsLabel $s.networkServerKek }}
TERN_NETWORK_SERVER__KEY_ENCRYPTION_KEYS: {{ include "tern.toml.value" (dict $nsLabel $s.networkServerKek) | b64enc | quote }}
{{- end }}
{{- if $s.applicationServerKek }}
{{- $_ := set $jsKeks $jsAsLabel $s.applicationServerKek }}
TERN_APPLICATION_SERVER__KEKS: {{ include "tern.toml.value" (dict $asLabel $s.applicationServerKek) | b64enc | quote }}
{{- end }}
{{- if $jsKeks }}
TERN_JOIN_SERVER__KEKS: {{ include "tern.toml.value" $jsKeks | b64enc | quote }}
{{- end }}
{{- if and .Values.postgresql.enabled $s.postgresUrl }}
TERN_STORE__POSTGRES__URL: {{ toJson $s.postgresUrl | b64enc | quote }}
{{- end }}
{{- if and .Values.etcd.enabled $s.etcdPassword }}
TERN_CLUSTER__ETCD__PASSWORD: {{ toJson $s.etcdPassword | b64enc | quote }}
{{- end }}
{{- if $s.tokenSigningKey }}
TERN_IDENTITY_SERVER__TOKEN_SIGNING_KEY: {{ toJson $s.tokenSigningKey | b64enc | quote }}
{{- end }}
{{- if $s.networkServerApiKey }}
TERN_APPLICATION_SERVER__NETWORK_SERVER_API_KEY: {{ toJson $s.networkServerApiKey | b64enc | quote }}
{{- end }}
{{- range $k, $val := $s.extra }}
{{ $k }}: {{ $val | toString | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The NATS credentials Secret and key, or "" when there is none. */}}
{{- define "tern.natsSecretName" -}}
{{- if .Values.nats.credentialsSecret.name }}
{{- .Values.nats.credentialsSecret.name }}
{{- else if .Values.secrets.natsCredentials }}
{{- printf "%s-nats" (include "tern.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tern.natsSecretKey" -}}
{{- if .Values.nats.credentialsSecret.name }}{{ .Values.nats.credentialsSecret.key }}{{ else }}nats.creds{{ end }}
{{- end }}
