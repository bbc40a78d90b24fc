{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "clipserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "clipserve.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "clipserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Name of the slotted objects (Deployment, HPA, ScaledObject, PDB): "<fullname>-<slot>", or
"<fullname>" without a slot. Blue/green contract with the operator: do not change.
*/}}
{{- define "clipserve.slotName" -}}
{{- if .Values.slot -}}
{{- printf "%s-%s" (include "clipserve.fullname" .) .Values.slot | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "clipserve.fullname" . -}}
{{- end -}}
{{- end -}}

{{/*
Common labels, on every object.
*/}}
{{- define "clipserve.labels" -}}
helm.sh/chart: {{ include "clipserve.chart" . }}
{{ include "clipserve.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/part-of: {{ template "clipserve.name" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
Selector labels: name and instance only, so one Service selects every slot's pods.
*/}}
{{- define "clipserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clipserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels of the slotted objects and their pods: common labels plus `clipserve.io/slot`.
*/}}
{{- define "clipserve.slotLabels" -}}
{{ include "clipserve.labels" . }}
{{- if .Values.slot }}
clipserve.io/slot: {{ .Values.slot | quote }}
{{- end }}
{{- end -}}

{{/*
Deployment selector labels: name and instance, plus the slot when there is one (each slot's
Deployment must own only its own pods).
*/}}
{{- define "clipserve.slotSelectorLabels" -}}
{{ include "clipserve.selectorLabels" . }}
{{- if .Values.slot }}
clipserve.io/slot: {{ .Values.slot | quote }}
{{- end }}
{{- end -}}

{{/*
The container image: repository with digest when set, else with tag (default appVersion).
*/}}
{{- define "clipserve.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The device the server is told to use: `auto` becomes `cuda` when the pod requests GPUs, so a pod
holding a GPU fails start-up (naming the cause: driver, CUDA version) instead of computing on the
CPU.
*/}}
{{- define "clipserve.device" -}}
{{- if and (eq .Values.device "auto") (gt (int .Values.gpu.count) 0) -}}
cuda
{{- else -}}
{{- .Values.device -}}
{{- end -}}
{{- end -}}

{{/*
ServiceAccount the pods run as.
*/}}
{{- define "clipserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "clipserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the cache is mounted read-only (a model image, or a claim filled beforehand): pods
then serve with --offline and keep the libraries' own caches in /tmp.
*/}}
{{- define "clipserve.cacheReadOnly" -}}
{{- or (eq .Values.modelCache.type "image") .Values.modelCache.readOnly -}}
{{- end -}}

{{/*
Claim backing the weights cache (modelCache.type pvc or existingClaim).
*/}}
{{- define "clipserve.cacheClaimName" -}}
{{- if eq .Values.modelCache.type "existingClaim" -}}
{{- .Values.modelCache.existingClaim -}}
{{- else -}}
{{- printf "%s-cache" (include "clipserve.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when an autoscaler (HPA or KEDA) owns the replica count. Fails on what the schema cannot
express: both enabled (two autoscalers would fight over one Deployment), minReplicas > maxReplicas.
*/}}
{{- define "clipserve.autoscaled" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled -}}
{{- fail "clipserve: enable either autoscaling or keda, not both (KEDA manages its own HPA)" -}}
{{- end -}}
{{- range $name := list "autoscaling" "keda" -}}
{{- $a := index $.Values $name -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "clipserve: %s.minReplicas (%d) exceeds %s.maxReplicas (%d)" $name (int $a.minReplicas) $name (int $a.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if or .Values.autoscaling.enabled .Values.keda.enabled -}}true{{- end -}}
{{- end -}}

{{/*
Fewest pods the Deployment can run: the autoscaler's minimum, or replicaCount.
*/}}
{{- define "clipserve.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.minReplicas -}}
{{- else if .Values.keda.enabled -}}
{{- .Values.keda.minReplicas -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: the explicit value, or preStop sleep + drain grace + drain
timeout + 10 s of margin, so the kubelet never kills a pod that is still finishing work.
*/}}
{{- define "clipserve.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- $d := .Values.drain -}}
{{- add $d.preStopSleepSeconds $d.graceSeconds $d.timeoutSeconds 10 -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/*
A series the server exports, by its key in metrics.json (generated from the server's metric
names by scripts/generate/metrics.py, `make generate`): usage (dict "root" . "key" "queueDepth").
*/}}
{{- define "clipserve.metricName" -}}
{{- $names := .root.Files.Get "metrics.json" | fromJson -}}
{{- required (printf "clipserve: metrics.json has no %s" .key) (index $names .key) -}}
{{- end -}}

{{/*
Default KEDA query: queued items of this release (and slot) as scraped via the ServiceMonitor,
whose job label is the Service name and which copies the pods' slot label as clipserve_io_slot.
*/}}
{{- define "clipserve.kedaQuery" -}}
{{- if .Values.keda.prometheus.query -}}
{{- .Values.keda.prometheus.query -}}
{{- else -}}
{{- $sel := printf "namespace=%q,job=%q" .Release.Namespace (include "clipserve.fullname" .) -}}
{{- if .Values.slot -}}
{{- $sel = printf "%s,clipserve_io_slot=%q" $sel .Values.slot -}}
{{- end -}}
{{- printf "sum(%s{%s})" (include "clipserve.metricName" (dict "root" . "key" "queueDepth")) $sel -}}
{{- end -}}
{{- end -}}

{{/*
"true" when KEDA may scale the servers to zero: then `clipserve gate` stays up in front of them.
*/}}
{{- define "clipserve.gated" -}}
{{- if and .Values.keda.enabled (eq (int .Values.keda.minReplicas) 0) -}}
true
{{- end -}}
{{- end -}}

{{/*
The gate's selector labels: its own name, so that no server selector matches a gate pod.
*/}}
{{- define "clipserve.gateSelectorLabels" -}}
app.kubernetes.io/name: {{ include "clipserve.name" . }}-gate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The Service clients call (the Ingress's backend): the gate's while the servers may scale to zero.
*/}}
{{- define "clipserve.endpointService" -}}
{{- if include "clipserve.gated" . -}}
{{- printf "%s-gate" (include "clipserve.fullname" .) -}}
{{- else -}}
{{- include "clipserve.fullname" . -}}
{{- end -}}
{{- end -}}

{{/*
Labels of the operator's prefetch Job pods (`clipserve download` into a shared weights cache;
operator/clipserve_operator/weights.py sets them from the server pods' labels): their own name,
so that neither Service selects them, and the release's instance.
*/}}
{{- define "clipserve.weightsSelectorLabels" -}}
app.kubernetes.io/name: {{ include "clipserve.name" . }}-weights
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
KEDA's wake-up query: authorized requests per second the gate saw (proxied, answered 503,
failed or given up by their client; never a 401 nor a page fetched without a key: metrics.py
GATE_WAKING) over the last minute, from the ServiceMonitor's scrape of the gate Service (job
<fullname>-gate).
*/}}
{{- define "clipserve.kedaGateQuery" -}}
{{- $sel := printf "namespace=%q,job=%q,outcome=~%q" .Release.Namespace (printf "%s-gate" (include "clipserve.fullname" .)) "proxied|unavailable|error|cancelled" -}}
{{- printf "sum(rate(%s{%s}[1m]))" (include "clipserve.metricName" (dict "root" . "key" "gateRequests")) $sel -}}
{{- end -}}
