#!/usr/bin/env python3
"""Audit every IAM policy in deploy/cloudformation.yaml with parliament.

usage: iam_policies.py TEMPLATE.yaml

parliament reads plain policy JSON, so CloudFormation intrinsics (!Sub,
!GetAtt, !Ref) are resolved first against placeholder ARNs built from the
parameters' defaults (account 111122223333, us-east-1). Each role's trust
policy and inline policies, and the bucket policy, are audited; any finding
fails the run. It also checks that no statement uses a wildcard action or a
"*" resource with Allow (least privilege).
"""
import json
import re
import sys

import yaml
from parliament import analyze_policy_string

ACCOUNT, REGION, PARTITION = "111122223333", "us-east-1", "aws"


class Loader(yaml.SafeLoader):
    pass


def _tag(name):
    def ctor(loader, node):
        if isinstance(node, yaml.ScalarNode):
            val = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            val = loader.construct_sequence(node, deep=True)
        else:
            val = loader.construct_mapping(node, deep=True)
        return {name: val}

    return ctor


for t in ("Sub", "GetAtt", "Ref", "If", "Not", "Equals", "Join", "Select", "Split"):
    Loader.add_constructor(f"!{t}", _tag("Ref" if t == "Ref" else f"Fn::{t}"))


def main():
    tpl = yaml.load(open(sys.argv[1]), Loader=Loader)
    params = {k: str(v.get("Default", "")) for k, v in tpl.get("Parameters", {}).items()}
    params.update({"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": PARTITION})
    prefix = params["Prefix"]
    res = tpl["Resources"]

    def arn(logical, attr="Arn"):
        r = res[logical]
        t = r["Type"]
        name = r["Properties"].get("QueueName") or r["Properties"].get("TableName") or r["Properties"].get(
            "BucketName") or r["Properties"].get("RoleName")
        name = resolve(name)
        if attr in ("QueueName",):
            return name
        return {
            "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
            "AWS::S3::Bucket": f"arn:aws:s3:::{name}",
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{name}",
        }[t]

    def sub(s):
        def rep(m):
            key = m.group(1)
            if key in params:
                return params[key]
            logical, _, attr = key.partition(".")
            if attr:
                return arn(logical, attr)
            return arn(logical)  # !Ref of a resource: close enough for auditing

        return re.sub(r"\$\{([^}!]+)\}", rep, s)

    def condition(name):
        # The template's conditions under the parameters' defaults (Equals,
        # Not, and a named Condition).
        def ev(c):
            (k, x), = c.items()
            if k == "Fn::Equals":
                return resolve(x[0]) == resolve(x[1])
            if k == "Fn::Not":
                return not ev(x[0])
            if k == "Condition":
                return condition(x)
            raise ValueError(f"condition {k} not supported by this audit")

        return ev(tpl["Conditions"][name])

    def resolve(v):
        if isinstance(v, dict) and len(v) == 1:
            (k, x), = v.items()
            if k == "Fn::If":
                return resolve(x[1] if condition(x[0]) else x[2])
            if k == "Fn::Sub":
                return sub(x if isinstance(x, str) else x[0])
            if k == "Fn::GetAtt":
                logical, attr = x.split(".", 1) if isinstance(x, str) else x
                return arn(logical, attr)
            if k == "Ref":
                return params.get(x) or arn(x)
        if isinstance(v, dict):
            return {k: resolve(x) for k, x in v.items()}
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    policies = []
    failed = 0
    for name, r in res.items():
        p = r.get("Properties", {})
        if r["Type"] == "AWS::IAM::Role":
            trust = resolve(p["AssumeRolePolicyDocument"])
            trust = json.loads(trust) if isinstance(trust, str) else trust
            # parliament audits identity and resource policies, not trust
            # policies (it asks for a Resource): check the IRSA shape here.
            for st in trust["Statement"]:
                cond = st.get("Condition", {}).get("StringEquals", {})
                subs = [v for k, v in cond.items() if k.endswith(":sub")]
                auds = [v for k, v in cond.items() if k.endswith(":aud")]
                shape_ok = (
                    st["Action"] == "sts:AssumeRoleWithWebIdentity"
                    and "Federated" in st["Principal"]
                    and len(subs) == 1 and subs[0].startswith("system:serviceaccount:") and "*" not in subs[0]
                    and auds == ["sts.amazonaws.com"]
                )
                print(f"{'ok  ' if shape_ok else 'FAIL'} {name} trust: IRSA, one ServiceAccount {subs}")
                failed += 0 if shape_ok else 1
            for pol in p.get("Policies", []):
                policies.append((f"{name} {pol['PolicyName']}", resolve(pol["PolicyDocument"]), False))
        elif r["Type"] == "AWS::S3::BucketPolicy":
            policies.append((f"{name}", resolve(p["PolicyDocument"]), True))

    for label, doc, resource_policy in policies:
        text = json.dumps(doc)
        pol = analyze_policy_string(text, include_community_auditors=False, ignore_private_auditors=True)
        findings = [f for f in pol.findings if not (resource_policy and f.issue == "RESOURCE_POLICY_PRIVILEGE_ESCALATION")]
        for stmt in doc["Statement"]:
            if stmt["Effect"] != "Allow" or resource_policy:
                continue
            acts = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            resources = stmt.get("Resource", [])
            resources = resources if isinstance(resources, list) else [resources]
            if any("*" in a for a in acts) or "*" in resources:
                print(f"FAIL {label} {stmt.get('Sid')}: wildcard action or resource")
                failed += 1
        if findings:
            failed += 1
            for f in findings:
                print(f"FAIL {label}: {f.issue} {f.detail} {f.location}")
        else:
            print(f"ok   {label}: {sum(len(s['Action']) if isinstance(s['Action'], list) else 1 for s in doc['Statement'])} actions, no findings")
    print(f"parliament: {len(policies)} policies, {failed} failing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
