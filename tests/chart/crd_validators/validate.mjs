// Validate custom resources against validators generated from their upstream CRD schemas.
// stdin: a JSON array of objects; stdout: a JSON array of {kind, name, error} (error null if ok).
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((obj) => {
  const Model = models[`${obj.apiVersion}/${obj.kind}`];
  const name = obj.metadata?.name ?? null;
  if (!Model) return { kind: obj.kind, name, error: `no validator for ${obj.apiVersion}/${obj.kind}` };
  try {
    new Model(obj).validate();
    return { kind: obj.kind, name, error: null };
  } catch (e) {
    return { kind: obj.kind, name, error: String(e.message ?? e) };
  }
});
process.stdout.write(JSON.stringify(results));
