// Validates prometheus-operator resources (ServiceMonitor, PrometheusRule) offline against the
// schemas of @kubernetes-models/prometheus-operator, generated from prometheus-operator's API
// types, from which its CRDs are generated too. Reads a JSON array of resources on stdin;
// prints one line per resource ("ok KIND NAME" or "invalid KIND NAME: why"); exit 1 if any
// is invalid or of a kind it does not know.
import { readFileSync } from "node:fs";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { PrometheusRule, ServiceMonitor };
for (const resource of JSON.parse(readFileSync(0, "utf8"))) {
  const name = `${resource.kind} ${resource.metadata?.name}`;
  const Model = resource.apiVersion === "monitoring.coreos.com/v1" ? kinds[resource.kind] : undefined;
  if (Model === undefined) {
    console.log(`invalid ${name}: not a monitoring.coreos.com/v1 kind this checks`);
    process.exitCode = 1;
    continue;
  }
  try {
    new Model(resource).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    console.log(`invalid ${name}: ${error.message}`);
    process.exitCode = 1;
  }
}
