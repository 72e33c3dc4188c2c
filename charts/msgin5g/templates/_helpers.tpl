{{/*
Names, labels and the pieces the component templates share.
*/}}

{{- define "msgin5g.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "msgin5g.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "msgin5g.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name of a component: <fullname>-<component>, at most 63 characters. */}}
{{- define "msgin5g.componentName" -}}
{{- printf "%s-%s" (include "msgin5g.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "msgin5g.selectorLabels" -}}
app.kubernetes.io/name: {{ include "msgin5g.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "msgin5g.labels" -}}
helm.sh/chart: {{ include "msgin5g.chart" . }}
{{ include "msgin5g.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: msgin5g
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; dict: root, component. */}}
{{- define "msgin5g.componentSelectorLabels" -}}
{{ include "msgin5g.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects; dict: root, component. */}}
{{- define "msgin5g.componentLabels" -}}
{{ include "msgin5g.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "msgin5g.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "msgin5g.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference; dict: root, image (repository, tag, digest). */}}
{{- define "msgin5g.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The any-address of the pod network, and an address for a port on it. */}}
{{- define "msgin5g.anyHost" -}}
{{- if eq .Values.ipFamily "IPv6" }}::{{ else }}0.0.0.0{{ end -}}
{{- end -}}

{{- define "msgin5g.bind" -}}
{{- if eq .root.Values.ipFamily "IPv6" -}}
{{- printf "[::]:%v" .port -}}
{{- else -}}
{{- printf "0.0.0.0:%v" .port -}}
{{- end -}}
{{- end -}}

{{/* What an edge advertises to the router: its pod IP (from the POD_IP env var). */}}
{{- define "msgin5g.advertise" -}}
{{- if eq .root.Values.ipFamily "IPv6" -}}
{{- printf "[$(POD_IP)]:%v" .port -}}
{{- else -}}
{{- printf "$(POD_IP):%v" .port -}}
{{- end -}}
{{- end -}}

{{/*
A password (or key) generated once per render and reused by every template that needs it (the
Secret, the URL built from it, the checksum annotations): kept in the release's values map,
which all templates share. An existing Secret in the cluster wins, so upgrades keep it.
dict: root, key (cache key), secret (name of the Secret), field (key in the Secret),
optional kind: "ecdsa" (a PEM EC P-256 private key), "bytes" (base64 of `length` random
bytes) or the default, random letters and digits (optional length, 32 by default).
*/}}
{{- define "msgin5g.generatedPassword" -}}
{{- $cache := .root.Values -}}
{{- $cacheKey := printf "__generated_%s" .key -}}
{{- if not (hasKey $cache $cacheKey) -}}
{{- $value := "" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .field) -}}
{{- $value = index $existing.data .field | b64dec -}}
{{- else if eq (get . "kind") "ecdsa" -}}
{{- $value = genPrivateKey "ecdsa" -}}
{{- else if eq (get . "kind") "bytes" -}}
{{- $value = randBytes (int (get . "length" | default 32)) -}}
{{- else -}}
{{- $value = randAlphaNum (int (get . "length" | default 32)) -}}
{{- end -}}
{{- $_ := set $cache $cacheKey $value -}}
{{- end -}}
{{- index $cache $cacheKey -}}
{{- end -}}

{{/* ---------------------------------------------------------------- Redis */}}

{{- define "msgin5g.redis.fullname" -}}
{{- include "msgin5g.componentName" (dict "root" . "component" "redis") -}}
{{- end -}}

{{- define "msgin5g.redis.secretName" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- include "msgin5g.redis.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "msgin5g.redis.password" -}}
{{- if .Values.redis.auth.password -}}
{{- .Values.redis.auth.password -}}
{{- else -}}
{{- include "msgin5g.generatedPassword" (dict "root" . "key" "redis" "secret" (include "msgin5g.redis.fullname" .) "field" "redis-password") -}}
{{- end -}}
{{- end -}}

{{/* Name of the chart's Secret with the services' credentials (Redis URL, MQTT password). */}}
{{- define "msgin5g.credentialsName" -}}
{{- include "msgin5g.componentName" (dict "root" . "component" "credentials") -}}
{{- end -}}

{{/* Does the chart itself store the Redis URL (in the credentials Secret)? */}}
{{- define "msgin5g.redisUrlInCredentials" -}}
{{- if .Values.redis.enabled -}}
{{- if not .Values.redis.auth.existingSecret }}true{{ end -}}
{{- else if not .Values.externalRedis.existingSecret -}}
true
{{- end -}}
{{- end -}}

{{- define "msgin5g.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://:%s@%s:6379/0" (include "msgin5g.redis.password" . | urlquery) (include "msgin5g.redis.fullname" .) -}}
{{- else -}}
{{- .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{/* Environment entries that give a service MSGIN5G_REDIS_URL. */}}
{{- define "msgin5g.redisEnv" -}}
{{- if and .Values.redis.enabled .Values.redis.auth.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.auth.existingSecret }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
- name: MSGIN5G_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "msgin5g.redis.fullname" .) | quote }}
{{- else if and (not .Values.redis.enabled) .Values.externalRedis.existingSecret }}
- name: MSGIN5G_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- else }}
- name: MSGIN5G_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "msgin5g.credentialsName" . }}
      key: redis-url
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- MQTT broker */}}

{{- define "msgin5g.mosquitto.fullname" -}}
{{- include "msgin5g.componentName" (dict "root" . "component" "mosquitto") -}}
{{- end -}}

{{- define "msgin5g.mosquitto.edgePassword" -}}
{{- if .Values.mosquitto.auth.edge.password -}}
{{- .Values.mosquitto.auth.edge.password -}}
{{- else -}}
{{- include "msgin5g.generatedPassword" (dict "root" . "key" "mqttEdge" "secret" (include "msgin5g.credentialsName" .) "field" "mqtt-password") -}}
{{- end -}}
{{- end -}}

{{/* Secret name and key of the mqtt-edge's broker password. */}}
{{- define "msgin5g.mqttPasswordRef" -}}
{{- if .Values.mosquitto.enabled -}}
{{- if .Values.mosquitto.auth.edge.existingSecret -}}
name: {{ .Values.mosquitto.auth.edge.existingSecret }}
key: {{ .Values.mosquitto.auth.edge.existingSecretPasswordKey }}
{{- else -}}
name: {{ include "msgin5g.credentialsName" . }}
key: mqtt-password
{{- end -}}
{{- else if .Values.externalBroker.existingSecret -}}
name: {{ .Values.externalBroker.existingSecret }}
key: {{ .Values.externalBroker.existingSecretPasswordKey }}
{{- else -}}
name: {{ include "msgin5g.credentialsName" . }}
key: mqtt-password
{{- end -}}
{{- end -}}

{{/* Does the chart itself store the mqtt-edge's password (in the credentials Secret)? */}}
{{- define "msgin5g.mqttPasswordInCredentials" -}}
{{- if .Values.mosquitto.enabled -}}
{{- if not .Values.mosquitto.auth.edge.existingSecret }}true{{ end -}}
{{- else if not .Values.externalBroker.existingSecret -}}
true
{{- end -}}
{{- end -}}

{{- define "msgin5g.mqttPassword" -}}
{{- if .Values.mosquitto.enabled -}}
{{- include "msgin5g.mosquitto.edgePassword" . -}}
{{- else -}}
{{- .Values.externalBroker.password -}}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- registry auth */}}

{{/* Where the registry's auth Secret (clients.json, signing-key.pem) is mounted. */}}
{{- define "msgin5g.auth.dir" -}}
/etc/msgin5g/auth
{{- end -}}

{{- define "msgin5g.auth.chartSecretName" -}}
{{- include "msgin5g.componentName" (dict "root" . "component" "registry-auth") -}}
{{- end -}}

{{/* Name of the Secret with clients.json, signing-key.pem and admin-token. */}}
{{- define "msgin5g.auth.secretName" -}}
{{- .Values.registry.auth.existingSecret | default (include "msgin5g.auth.chartSecretName" .) -}}
{{- end -}}

{{/* Does the chart itself create that Secret? */}}
{{- define "msgin5g.auth.inChart" -}}
{{- if and .Values.registry.auth.enabled (not .Values.registry.auth.existingSecret) }}true{{ end -}}
{{- end -}}

{{/* clients.json: the AS clients of the token endpoint. */}}
{{- define "msgin5g.auth.clientsJson" -}}
{{- $clients := list -}}
{{- range .Values.registry.auth.clients -}}
{{- $clients = append $clients (pick . "clientId" "clientSecret" "asSvcIds" "scopes") -}}
{{- end -}}
{{- dict "clients" $clients | toPrettyJson -}}
{{- end -}}

{{/* The ES256 signing key(s), PEM: generated at install, then read back from the cluster. */}}
{{- define "msgin5g.auth.signingKey" -}}
{{- include "msgin5g.generatedPassword" (dict "root" . "key" "authSigningKey" "secret" (include "msgin5g.auth.chartSecretName" .) "field" "signing-key.pem" "kind" "ecdsa") -}}
{{- end -}}

{{/* The management API's bearer token: generated at install, then read back. */}}
{{- define "msgin5g.auth.adminToken" -}}
{{- include "msgin5g.generatedPassword" (dict "root" . "key" "authAdminToken" "secret" (include "msgin5g.auth.chartSecretName" .) "field" "admin-token" "length" 40) -}}
{{- end -}}

{{/* Checksum of the chart's auth Secret (a change rolls the registry). */}}
{{- define "msgin5g.auth.checksum" -}}
{{- list (include "msgin5g.auth.clientsJson" .) (include "msgin5g.auth.signingKey" .) (include "msgin5g.auth.adminToken" .) | join "\n" | sha256sum -}}
{{- end -}}

{{/* Environment entries of the registry's auth (the admin token from the Secret). */}}
{{- define "msgin5g.auth.env" -}}
{{- if .Values.registry.auth.enabled -}}
- name: MSGIN5G_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "msgin5g.auth.secretName" . }}
      key: admin-token
{{- end -}}
{{- end -}}

{{- define "msgin5g.auth.volume" -}}
{{- if .Values.registry.auth.enabled -}}
- name: auth
  secret:
    secretName: {{ include "msgin5g.auth.secretName" . }}
    items:
      - key: clients.json
        path: clients.json
      - key: signing-key.pem
        path: signing-key.pem
{{- end -}}
{{- end -}}

{{- define "msgin5g.auth.mount" -}}
{{- if .Values.registry.auth.enabled -}}
- name: auth
  mountPath: {{ include "msgin5g.auth.dir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- device credentials (registry) */}}

{{/* Where the registry's key-encryption key is mounted (one file, `kek`). */}}
{{- define "msgin5g.kek.dir" -}}
/etc/msgin5g/credentials
{{- end -}}

{{- define "msgin5g.kek.chartSecretName" -}}
{{- include "msgin5g.componentName" (dict "root" . "component" "registry-kek") -}}
{{- end -}}

{{/* Does the chart itself create (and generate) the KEK Secret? */}}
{{- define "msgin5g.kek.inChart" -}}
{{- with .Values.registry.credentials -}}
{{- if and .enabled (not .existingSecret) }}true{{ end -}}
{{- end -}}
{{- end -}}

{{- define "msgin5g.kek.secretName" -}}
{{- .Values.registry.credentials.existingSecret | default (include "msgin5g.kek.chartSecretName" .) -}}
{{- end -}}

{{/* The KEK (base64 of 32 random bytes): generated at install, then read back (lookup). */}}
{{- define "msgin5g.kek.value" -}}
{{- include "msgin5g.generatedPassword" (dict "root" . "key" "credentialsKek" "secret" (include "msgin5g.kek.chartSecretName" .) "field" "kek" "kind" "bytes" "length" 32) -}}
{{- end -}}

{{- define "msgin5g.kek.volume" -}}
{{- if .Values.registry.credentials.enabled -}}
- name: credentials-kek
  secret:
    secretName: {{ include "msgin5g.kek.secretName" . }}
    items:
      - key: {{ ternary .Values.registry.credentials.existingSecretKey "kek" (not (empty .Values.registry.credentials.existingSecret)) }}
        path: kek
{{- end -}}
{{- end -}}

{{- define "msgin5g.kek.mount" -}}
{{- if .Values.registry.credentials.enabled -}}
- name: credentials-kek
  mountPath: {{ include "msgin5g.kek.dir" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- AS callbacks (router) */}}

{{- define "msgin5g.asCaVolume" -}}
{{- with .Values.router.asTlsCaSecret -}}
- name: as-ca
  secret:
    secretName: {{ . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end -}}
{{- end -}}

{{- define "msgin5g.asCaMount" -}}
{{- if .Values.router.asTlsCaSecret -}}
- name: as-ca
  mountPath: /etc/msgin5g/tls/as
  readOnly: true
{{- end -}}
{{- end -}}

{{/* Join YAML list fragments (some may be empty) into one list. */}}
{{- define "msgin5g.joinLists" -}}
{{- $parts := list -}}
{{- range . -}}
{{- if trim . -}}
{{- $parts = append $parts (trim .) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $parts -}}
{{- end -}}

{{/* ---------------------------------------------------------------- configuration */}}

{{/* Settings every service reads (ConfigMap data). */}}
{{- define "msgin5g.config.common" -}}
MSGIN5G_LOG_LEVEL: {{ .Values.config.logLevel | quote }}
MSGIN5G_REDIS_PREFIX: {{ .Values.config.redisPrefix | quote }}
MSGIN5G_GRPC_TIMEOUT: {{ include "msgin5g.num" .Values.config.grpcTimeout | quote }}
MSGIN5G_METRICS_HOST: {{ ternary (include "msgin5g.anyHost" .) "127.0.0.1" .Values.metrics.enabled | quote }}
MSGIN5G_METRICS_PORT: {{ include "msgin5g.num" .Values.metrics.port | quote }}
MSGIN5G_REDIS_CLUSTER: {{ and (not .Values.redis.enabled) .Values.externalRedis.cluster | toString | quote }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.enabled .Values.externalRedis.tls.existingCaSecret }}
MSGIN5G_REDIS_TLS_CA_FILE: "/etc/msgin5g/tls/redis/ca.crt"
{{- end }}
{{- end -}}

{{- define "msgin5g.routerAddr" -}}
{{- printf "%s:%v" (include "msgin5g.componentName" (dict "root" . "component" "router")) .Values.router.grpcPort -}}
{{- end -}}

{{- define "msgin5g.registryAddr" -}}
{{- printf "%s:%v" (include "msgin5g.componentName" (dict "root" . "component" "registry")) .Values.registry.grpcPort -}}
{{- end -}}

{{- define "msgin5g.config.registry" -}}
{{ include "msgin5g.config.common" . }}
MSGIN5G_HTTP_HOST: {{ include "msgin5g.anyHost" . | quote }}
MSGIN5G_HTTP_PORT: {{ include "msgin5g.num" .Values.registry.httpPort | quote }}
MSGIN5G_GRPC_BIND: {{ include "msgin5g.bind" (dict "root" . "port" .Values.registry.grpcPort) | quote }}
MSGIN5G_ROUTER_ADDR: {{ include "msgin5g.routerAddr" . | quote }}
MSGIN5G_MIN_LIFETIME: {{ include "msgin5g.num" .Values.config.registry.minLifetime | quote }}
MSGIN5G_MAX_LIFETIME: {{ include "msgin5g.num" .Values.config.registry.maxLifetime | quote }}
MSGIN5G_HTTP_MAX_BODY: {{ include "msgin5g.num" .Values.config.registry.httpMaxBody | quote }}
MSGIN5G_MAX_PAYLOAD: {{ include "msgin5g.num" .Values.config.edge.maxPayload | quote }}
{{- if .Values.registry.credentials.enabled }}
MSGIN5G_CREDENTIALS_KEK_FILE: {{ printf "%s/kek" (include "msgin5g.kek.dir" .) | quote }}
MSGIN5G_CREDENTIALS_GRACE: {{ include "msgin5g.num" .Values.registry.credentials.grace | quote }}
{{- end }}
{{- $a := .Values.registry.auth }}
MSGIN5G_AUTH_ENABLED: {{ $a.enabled | toString | quote }}
{{- if $a.enabled }}
MSGIN5G_AUTH_CLIENTS_FILE: {{ printf "%s/clients.json" (include "msgin5g.auth.dir" .) | quote }}
MSGIN5G_AUTH_SIGNING_KEY_FILE: {{ printf "%s/signing-key.pem" (include "msgin5g.auth.dir" .) | quote }}
MSGIN5G_AUTH_TOKEN_TTL: {{ include "msgin5g.num" $a.tokenTtl | quote }}
MSGIN5G_AUTH_ISSUER: {{ $a.issuer | quote }}
MSGIN5G_AS_RATE_LIMIT: {{ include "msgin5g.num" $a.rateLimit | quote }}
{{- end }}
{{- end -}}

{{- define "msgin5g.config.router" -}}
{{- $c := .Values.config.router -}}
{{ include "msgin5g.config.common" . }}
MSGIN5G_GRPC_BIND: {{ include "msgin5g.bind" (dict "root" . "port" .Values.router.grpcPort) | quote }}
MSGIN5G_ROUTE_LEASE_TTL: {{ include "msgin5g.num" $c.routeLeaseTtl | quote }}
MSGIN5G_DEFAULT_EXPIRY: {{ include "msgin5g.num" $c.defaultExpiry | quote }}
MSGIN5G_STATE_RETENTION: {{ include "msgin5g.num" $c.stateRetention | quote }}
MSGIN5G_INBOX_LIMIT: {{ include "msgin5g.num" $c.inboxLimit | quote }}
MSGIN5G_RETRY_BASE: {{ include "msgin5g.num" $c.retryBase | quote }}
MSGIN5G_RETRY_MAX: {{ include "msgin5g.num" $c.retryMax | quote }}
MSGIN5G_RETRY_LIMIT: {{ include "msgin5g.num" $c.retryLimit | quote }}
MSGIN5G_SWEEP_INTERVAL: {{ include "msgin5g.num" $c.sweepInterval | quote }}
MSGIN5G_FANOUT_PAGE: {{ include "msgin5g.num" $c.fanoutPage | quote }}
MSGIN5G_FANOUT_RATE: {{ include "msgin5g.num" $c.fanoutRate | quote }}
MSGIN5G_FANOUT_CLAIM_AFTER: {{ include "msgin5g.num" $c.fanoutClaimAfter | quote }}
MSGIN5G_MAX_PENDING: {{ include "msgin5g.num" $c.maxPending | quote }}
MSGIN5G_REASSEMBLY_TIMEOUT: {{ include "msgin5g.num" $c.reassemblyTimeout | quote }}
MSGIN5G_MAX_REASSEMBLIES: {{ include "msgin5g.num" $c.maxReassemblies | quote }}
MSGIN5G_MAX_PAYLOAD: {{ include "msgin5g.num" .Values.config.edge.maxPayload | quote }}
MSGIN5G_AS_TIMEOUT: {{ include "msgin5g.num" .Values.router.asTimeout | quote }}
{{- if .Values.router.asTlsCaSecret }}
MSGIN5G_AS_TLS_CA_FILE: "/etc/msgin5g/tls/as/ca.crt"
{{- end }}
{{- end -}}

{{/* Settings of both edges; dict: root, grpcPort. */}}
{{- define "msgin5g.config.edge" -}}
{{- $root := .root -}}
{{ include "msgin5g.config.common" $root }}
MSGIN5G_ROUTER_ADDR: {{ include "msgin5g.routerAddr" $root | quote }}
MSGIN5G_REGISTRY_ADDR: {{ include "msgin5g.registryAddr" $root | quote }}
MSGIN5G_EDGE_GRPC_BIND: {{ include "msgin5g.bind" (dict "root" $root "port" .grpcPort) | quote }}
MSGIN5G_EDGE_HEARTBEAT_INTERVAL: {{ include "msgin5g.num" $root.Values.config.edge.heartbeatInterval | quote }}
MSGIN5G_MAX_PAYLOAD: {{ include "msgin5g.num" $root.Values.config.edge.maxPayload | quote }}
MSGIN5G_UE_RATE: {{ include "msgin5g.num" $root.Values.config.edge.ueRate | quote }}
MSGIN5G_UE_BURST: {{ include "msgin5g.num" $root.Values.config.edge.ueBurst | quote }}
{{- end -}}

{{- define "msgin5g.config.coapEdge" -}}
{{ include "msgin5g.config.edge" (dict "root" . "grpcPort" .Values.coapEdge.grpcPort) }}
MSGIN5G_COAP_HOST: {{ include "msgin5g.anyHost" . | quote }}
MSGIN5G_COAP_PORT: {{ include "msgin5g.num" .Values.coapEdge.coapPort | quote }}
MSGIN5G_COAP_NOTIFICATION_BYTES: {{ include "msgin5g.num" .Values.config.coapEdge.notificationBytes | quote }}
MSGIN5G_LEASE_RENEW_INTERVAL: {{ include "msgin5g.num" .Values.config.coapEdge.leaseRenewInterval | quote }}
MSGIN5G_PUSH_TIMEOUT: {{ include "msgin5g.num" .Values.config.coapEdge.pushTimeout | quote }}
{{- $sec := .Values.coapEdge.security }}
MSGIN5G_COAP_INSECURE: {{ $sec.insecure | toString | quote }}
MSGIN5G_COAP_OSCORE: {{ $sec.oscore | toString | quote }}
MSGIN5G_COAP_DTLS: {{ ne (int $sec.dtlsPort) 0 | toString | quote }}
MSGIN5G_COAP_DTLS_PORT: {{ include "msgin5g.num" $sec.dtlsPort | quote }}
MSGIN5G_COAP_DTLS_MAX_SESSIONS: {{ include "msgin5g.num" $sec.dtlsMaxSessions | quote }}
MSGIN5G_COAP_DTLS_IDLE_TIMEOUT: {{ include "msgin5g.num" $sec.dtlsIdleTimeout | quote }}
MSGIN5G_COAP_KEYS_TTL: {{ include "msgin5g.num" $sec.keysTtl | quote }}
{{- end -}}

{{- define "msgin5g.config.mqttEdge" -}}
{{- $c := .Values.config.mqttEdge -}}
{{ include "msgin5g.config.edge" (dict "root" . "grpcPort" .Values.mqttEdge.grpcPort) }}
{{- if .Values.mosquitto.enabled }}
MSGIN5G_MQTT_HOST: {{ printf "%s-edge" (include "msgin5g.mosquitto.fullname" .) | quote }}
MSGIN5G_MQTT_PORT: {{ include "msgin5g.num" .Values.mosquitto.edgePort | quote }}
MSGIN5G_MQTT_USERNAME: {{ .Values.mosquitto.auth.edge.username | quote }}
MSGIN5G_MQTT_TLS: "false"
{{- else }}
MSGIN5G_MQTT_HOST: {{ .Values.externalBroker.host | quote }}
MSGIN5G_MQTT_PORT: {{ include "msgin5g.num" .Values.externalBroker.port | quote }}
MSGIN5G_MQTT_USERNAME: {{ .Values.externalBroker.username | quote }}
MSGIN5G_MQTT_TLS: {{ .Values.externalBroker.tls.enabled | toString | quote }}
{{- if and .Values.externalBroker.tls.enabled .Values.externalBroker.tls.existingCaSecret }}
MSGIN5G_MQTT_TLS_CA_FILE: "/etc/msgin5g/tls/mqtt/ca.crt"
{{- end }}
{{- end }}
MSGIN5G_MQTT_PREFIX: {{ $c.prefix | quote }}
MSGIN5G_MQTT_SHARE_GROUP: {{ $c.shareGroup | quote }}
MSGIN5G_MQTT_SESSION_EXPIRY: {{ include "msgin5g.num" $c.sessionExpiry | quote }}
MSGIN5G_MQTT_AGGREGATE_BYTES: {{ include "msgin5g.num" $c.aggregateBytes | quote }}
MSGIN5G_MQTT_KEEPALIVE: {{ include "msgin5g.num" $c.keepalive | quote }}
MSGIN5G_MQTT_WORKERS: {{ include "msgin5g.num" $c.workers | quote }}
MSGIN5G_MQTT_UE_BACKLOG: {{ include "msgin5g.num" $c.ueBacklog | quote }}
MSGIN5G_MQTT_BACKLOG_BYTES: {{ include "msgin5g.num" $c.backlogBytes | quote }}
{{- end -}}

{{/* ---------------------------------------------------------------- pods */}}

{{/* Checksum of the credentials the services read (changes roll the pods). */}}
{{- define "msgin5g.credentialsChecksum" -}}
{{- $parts := list -}}
{{- if include "msgin5g.redisUrlInCredentials" . -}}
{{- $parts = append $parts (include "msgin5g.redisUrl" .) -}}
{{- end -}}
{{- if include "msgin5g.mqttPasswordInCredentials" . -}}
{{- $parts = append $parts (include "msgin5g.mqttPassword" .) -}}
{{- end -}}
{{- $parts = append $parts (include "msgin5g.redisEnv" .) -}}
{{- $parts = append $parts (include "msgin5g.mqttPasswordRef" .) -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}

{{/* Affinity of a component: its own, or the default anti-affinity; dict: root, component, values. */}}
{{- define "msgin5g.affinity" -}}
{{- if .values.affinity -}}
{{ toYaml .values.affinity }}
{{- else if eq .root.Values.defaultPodAntiAffinity "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "msgin5g.componentSelectorLabels" . | nindent 12 }}
{{- else if eq .root.Values.defaultPodAntiAffinity "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "msgin5g.componentSelectorLabels" . | nindent 10 }}
{{- end -}}
{{- end -}}

{{/*
The Deployment of one of the four services. dict:
  root, key (values key), component (name), ports (list of container ports),
  probe (the probe handler, YAML), readinessProbe (optional handler for readiness),
  env (extra env entries, YAML), config (ConfigMap data, for the checksum),
  annotations (extra pod annotations, YAML), volumes / volumeMounts (extra, YAML).
*/}}
{{- define "msgin5g.deployment" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .key -}}
{{- $name := include "msgin5g.componentName" (dict "root" $root "component" .component) -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "msgin5g.componentLabels" . | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "msgin5g.componentSelectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "msgin5g.componentLabels" . | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ .config | sha256sum }}
        checksum/secret: {{ include "msgin5g.credentialsChecksum" $root }}
        {{- with .annotations }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "msgin5g.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (include "msgin5g.affinity" (dict "root" $root "component" .component "values" $v)) }}
      affinity:
        {{- . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "msgin5g.image" (dict "root" $root "image" $v.image) | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          ports:
            {{- toYaml .ports | nindent 12 }}
            {{- if $root.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ $name }}
          env:
            {{- include "msgin5g.redisEnv" $root | trim | nindent 12 }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            {{- .probe | nindent 12 }}
            {{- toYaml $v.probes.startup | nindent 12 }}
          livenessProbe:
            {{- .probe | nindent 12 }}
            {{- toYaml $v.probes.liveness | nindent 12 }}
          readinessProbe:
            {{- default .probe .readinessProbe | nindent 12 }}
            {{- toYaml $v.probes.readiness | nindent 12 }}
          {{- if gt (int $root.Values.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $root.Values.preStopSleepSeconds }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .volumeMounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* Volumes and mounts of the external Redis's CA certificate (every service). */}}
{{- define "msgin5g.redisCaVolume" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.enabled .Values.externalRedis.tls.existingCaSecret -}}
- name: redis-ca
  secret:
    secretName: {{ .Values.externalRedis.tls.existingCaSecret }}
    items:
      - key: {{ .Values.externalRedis.tls.caKey }}
        path: ca.crt
{{- end -}}
{{- end -}}

{{- define "msgin5g.redisCaMount" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.enabled .Values.externalRedis.tls.existingCaSecret -}}
- name: redis-ca
  mountPath: /etc/msgin5g/tls/redis
  readOnly: true
{{- end -}}
{{- end -}}

{{/* HorizontalPodAutoscaler of one service; dict: root, key, component. */}}
{{- define "msgin5g.hpa" -}}
{{- $v := index .root.Values .key -}}
{{- if $v.autoscaling.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "msgin5g.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "msgin5g.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "msgin5g.componentName" . }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
    {{- with $v.autoscaling.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
{{- end }}
{{- end -}}

{{/* PodDisruptionBudget of one service; dict: root, key, component. */}}
{{- define "msgin5g.pdb" -}}
{{- $v := index .root.Values .key -}}
{{- if $v.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "msgin5g.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "msgin5g.componentLabels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $v.pdb.minAvailable) }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "msgin5g.componentSelectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* ConfigMap of one service; dict: root, component, config (data). */}}
{{- define "msgin5g.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "msgin5g.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "msgin5g.componentLabels" . | nindent 4 }}
data:
  {{- .config | nindent 2 }}
{{- end -}}

{{/* Headless Service of a service's metrics port (what a ServiceMonitor selects). */}}
{{- define "msgin5g.metricsService" -}}
{{- if .root.Values.metrics.enabled }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-metrics" (include "msgin5g.componentName" .) | trunc 63 | trimSuffix "-" }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "msgin5g.componentLabels" . | nindent 4 }}
    msgin5g.io/metrics: "true"
spec:
  clusterIP: None
  ports:
    - name: metrics
      port: {{ .root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
  selector:
    {{- include "msgin5g.componentSelectorLabels" . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* redis.conf of the bundled Redis (the password comes on stdin at start). */}}
{{- define "msgin5g.redis.conf" -}}
port 6379
bind * -::*
protected-mode no
dir /data
appendonly yes
appendfsync {{ .Values.redis.appendfsync }}
# Stored messages must never be evicted: writes fail instead when memory runs out.
maxmemory-policy noeviction
{{- with .Values.redis.maxmemory }}
maxmemory {{ . }}
{{- end }}
# The services' data lives in Redis: no RDB snapshots on top of the append-only file.
save ""
{{- end -}}

{{- define "msgin5g.redis.secretChecksum" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- printf "%s/%s" .Values.redis.auth.existingSecret .Values.redis.auth.existingSecretPasswordKey | sha256sum -}}
{{- else -}}
{{- include "msgin5g.redis.password" . | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* mosquitto.conf of the bundled broker. */}}
{{- define "msgin5g.mosquitto.conf" -}}
{{- $m := .Values.mosquitto -}}
{{- $devicesPasswd := include "msgin5g.mosquitto.devicesPasswdFile" . -}}
# Authentication and ACLs are set per listener: devices and the mqtt-edge never share them.
per_listener_settings true
{{- if include "msgin5g.mosquitto.fromRegistry" . }}
# msgin5g-credsync (a sidecar) rewrites the devices' password file and sends SIGHUP here.
pid_file /mosquitto/run/mosquitto.pid
{{- end }}
persistence true
persistence_location /mosquitto/data/
autosave_interval 60
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S
set_tcp_nodelay true
max_queued_messages {{ include "msgin5g.num" $m.maxQueuedMessages }}

# Devices (UEs). The username is the UE id and replaces the client id, so a device can
# neither take over another's session nor touch another's topics (devices.acl).
listener {{ include "msgin5g.num" $m.port }}
protocol mqtt
allow_anonymous false
use_username_as_clientid true
password_file {{ $devicesPasswd }}
acl_file /mosquitto/auth/devices.acl
{{- if $m.tls.enabled }}

# Devices over TLS: same credentials and ACLs.
listener {{ include "msgin5g.num" $m.tls.port }}
protocol mqtt
allow_anonymous false
use_username_as_clientid true
password_file {{ $devicesPasswd }}
acl_file /mosquitto/auth/devices.acl
certfile /mosquitto/auth/tls.crt
keyfile /mosquitto/auth/tls.key
{{- end }}

# The mqtt-edge replicas (a NetworkPolicy lets only mqtt-edge pods reach this port). They
# share one username, each with its own client id (the pod name), so no client-id rewrite.
listener {{ include "msgin5g.num" $m.edgePort }}
protocol mqtt
allow_anonymous false
password_file /mosquitto/auth/edge.passwd
acl_file /mosquitto/auth/edge.acl
{{- end -}}

{{/* ACL of the device listeners: a UE publishes only its uplink, reads only its downlink. */}}
{{- define "msgin5g.mosquitto.devicesAcl" -}}
{{- $p := .Values.config.mqttEdge.prefix -}}
pattern write {{ $p }}/up/%u/#
pattern read {{ $p }}/ue/%u
{{- end -}}

{{/* ACL of the edge listener: the uplink (also as a shared subscription) and every downlink. */}}
{{- define "msgin5g.mosquitto.edgeAcl" -}}
{{- $p := .Values.config.mqttEdge.prefix -}}
user {{ .Values.mosquitto.auth.edge.username }}
topic read {{ $p }}/up/#
topic read $share/{{ .Values.config.mqttEdge.shareGroup }}/{{ $p }}/up/#
topic write {{ $p }}/ue/#
{{- end -}}

{{/* Do the devices' passwords come from the registry (msgin5g-credsync)? */}}
{{- define "msgin5g.mosquitto.fromRegistry" -}}
{{- if eq .Values.mosquitto.auth.source "registry" }}true{{ end -}}
{{- end -}}

{{/* Are there static device accounts (a Secret of `username:password` lines)? */}}
{{- define "msgin5g.mosquitto.staticDevices" -}}
{{- with .Values.mosquitto.auth -}}
{{- if or (eq .source "static") .devices .devicesExistingSecret }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/* The password file of the device listeners, as Mosquitto reads it. */}}
{{- define "msgin5g.mosquitto.devicesPasswdFile" -}}
{{- if include "msgin5g.mosquitto.fromRegistry" . -}}
/mosquitto/devices/devices.passwd
{{- else -}}
/mosquitto/auth/devices.passwd
{{- end -}}
{{- end -}}

{{/*
Environment of msgin5g-credsync (init container and sidecar): the Redis settings the registry
gets, and where the password file and the static accounts are.
*/}}
{{- define "msgin5g.credsync.env" -}}
- name: MSGIN5G_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
- name: MSGIN5G_REDIS_PREFIX
  value: {{ .Values.config.redisPrefix | quote }}
- name: MSGIN5G_REDIS_CLUSTER
  value: {{ and (not .Values.redis.enabled) .Values.externalRedis.cluster | toString | quote }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls.enabled .Values.externalRedis.tls.existingCaSecret }}
- name: MSGIN5G_REDIS_TLS_CA_FILE
  value: "/etc/msgin5g/tls/redis/ca.crt"
{{- end }}
{{ include "msgin5g.redisEnv" . | trim }}
- name: MSGIN5G_CREDSYNC_PASSWORD_FILE
  value: "/mosquitto/devices/devices.passwd"
{{- if include "msgin5g.mosquitto.staticDevices" . }}
- name: MSGIN5G_CREDSYNC_SERVICE_USERS_FILE
  value: "/mosquitto/devices/static.passwd"
{{- end }}
{{- end -}}

{{/* The devices' password file (plain text; hashed by the init container). */}}
{{- define "msgin5g.mosquitto.devicesPasswd" -}}
{{- range .Values.mosquitto.auth.devices }}
{{ .username }}:{{ .password }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers: the pods of the given components; dict: root, components. */}}
{{- define "msgin5g.peers" -}}
{{- $root := .root -}}
{{- range .components }}
- podSelector:
    matchLabels:
      {{- include "msgin5g.componentSelectorLabels" (dict "root" $root "component" .) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Egress rule of a service to Redis (bundled pods, or the external one). */}}
{{- define "msgin5g.redisEgress" -}}
{{- if .Values.redis.enabled -}}
- to:
    {{- include "msgin5g.peers" (dict "root" . "components" (list "redis")) | trim | nindent 4 }}
  ports:
    - port: 6379
      protocol: TCP
{{- else -}}
- ports:
    {{- toYaml .Values.networkPolicy.egress.externalRedisPorts | nindent 4 }}
  {{- with .Values.networkPolicy.egress.externalRedisTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/*
A number as a setting: integers without exponent or fraction (values arrive as float64, and
Go would print 2592000 as 2.592e+06), other numbers as they are.
*/}}
{{- define "msgin5g.num" -}}
{{- if kindIs "string" . -}}
{{- . -}}
{{- else if eq (float64 .) (float64 (int64 .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}
