#!/usr/bin/env python3
"""Split rendered Kubernetes manifests for offline validation.

usage: k8s_prepare.py RENDERED.yaml OUTDIR CRD.yaml...

Writes OUTDIR/builtin.yaml (every document of a built-in kind, for
kubernetes-validate), OUTDIR/<Kind>-<n>.yaml (one file per custom resource)
and OUTDIR/<Kind>.schema.json: the CRD's openAPIV3Schema turned into a JSON
schema for check-jsonschema. Stricter than the API server: wherever the CRD
lists `properties` and neither allows additional ones nor preserves unknown
fields, unknown keys are refused (the API server would silently prune them,
which hides typos such as `pollingIntervall`). Exits 1 on a custom kind with
no vendored CRD.
"""
import json
import os
import sys

import yaml

BUILTIN_GROUPS = {"", "v1", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}


def strict(node):
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        # int-or-string: let either through, as the API server does.
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


def crd_schemas(paths):
    out = {}
    for p in paths:
        with open(p) as f:
            crd = yaml.safe_load(f)
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = strict(v["schema"]["openAPIV3Schema"])
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            # Pin apiVersion/kind to this CRD version.
            schema.setdefault("properties", {})
            schema["properties"]["apiVersion"] = {"const": f"{group}/{v['name']}"}
            schema["properties"]["kind"] = {"const": kind}
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
            out[(group, v["name"], kind)] = schema
    return out


def main():
    rendered, outdir, crds = sys.argv[1], sys.argv[2], sys.argv[3:]
    os.makedirs(outdir, exist_ok=True)
    schemas = crd_schemas(crds)
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    builtin, counts, bad = [], {}, 0
    for d in docs:
        group, _, version = d["apiVersion"].rpartition("/")
        if group in BUILTIN_GROUPS:
            builtin.append(d)
            continue
        key = (group, version, d["kind"])
        if key not in schemas:
            print(f"k8s_prepare: no vendored CRD for {d['apiVersion']} {d['kind']}", file=sys.stderr)
            bad += 1
            continue
        n = counts[d["kind"]] = counts.get(d["kind"], 0) + 1
        with open(os.path.join(outdir, f"{d['kind']}-{n}.yaml"), "w") as f:
            yaml.safe_dump(d, f, sort_keys=False)
        with open(os.path.join(outdir, f"{d['kind']}.schema.json"), "w") as f:
            json.dump(schemas[key], f)
    with open(os.path.join(outdir, "builtin.yaml"), "w") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    print(f"k8s_prepare: {len(builtin)} built-in, {sum(counts.values())} custom ({', '.join(sorted(counts))})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
