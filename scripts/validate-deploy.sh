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

# Canaries: each validator must refuse a known-bad mutation, or a silent
# loosening (a schema that no longer rejects unknown keys, a linter that
# no longer runs) would let every check above pass vacuously.
expect_fail() {
    local name="$1"
    shift
    echo "== canary: $name"
    if "$@" >/dev/null 2>&1; then
        echo "   FAILED: the validator accepted a broken input"
        failed+=("canary $name")
    else
        echo "   ok (refused)"
    fi
}
C="$WORK/canary"
mkdir -p "$C"
# mutate SRC DST SED-SCRIPT: a mutation that no longer matches is a failure too.
mutate() {
    sed "$3" "$1" >"$2"
    if cmp -s "$1" "$2"; then
        echo "   FAILED: canary mutation of $1 matched nothing"
        failed+=("canary mutation $1")
    fi
}
mutate docker-compose.yml "$C/compose.yml" 's/stop_grace_period:/stop_grace_periodd:/'
expect_fail "compose unknown key" "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec "$C/compose.yml"
mutate deploy/Dockerfile "$C/Dockerfile" 's/^USER 10001:10001$/USER 10001:10001\nRUN cd \/tmp/'
expect_fail "hadolint cd" "$BIN/hadolint" "$C/Dockerfile"
mutate deploy/cloudformation.yaml "$C/cfn.yaml" 's/BatchGetItem$/BatchGetItems/'
expect_fail "cfn-lint unknown IAM action" "$BIN/cfn-lint" "$C/cfn.yaml"
expect_fail "parliament unknown IAM action" "$PY" deploy/tools/iam_policies.py "$C/cfn.yaml"
if ((${#rendered[@]})); then
    mutate "${rendered[0]}" "$C/k8s.yaml" \
        's/pollingInterval:/pollingIntervall:/; s/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/'
    "$PY" deploy/tools/k8s_prepare.py "$C/k8s.yaml" "$C/k8s" deploy/schemas/keda.sh_*.yaml >/dev/null
    expect_fail "kubernetes-validate unknown key" "$BIN/kubernetes-validate" --strict --quiet "$C/k8s/builtin.yaml"
    expect_fail "KEDA schema unknown key" "$BIN/check-jsonschema" \
        --schemafile "$C/k8s/ScaledObject.schema.json" "$C/k8s/ScaledObject-1.yaml"
fi

if ((${#failed[@]})); then
    echo "validate-deploy: ${#failed[@]} failed: ${failed[*]}" >&2
    exit 1
fi
echo "validate-deploy: all checks passed"
