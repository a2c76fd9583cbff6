#!/usr/bin/env python3
"""Cross-file invariants no schema can express. usage: check_invariants.py RENDERED_K8S.yaml...

- compose worker: stop_grace_period > SCOREFLEET_DRAIN_TIMEOUT_SECONDS
- k8s worker: terminationGracePeriodSeconds > preStop sleep + drain timeout
- KEDA: queueLength == SCOREFLEET_MAX_BATCH x 2 (batches in flight per pod),
  scaleOnInFlight "true", only known aws-sqs-queue metadata keys (the CRD
  leaves trigger metadata free-form), a scale-down stabilisation window
- CronJob: the run id is dated with `date -u +%F`
- CloudFormation: input queue visibility >= the worker's 30 s minimum,
  maxReceiveCount 5, TTL on expires_at, GSI by_run INCLUDE status, finished_ms, attempt;
  the worker role may call GetQueueAttributes on both queues (its readiness
  check does, crates/worker/src/main.rs)
- every SCOREFLEET_* name used in compose / the ConfigMap is in the contract
"""
import re
import sys

import yaml

CONTRACT = {
    "SCOREFLEET_INPUT_QUEUE_URL", "SCOREFLEET_OUTPUT_QUEUE_URL", "SCOREFLEET_TABLE", "SCOREFLEET_MODEL",
    "SCOREFLEET_MODEL_WEIGHTS", "SCOREFLEET_DRAIN_TIMEOUT_SECONDS", "SCOREFLEET_MAX_BATCH", "SCOREFLEET_RECEIVERS",
    "SCOREFLEET_HTTP_ADDR", "SCOREFLEET_LOG_FORMAT", "SCOREFLEET_S3_PATH_STYLE", "SCOREFLEET_S3_PREFIX",
    # crates/worker/src/main.rs (worker engineer, in progress)
    "SCOREFLEET_MODEL_MANIFEST", "SCOREFLEET_MODEL_CACHE", "SCOREFLEET_LEASE_SECONDS", "SCOREFLEET_WORKER_ID",
}
SQS_KEYS = {"queueURL", "queueURLFromEnv", "queueLength", "activationQueueLength", "awsRegion", "awsEndpoint",
            "identityOwner", "awsRoleArn", "scaleOnInFlight", "scaleOnDelayed"}
BATCHES_IN_FLIGHT = 2
errors = []


def check(cond, msg):
    print(("ok   " if cond else "FAIL ") + msg)
    if not cond:
        errors.append(msg)


def seconds(v):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(v))
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


class CfnLoader(yaml.SafeLoader):
    pass


CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


class CfnRefLoader(yaml.SafeLoader):
    """Keeps `!GetAtt Name.Arn` as the resource name; other tags as None."""


CfnRefLoader.add_constructor("!GetAtt", lambda loader, node: loader.construct_scalar(node).split(".")[0])
CfnRefLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def allowed(role, resource):
    """The actions a role's inline policies allow on one resource (by logical name)."""
    acts = set()
    for pol in role["Properties"]["Policies"]:
        for st in pol["PolicyDocument"]["Statement"]:
            res = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            if st["Effect"] == "Allow" and resource in res:
                acts |= set(st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
    return acts


def main():
    compose = yaml.safe_load(open("docker-compose.yml"))
    w = compose["services"]["worker"]
    env = w["environment"]
    drain = int(env["SCOREFLEET_DRAIN_TIMEOUT_SECONDS"])
    leases = [int(env["SCOREFLEET_LEASE_SECONDS"])]
    init_cmd = compose["services"]["init"]["command"]
    leases.append(int(init_cmd[init_cmd.index("--visibility-timeout") + 1]))
    check(seconds(w["stop_grace_period"]) > drain,
          f"compose: stop_grace_period {w['stop_grace_period']} > drain {drain}s")
    names = set(env) | set(compose["x-scorefleet-env"])
    for s in compose["services"].values():
        names |= set(s.get("environment") or {})
    names.discard("<<")
    names = {n for n in names if n.startswith("SCOREFLEET_")}
    check(names <= CONTRACT, f"compose: SCOREFLEET_* names in the contract {sorted(names - CONTRACT) or ''}")

    for rendered in sys.argv[1:]:
        docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
        path = rendered.rsplit("/", 1)[-1].removesuffix(".yaml")
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)
        cm = by_kind["ConfigMap"][0]["data"]
        cm_names = {k for k in cm if k.startswith("SCOREFLEET_")}
        check(cm_names <= CONTRACT, f"{path}: ConfigMap names in the contract {sorted(cm_names - CONTRACT) or ''}")
        drain, batch = int(cm["SCOREFLEET_DRAIN_TIMEOUT_SECONDS"]), int(cm["SCOREFLEET_MAX_BATCH"])
        leases.append(int(cm["SCOREFLEET_LEASE_SECONDS"]))
        pod = by_kind["Deployment"][0]["spec"]["template"]["spec"]
        pre = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = pod["terminationGracePeriodSeconds"]
        check(grace > pre + drain, f"{path}: terminationGracePeriodSeconds {grace} > preStop {pre} + drain {drain}")
        c = pod["containers"][0]
        check(c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz",
              f"{path}: readiness /readyz, liveness /healthz")
        so = by_kind["ScaledObject"][0]
        trig = so["spec"]["triggers"][0]
        md = trig["metadata"]
        check(trig["type"] == "aws-sqs-queue", f"{path}: trigger aws-sqs-queue")
        check(set(md) <= SQS_KEYS, f"{path}: aws-sqs-queue metadata keys known {sorted(set(md) - SQS_KEYS) or ''}")
        check(int(md["queueLength"]) == batch * BATCHES_IN_FLIGHT,
              f"{path}: queueLength {md['queueLength']} == MAX_BATCH {batch} x {BATCHES_IN_FLIGHT}")
        check(md.get("scaleOnInFlight") == "true" and "activationQueueLength" in md,
              f"{path}: scaleOnInFlight true, activationQueueLength set")
        check(md["queueURL"] == cm["SCOREFLEET_INPUT_QUEUE_URL"],
              f"{path}: KEDA queueURL == worker's SCOREFLEET_INPUT_QUEUE_URL")
        check(md["awsRegion"] == cm["AWS_REGION"], f"{path}: KEDA awsRegion == AWS_REGION")
        win = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        check(win >= 60, f"{path}: scale-down stabilisation window {win}s >= 60s")
        cj = by_kind["CronJob"][0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        check("date -u +%F" in " ".join(cj.get("command", []) + cj.get("args", [])), f"{path}: CronJob run id dated (date -u +%F)")
        sas = {d["metadata"]["name"]: d for d in by_kind["ServiceAccount"]}
        check(all("eks.amazonaws.com/role-arn" in sa["metadata"].get("annotations", {}) for sa in sas.values()),
              f"{path}: every ServiceAccount has the IRSA annotation")

    cfn = yaml.load(open("deploy/cloudformation.yaml"), Loader=CfnLoader)
    p = cfn["Parameters"]
    vis = int(p["VisibilityTimeout"]["Default"])
    check(vis >= 30, "cloudformation: input visibility >= 30 s")
    check(leases and all(lease == vis for lease in leases),
          f"SCOREFLEET_LEASE_SECONDS {sorted(set(leases))} == input queue VisibilityTimeout {vis}")
    check(int(p["MaxReceiveCount"]["Default"]) == 5, "cloudformation: maxReceiveCount 5 (as provision)")
    t = cfn["Resources"]["OutcomeTable"]["Properties"]
    check(t["BillingMode"] == "PAY_PER_REQUEST" and t["TimeToLiveSpecification"]["AttributeName"] == "expires_at",
          "cloudformation: table on demand, TTL on expires_at")
    g = t["GlobalSecondaryIndexes"][0]
    check(g["IndexName"] == "by_run" and g["Projection"]["NonKeyAttributes"] == ["status", "finished_ms", "attempt"],
          "cloudformation: GSI by_run INCLUDE status, finished_ms, attempt")
    roles = yaml.load(open("deploy/cloudformation.yaml"), Loader=CfnRefLoader)["Resources"]
    for q in ("InputQueue", "OutputQueue"):
        check("sqs:GetQueueAttributes" in allowed(roles["WorkerRole"], q),
              f"cloudformation: worker role may GetQueueAttributes on {q} (readiness check)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
