#!/usr/bin/env bash
# Validates everything under deploy/ plus docker-compose.yml offline, with the
# real tools pinned in requirements.txt (installed into .venv by
# scripts/stack.sh venv). Fails on any error. No network, no Docker engine.
#
#   hadolint            deploy/Dockerfile, deploy/emulator/Dockerfile
#   check-jsonschema    docker-compose.yml against the compose-spec schema
#                       (vendored inside check-jsonschema: vendor.compose-spec)
#   kubectl kustomize   renders deploy/k8s/base and every overlay
#   kubernetes-validate --strict: built-in kinds of each render (k8s 1.37 schemas)
#   check-jsonschema    KEDA ScaledObject/TriggerAuthentication against the
#                       openAPIV3Schema of the vendored KEDA v2.20.2 CRDs
#                       (deploy/schemas/), made strict (unknown keys refused)
#   cfn-lint            deploy/cloudformation.yaml
#   parliament          every IAM policy in the template (+ IRSA trust shape)
#   check_invariants    cross-file values (grace > drain, queueLength = batch x 2, ...)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SCOREFLEET_VENV:-$ROOT/.venv}"
scripts/stack.sh venv
BIN="$VENV/bin"
PY="$BIN/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failed=()

step() {
    local name="$1"
    shift
    echo "== $name"
    if "$@"; then
        echo "   ok"
    else
        echo "   FAILED: $name"
        failed+=("$name")
    fi
}

step "hadolint Dockerfiles" "$BIN/hadolint" deploy/Dockerfile deploy/emulator/Dockerfile
step "compose-spec schema" "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
# The Docker CLI's own parser too, where the compose plugin exists (not here).
if docker compose version >/dev/null 2>&1; then
    step "docker compose config" docker compose -f docker-compose.yml config -q
fi

if command -v kustomize >/dev/null; then
    KUSTOMIZE=(kustomize build)
elif command -v kubectl >/dev/null; then
    KUSTOMIZE=(kubectl kustomize)
else
    KUSTOMIZE=()
fi

rendered=()
if ((${#KUSTOMIZE[@]})); then
    for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
        dir="${dir%/}"
        name="${dir//\//_}"
        out="$WORK/$name.yaml"
        step "render $dir" "${KUSTOMIZE[@]}" "$dir" -o "$out" || continue
        [[ -s "$out" ]] || continue
        rendered+=("$out")
        step "split $dir" "$PY" deploy/tools/k8s_prepare.py "$out" "$WORK/$name" deploy/schemas/keda.sh_*.yaml
        step "kubernetes-validate $dir" "$BIN/kubernetes-validate" --strict --quiet "$WORK/$name/builtin.yaml"
        for kind in ScaledObject TriggerAuthentication; do
            step "KEDA CRD schema: $kind in $dir" "$BIN/check-jsonschema" \
                --schemafile "$WORK/$name/$kind.schema.json" "$WORK/$name/$kind"-*.yaml
        done
    done
else
    # Without kustomize the ConfigMap generator and patches cannot be applied:
    # validate the base files one by one and skip the cross-file invariants.
    echo "!! neither kustomize nor kubectl found: validating deploy/k8s/base files unrendered"
    cat deploy/k8s/base/{serviceaccount,worker-deployment,worker-pdb,worker-service,producer-cronjob,keda-triggerauthentication,keda-scaledobject}.yaml \
        | "$PY" -c 'import sys,yaml; print(yaml.safe_dump_all([d for d in yaml.safe_load_all(sys.stdin) if d]))' >"$WORK/base.yaml"
    step "split base (unrendered)" "$PY" deploy/tools/k8s_prepare.py "$WORK/base.yaml" "$WORK/base" deploy/schemas/keda.sh_*.yaml
    step "kubernetes-validate base (unrendered)" "$BIN/kubernetes-validate" --strict --quiet "$WORK/base/builtin.yaml"
    for kind in ScaledObject TriggerAuthentication; do
        step "KEDA CRD schema: $kind" "$BIN/check-jsonschema" --schemafile "$WORK/base/$kind.schema.json" "$WORK/base/$kind"-*.yaml
    done
fi

step "cfn-lint" "$BIN/cfn-lint" deploy/cloudformation.yaml
step "parliament (IAM)" "$PY" deploy/tools/iam_policies.py deploy/cloudformation.yaml
if ((${#rendered[@]})); then
    step "cross-file invariants" "$PY" deploy/tools/check_invariants.py "${rendered[@]}"
fi

if ((${#failed[@]})); then
    echo "validate-deploy: ${#failed[@]} failed: ${failed[*]}" >&2
    exit 1
fi
echo "validate-deploy: all checks passed"
