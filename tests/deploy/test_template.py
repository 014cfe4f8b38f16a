"""deploy/aws/sdserve.yaml: the linters the issue names (cfn-lint, checkov, shellcheck), assertions on
the parsed template (network exposure, IMDSv2, encryption, the Auto Scaling group's Spot, health,
lifecycle and scaling settings, names), the embedded bootstrap, and two stacks side by side in one
region under moto."""
import base64
import gzip
import json
import re
import shutil
import subprocess
import sys
import warnings

import pytest

from deploy_helpers import AWS, TEMPLATE, load_template, template, tool  # noqa: F401 (template: a fixture)
from fakes import ROOT

SERVICE_PORT = 7860


def resources(t, kind=None):
    return {k: v for k, v in t["Resources"].items() if kind is None or v["Type"] == kind}


def props(t, name):
    return t["Resources"][name]["Properties"]


def is_ref(value, name):
    return value == {"Ref": name}


def if_branches(value):
    """The possible values of a property: both branches of an Fn::If, else the value itself."""
    if isinstance(value, dict) and "Fn::If" in value:
        return if_branches(value["Fn::If"][1]) + if_branches(value["Fn::If"][2])
    return [value]


def walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, path + (i,))


def user_data(t):
    """(header Sub template, Sub variables, embedded blob lines joined, footer) of the launch template."""
    ud = props(t, "LaunchTemplate")["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"]
    assert ud[0] == ""
    header, blob, footer = ud[1]
    return header["Fn::Sub"][0], header["Fn::Sub"][1], blob, footer


SAMPLE = {  # realistic, long parameter and attribute values for the rendered user data
    "AWS::Region": "ap-southeast-2", "AWS::StackName": "sdserve-production-images",
    "LogGroup": "sdserve-production-images-LogGroup-AbCdEfGhIjKl",
    "ApiKeySecret": "arn:aws:secretsmanager:ap-southeast-2:123456789012:secret:ApiKeySecret-AbCdEfGhIjKl-AbCdEf",
    "ReleaseUrl": "s3://my-company-sdserve-artifacts-ap-southeast-2/sdserve/releases/sdserve-0.1.0-linux-x86_64-cuda.tar.gz",
    "ReleaseSha256": "ab" * 32, "SourceRepoUrl": "https://github.com/example-org/sdserve", "SourceGitRef": "cd" * 20,
    "ModelSource": "s3://my-company-models-ap-southeast-2/stable-diffusion/sdxl-base-1.0/sd_xl_base_1.0.safetensors",
    "ModelRevision": "0123456789abcdef0123456789abcdef01234567", "Variant": "fp16", "ModelSha256": "ef" * 32,
    "LoraS3Uri": "s3://my-company-models-ap-southeast-2/loras/", "UpscalerS3Uri": "s3://my-company-models-ap-southeast-2/upscalers/",
    "DrainTimeout": "110", "JobTimeout": "300", "QueueSize": "16", "WarmupSeconds": "1200", "AlbIdleTimeout": "600",
}


def rendered_user_data(t):
    header, _, blob, footer = user_data(t)
    text = re.sub(r"\$\{([A-Za-z0-9:]+)\}", lambda m: SAMPLE[m.group(1)], header)
    return text + blob + footer


# ---------------------------------------------------------------------------------- linters

def test_cfn_lint_reports_nothing():
    cfn_lint = tool("cfn-lint", "CFN_LINT")
    p = subprocess.run([cfn_lint, str(TEMPLATE)], capture_output=True, timeout=300)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout.decode() + p.stderr.decode()


def test_checkov_has_no_failed_checks_and_every_skip_has_a_reason(template):
    checkov = tool("checkov", "CHECKOV", ROOT / "build" / "venv-checkov" / "bin" / "checkov")
    p = subprocess.run([checkov, "-d", str(AWS), "--skip-download", "--output", "json"],
                       capture_output=True, timeout=600, cwd=ROOT)
    out = p.stdout.decode()
    reports = json.loads(out) if out.strip().startswith(("[", "{")) else None
    assert reports is not None, out + p.stderr.decode()
    if isinstance(reports, dict):
        reports = [reports]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert not failed, [(c["check_id"], c["resource"]) for c in failed]
    assert p.returncode == 0, out[-2000:]
    assert any(r.get("check_type") == "cloudformation" for r in reports)
    # Every suppression lives in the resource's Metadata with a written reason.
    skips = [(name, s) for name, r in resources(template).items()
             for s in r.get("Metadata", {}).get("checkov", {}).get("skip", [])]
    assert skips, "expected the documented skips"
    for name, s in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", s["id"]) and len(s.get("comment", "")) > 30, (name, s)
    skipped = {(c["check_id"], c["resource"].split(".")[-1]) for r in reports
               for c in r.get("results", {}).get("skipped_checks", [])}
    assert skipped == {(s["id"], name) for name, s in skips}, "a skip that suppresses nothing should go"
    # docs/DEPLOY.md lists each skip.
    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    for _, s in skips:
        assert s["id"] in doc, s["id"]


def test_shellcheck_is_clean_on_every_script(template, tmp_path):
    shellcheck = tool("shellcheck", "SHELLCHECK", "/usr/bin/shellcheck")
    scripts = sorted(AWS.glob("*.sh")) + sorted((AWS / "instance").glob("*.sh")) + [ROOT / "scripts" / "package.sh"]
    # The user data itself (the template's wrapper around bootstrap.sh), rendered with sample values.
    ud = tmp_path / "user-data.sh"
    ud.write_text(rendered_user_data(template))
    p = subprocess.run([shellcheck, "-x", "--severity=style", *map(str, scripts), str(ud)], capture_output=True,
                       timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    assert subprocess.run(["bash", "-n", str(ud)]).returncode == 0


# ----------------------------------------------------------------------- bootstrap in user data

def test_user_data_embeds_bootstrap_sh_byte_for_byte(template):
    p = subprocess.run([sys.executable, str(AWS / "render.py"), "--check"], capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    _, _, blob, footer = user_data(template)
    assert gzip.decompress(base64.b64decode(blob)) == (AWS / "bootstrap.sh").read_bytes()
    assert "base64 -d > /usr/local/sbin/sdserve-bootstrap.gz <<'SDSERVE_BOOTSTRAP'" in user_data(template)[0]
    assert footer.splitlines()[0] == "SDSERVE_BOOTSTRAP"
    assert "exec /usr/local/sbin/sdserve-bootstrap --env /etc/sdserve/deploy.env" in footer


def test_user_data_fits_the_16_kb_limit_with_long_values(template):
    assert len(rendered_user_data(template).encode()) < 16384 - 1024


def test_user_data_settings_match_the_template(template):
    header, subs, _, _ = user_data(template)
    env = dict(line.split("=", 1) for line in header.split("<<'SDSERVE_ENV'\n")[1].split("\nSDSERVE_ENV")[0].splitlines())
    hooks = {h["LifecycleTransition"]: h["LifecycleHookName"]
             for h in props(template, "AutoScalingGroup")["LifecycleHookSpecificationList"]}
    assert env["SDSERVE_LAUNCH_HOOK"] == hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
    assert env["SDSERVE_DRAIN_HOOK"] == hooks["autoscaling:EC2_INSTANCE_TERMINATING"]
    assert env["SDSERVE_SIGNAL_RESOURCE"] in template["Resources"]
    assert "CreationPolicy" in template["Resources"][env["SDSERVE_SIGNAL_RESOURCE"]]
    assert int(env["SDSERVE_PORT"]) == SERVICE_PORT == props(template, "TargetGroup")["Port"]
    assert env["SDSERVE_DEVICE"] == "cuda"
    # sdserve's keep-alive is derived from the balancer's idle timeout (bootstrap: + 5 s), so the ALB
    # never reuses a connection sdserve is closing.
    assert env["SDSERVE_ALB_IDLE_TIMEOUT"] == "${AlbIdleTimeout}"
    assert env["SDSERVE_METRIC_NAMESPACE"] == props(template, "BacklogScaling")["TargetTrackingConfiguration"][
        "CustomizedMetricSpecification"]["Namespace"]
    # Every setting the bootstrap reads from deploy.env is written by the template (or has a default).
    script = (AWS / "bootstrap.sh").read_text()
    for key in ("SDSERVE_RELEASE_URL", "SDSERVE_RELEASE_SHA256", "SDSERVE_MODEL_SOURCE", "SDSERVE_MODEL_REVISION",
                "SDSERVE_API_KEY_SECRET_ARN", "SDSERVE_LOG_GROUP", "SDSERVE_STACK", "SDSERVE_DRAIN_TIMEOUT"):
        assert key in env and key in script, key
    # Values are data: the heredoc is quoted and every free-text parameter is pattern-restricted, so no
    # parameter can inject shell (or end the heredoc with a newline).
    assert "<<'SDSERVE_ENV'" in header and "<<'SDSERVE_BOOTSTRAP'" in header
    params = template["Parameters"]
    for name in re.findall(r"\$\{([A-Za-z0-9]+)\}", header):
        if name in params and params[name]["Type"] == "String":
            assert "AllowedPattern" in params[name] or "AllowedValues" in params[name], name
            pattern = params[name].get("AllowedPattern")
            for evil in ("demo\nSDSERVE_ENV", "s3://bucket/a b", "s3://bucket/$(id)", "s3://bucket/`id`", "x\ny"):
                assert not (pattern and re.fullmatch(pattern, evil)), (name, evil)
    assert set(subs) == {"Variant"}


# ------------------------------------------------------------------------- compute security

def test_imdsv2_required_with_hop_limit_one(template):
    md = props(template, "LaunchTemplate")["LaunchTemplateData"]["MetadataOptions"]
    assert md["HttpTokens"] == "required"
    assert md["HttpPutResponseHopLimit"] == 1
    assert md.get("HttpEndpoint", "enabled") == "enabled"


def test_root_volume_encrypted_gp3_and_no_ssh_key(template):
    data = props(template, "LaunchTemplate")["LaunchTemplateData"]
    mappings = data["BlockDeviceMappings"]
    assert mappings and all(m["Ebs"]["Encrypted"] is True for m in mappings)
    root = next(m for m in mappings if m["DeviceName"] == "/dev/sda1")  # Ubuntu's root device
    assert root["Ebs"]["VolumeType"] == "gp3" and root["Ebs"]["DeleteOnTermination"] is True
    assert "KeyName" not in data and "NetworkInterfaces" not in data  # no SSH key, no public IP
    role = props(template, "InstanceRole")
    assert {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"} in role["ManagedPolicyArns"]


def ingress_rules(t):
    """(security group logical id, rule) for inline and standalone ingress rules."""
    for name, sg in resources(t, "AWS::EC2::SecurityGroup").items():
        for rule in sg["Properties"].get("SecurityGroupIngress", []):
            yield name, rule
    for name, rule in resources(t, "AWS::EC2::SecurityGroupIngress").items():
        assert "Ref" in rule["Properties"]["GroupId"], name
        yield rule["Properties"]["GroupId"]["Ref"], rule["Properties"]


def resolve(t, value):
    if isinstance(value, dict) and "Ref" in value and value["Ref"] in t["Parameters"]:
        return t["Parameters"][value["Ref"]].get("Default")
    return value


def test_no_world_ingress_but_the_load_balancers_http_and_https(template):
    world = []
    for group, rule in ingress_rules(template):
        cidr = resolve(template, rule.get("CidrIp"))
        if cidr == "0.0.0.0/0" or rule.get("CidrIpv6") == "::/0" or (cidr and cidr.endswith("/0")):
            world.append((group, rule["FromPort"], rule["ToPort"]))
        assert not (rule.get("FromPort", 0) <= 22 <= rule.get("ToPort", -1)), ("SSH open", group, rule)
    assert sorted(world) == [("AlbSecurityGroup", 80, 80), ("AlbSecurityGroup", 443, 443)]
    # The load balancer sends only to the instances' service port (its default allow-all egress replaced).
    alb = props(template, "AlbSecurityGroup")
    assert [r["CidrIp"] for r in alb["SecurityGroupEgress"]] == ["255.255.255.255/32"]
    egress = [r["Properties"] for r in resources(template, "AWS::EC2::SecurityGroupEgress").values()]
    assert egress == [{"GroupId": {"Ref": "AlbSecurityGroup"}, "IpProtocol": "tcp", "FromPort": SERVICE_PORT,
                       "ToPort": SERVICE_PORT, "DestinationSecurityGroupId": {"Ref": "InstanceSecurityGroup"},
                       "Description": egress[0]["Description"]}]


def test_instance_security_group_admits_only_the_load_balancer_on_the_service_port(template):
    assert "SecurityGroupIngress" not in props(template, "InstanceSecurityGroup")
    rules = [rule for group, rule in ingress_rules(template) if group == "InstanceSecurityGroup"]
    assert len(rules) == 1
    rule = rules[0]
    assert is_ref(rule["SourceSecurityGroupId"], "AlbSecurityGroup")
    assert rule["IpProtocol"] == "tcp" and rule["FromPort"] == rule["ToPort"] == SERVICE_PORT
    assert not {"CidrIp", "CidrIpv6", "SourcePrefixListId"} & set(rule)
    # Instances live in the private subnets and reach the internet through NAT only.
    lt = props(template, "LaunchTemplate")["LaunchTemplateData"]
    assert lt["SecurityGroupIds"] == [{"Ref": "InstanceSecurityGroup"}]
    zones = if_branches(props(template, "AutoScalingGroup")["VPCZoneIdentifier"])
    assert zones[0] == [{"Ref": "PrivateSubnet1"}, {"Ref": "PrivateSubnet2"}]
    for subnet in resources(template, "AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False


# ------------------------------------------------------------------------ Auto Scaling group

def test_auto_scaling_group_health_spot_and_lifecycle(template):
    asg = props(template, "AutoScalingGroup")
    assert asg["HealthCheckType"] == "ELB"
    assert is_ref(asg["HealthCheckGracePeriod"], "WarmupSeconds")
    assert asg["CapacityRebalance"] is True
    assert asg["TargetGroupARNs"] == [{"Ref": "TargetGroup"}]
    for key in ("MinSize", "MaxSize", "DesiredCapacity"):
        assert is_ref(asg[key], key)
    assert template["Parameters"]["MinSize"]["MinValue"] == 0
    mixed = asg["MixedInstancesPolicy"]["Fn::If"]
    assert mixed[0] == "UseWarmPool" and mixed[1] == {"Ref": "AWS::NoValue"}  # warm pools exclude Spot
    dist = mixed[2]["InstancesDistribution"]
    assert dist["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert is_ref(dist["OnDemandBaseCapacity"], "OnDemandBaseCapacity")
    assert is_ref(dist["OnDemandPercentageAboveBaseCapacity"], "OnDemandPercentageAboveBaseCapacity")
    (override,) = mixed[2]["LaunchTemplate"]["Overrides"]
    assert is_ref(override["InstanceRequirements"]["AllowedInstanceTypes"], "InstanceTypes")
    assert override["InstanceRequirements"]["AcceleratorManufacturers"] == ["nvidia"]
    families = {t.split(".")[0] for t in template["Parameters"]["InstanceTypes"]["Default"].split(",")}
    assert {"g4dn", "g5", "g6"} <= families
    hooks = {h["LifecycleTransition"]: h for h in asg["LifecycleHookSpecificationList"]}
    drain = hooks["autoscaling:EC2_INSTANCE_TERMINATING"]
    assert drain["DefaultResult"] == "CONTINUE"
    assert drain["HeartbeatTimeout"] >= template["Parameters"]["DrainTimeout"]["MaxValue"] + 30
    launch = hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
    assert launch["DefaultResult"] == "ABANDON" and is_ref(launch["HeartbeatTimeout"], "WarmupSeconds")
    # The grace period covers warm-up; the deregistration delay equals the drain timeout.
    assert template["Parameters"]["WarmupSeconds"]["Default"] >= 600
    attrs = {a["Key"]: a["Value"] for a in props(template, "TargetGroup")["TargetGroupAttributes"]}
    assert is_ref(attrs["deregistration_delay.timeout_seconds"], "DrainTimeout")
    assert attrs["load_balancing.algorithm.type"] == "least_outstanding_requests"
    # Signals and rolling updates.
    res = template["Resources"]["AutoScalingGroup"]
    assert is_ref(res["CreationPolicy"]["ResourceSignal"]["Count"], "DesiredCapacity")
    rolling = res["UpdatePolicy"]["AutoScalingRollingUpdate"]
    assert rolling["WaitOnResourceSignals"] is True and rolling["MaxBatchSize"] == 1
    # The warm-pool option: its own resource, and a rule that it comes without Spot.
    assert template["Resources"]["WarmPoolConfig"]["Condition"] == "UseWarmPool"
    assert "WarmPoolNeedsOnDemand" in template["Rules"]


def test_load_balancer_and_instances_wait_for_the_new_vpcs_internet_path(template):
    """No conditional DependsOn in CloudFormation: a handle whose Metadata references the new VPC's
    gateway attachment and routes (Fn::If CreateVpc) orders the load balancer and the group after
    them; otherwise the ALB can fail ("has no internet gateway") and instances boot without NAT."""
    res = template["Resources"]

    def waits_for(name, handle, needed):
        assert handle in res[name]["DependsOn"], (name, handle)
        ready = res[handle]["Metadata"]["Ready"]["Fn::If"]
        assert ready[0] == "CreateVpc" and ready[2] == ""
        assert {r["Ref"] for r in ready[1]} >= needed, (handle, needed - {r["Ref"] for r in ready[1]})

    waits_for("LoadBalancer", "PublicNetworkReady", {"InternetGatewayAttachment", "PublicDefaultRoute",
                                                     "PublicSubnet1Routes", "PublicSubnet2Routes"})
    waits_for("AutoScalingGroup", "PrivateNetworkReady", {"PrivateDefaultRoute1", "PrivateDefaultRoute2",
                                                          "PrivateSubnet1Routes", "PrivateSubnet2Routes", "S3Endpoint"})
    # ALB log delivery: every region opened before August 2022 (Jakarta included) has its account.
    legacy = {c["Fn::Equals"][1] for c in template["Conditions"]["ElbLegacyRegionA"]["Fn::Or"]
              + template["Conditions"]["ElbLegacyRegionB"]["Fn::Or"]
              + [x for x in template["Conditions"]["ElbLegacyRegion"]["Fn::Or"] if "Fn::Equals" in x]}
    assert legacy == set(template["Mappings"]["ElbLogAccount"]) and "ap-southeast-3" in legacy


def test_target_tracking_on_the_backlog_metric_the_instances_publish(template):
    policy = props(template, "BacklogScaling")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert is_ref(policy["AutoScalingGroupName"], "AutoScalingGroup")
    cfg = policy["TargetTrackingConfiguration"]
    assert is_ref(cfg["TargetValue"], "BacklogTargetPerInstance")
    metric = cfg["CustomizedMetricSpecification"]
    assert (metric["Namespace"], metric["MetricName"], metric["Statistic"], metric["Unit"]) == \
        ("sdserve", "Backlog", "Average", "Count")
    assert metric["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": {"Ref": "AutoScalingGroup"}}]
    publisher = (AWS / "instance" / "sdserve-backlog.sh").read_text()
    assert "--metric-name Backlog --unit Count" in publisher
    assert '--dimensions "AutoScalingGroupName=$asg"' in publisher
    assert "sdserve_queue_depth" in publisher and "sdserve_jobs_running" in publisher
    # The instance may publish only into that namespace.
    stmt = dict(iam_statements(template))["PublishBacklog"]
    assert stmt["Condition"] == {"StringEquals": {"cloudwatch:namespace": "sdserve"}}
    # With MinSize 0 nothing publishes: an alarm on rejected requests starts the first instance.
    assert template["Resources"]["WakeUpScaling"]["Condition"] == "ScaleFromZero"


# --------------------------------------------------------------------------- edge and IAM

def test_load_balancer_https_logging_and_headers(template):
    lb = props(template, "LoadBalancer")
    attrs = {a["Key"]: a["Value"] for a in lb["LoadBalancerAttributes"]}
    assert attrs["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attrs["access_logs.s3.enabled"] == "true" and is_ref(attrs["access_logs.s3.bucket"], "LogsBucket")
    assert is_ref(attrs["idle_timeout.timeout_seconds"], "AlbIdleTimeout")
    assert template["Parameters"]["AlbIdleTimeout"]["Default"] >= 300
    http = props(template, "HttpListener")
    with_cert, without = if_branches(http["DefaultActions"])
    assert with_cert[0]["Type"] == "redirect" and with_cert[0]["RedirectConfig"]["Protocol"] == "HTTPS"
    assert without[0]["Type"] == "forward"
    https = template["Resources"]["HttpsListener"]
    assert https["Condition"] == "HasCertificate"
    assert https["Properties"]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2")
    tg = props(template, "TargetGroup")
    assert tg["HealthCheckPath"] == "/health" and tg["Matcher"] == {"HttpCode": "200"}
    bucket = props(template, "LogsBucket")
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert template["Resources"]["LogsBucket"]["DeletionPolicy"] == "Retain"


def iam_statements(t):
    for name, role in resources(t, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for p in if_branches(policy):
                if not isinstance(p, dict) or "PolicyDocument" not in p:
                    continue
                for s in p["PolicyDocument"]["Statement"]:
                    for stmt in if_branches(s):
                        if isinstance(stmt, dict) and "Effect" in stmt:
                            yield stmt.get("Sid"), stmt


def test_instance_role_is_least_privilege(template):
    stmts = dict(iam_statements(template))
    assert set(stmts) == {"ReadTheApiKey", "DecryptTheApiKey", "ShipLogs", "PublishBacklog",
                          "CompleteOwnLifecycleActions", "SignalTheStack", "ReadTheModel", "ReadTheRelease",
                          "ReadLoras", "ReadUpscalers"}
    for sid, stmt in stmts.items():
        actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
        assert all("*" not in a for a in actions), sid
        if stmt["Resource"] == "*":
            assert sid == "PublishBacklog" and "Condition" in stmt, sid  # PutMetricData has no resource ARN
    assert is_ref(stmts["ReadTheApiKey"]["Resource"], "ApiKeySecret")
    assert stmts["CompleteOwnLifecycleActions"]["Condition"] == \
        {"StringEquals": {"autoscaling:ResourceTag/sdserve:stack": {"Ref": "AWS::StackId"}}}
    tags = {t["Key"]: t["Value"] for t in props(template, "AutoScalingGroup")["Tags"]}
    assert tags["sdserve:stack"] == {"Ref": "AWS::StackId"}
    # S3 reads only under the configured prefixes, each behind its condition.
    s3_policy = props(template, "InstanceRole")["Policies"][1]["Fn::If"]
    assert s3_policy[0] == "ReadsS3"
    for s in s3_policy[1]["PolicyDocument"]["Statement"]:
        assert s["Fn::If"][0] in {"ModelFromS3", "ReleaseFromS3", "HasLoraS3", "HasUpscalerS3"}
        assert s["Fn::If"][2] == {"Ref": "AWS::NoValue"}


def test_api_key_is_generated_unless_given(template):
    secret = props(template, "ApiKeySecret")
    gen = secret["GenerateSecretString"]["Fn::If"]
    assert gen[0] == "GenerateApiKey" and gen[1]["PasswordLength"] >= 32 and gen[2] == {"Ref": "AWS::NoValue"}
    assert secret["SecretString"]["Fn::If"] == ["GenerateApiKey", {"Ref": "AWS::NoValue"}, {"Ref": "ApiKey"}]
    assert template["Parameters"]["ApiKey"]["NoEcho"] is True
    assert template["Conditions"]["GenerateApiKey"] == {"Fn::Equals": [{"Ref": "ApiKey"}, ""]}


# ------------------------------------------------------------------- names, outputs, observability

NAME_KEYS = re.compile(r".*Name$")
# *Name properties that refer to something else rather than name the resource.
REFERENCES = {("AWS::EC2::VPCEndpoint", "ServiceName"), ("AWS::CloudWatch::Alarm", "MetricName"),
              ("AWS::AutoScaling::WarmPool", "AutoScalingGroupName"),
              ("AWS::AutoScaling::ScalingPolicy", "AutoScalingGroupName")}


def test_no_hard_coded_physical_names(template):
    """No top-level *Name property holds a literal (it would collide with a second stack); names
    built with Fn::Sub carry the stack name. Lifecycle hook names are per Auto Scaling group and
    inline policy names per role, so they are not physical names."""
    for name, res in resources(template).items():
        for key, value in res.get("Properties", {}).items():
            if not NAME_KEYS.match(key) or (res["Type"], key) in REFERENCES:
                continue
            assert not isinstance(value, str), f"{name}.{key} is hard-coded: {value}"
            if isinstance(value, dict) and "Fn::Sub" in value:
                sub = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
                assert "${AWS::StackName}" in sub or "${AWS::StackId}" in sub, (name, key)
    for key, out in template["Outputs"].items():
        assert out["Export"]["Name"] == {"Fn::Sub": "${AWS::StackName}-" + key}


def test_outputs_logs_alarms_dashboard(template):
    assert {"EndpointUrl", "ApiKeySecretArn", "LogGroupName"} <= set(template["Outputs"])
    assert is_ref(props(template, "LogGroup")["RetentionInDays"], "LogRetentionDays")
    metrics = {r["Properties"].get("MetricName") for r in resources(template, "AWS::CloudWatch::Alarm").values()}
    assert {"UnHealthyHostCount", "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count"} <= metrics
    body = props(template, "Dashboard")["DashboardBody"]["Fn::Sub"]
    sample = re.sub(r"\$\{[^}]+\}", "x", body[0])
    assert len(json.loads(sample)["widgets"]) >= 5


def test_parameter_groups_cover_every_parameter(template):
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    listed = [p for g in groups for p in g["Parameters"]]
    assert sorted(listed) == sorted(template["Parameters"]) and len(listed) == len(set(listed))
    ami = template["Parameters"]["AmiParameter"]
    assert ami["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert ami["Default"] == "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


# ------------------------------------------------------------------------------ two stacks

MOTO_UNSUPPORTED = {"AWS::SecretsManager::Secret", "AWS::EC2::SecurityGroupEgress", "AWS::AutoScaling::ScalingPolicy",
                    "AWS::CloudWatch::Alarm", "AWS::S3::BucketPolicy", "AWS::AutoScaling::WarmPool",
                    "AWS::CloudFormation::WaitConditionHandle"}
DLAMI = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


def create_stacks(text, names, params):
    """Creates the stacks in one moto region; returns ({name: status or exception text}, resources
    by stack, exports, the resource types moto skipped)."""
    import boto3
    from moto import mock_aws

    import moto_cfn
    # moto resolves SSM-typed parameter defaults from its own store, which cannot hold /aws/ names.
    text = text.replace(DLAMI, "/test/dlami")
    out, res = {}, {}
    with mock_aws(), moto_cfn.patched(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        boto3.client("ssm", region_name="us-east-1").put_parameter(Name="/test/dlami", Value="ami-12c6146b",
                                                                   Type="String")
        cf = boto3.client("cloudformation", region_name="us-east-1")
        for name in names:
            try:
                cf.create_stack(StackName=name, TemplateBody=text, Capabilities=["CAPABILITY_IAM"],
                                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
                out[name] = cf.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
                res[name] = {r["LogicalResourceId"]: r for r in
                             cf.list_stack_resources(StackName=name)["StackResourceSummaries"]}
            except Exception as e:  # noqa: BLE001 - the negative controls expect a failure
                out[name] = f"{type(e).__name__}: {e}"
        exports = cf.list_exports()["Exports"]
    skipped = {m.group(1) for w in caught for m in [re.search(r"parse (AWS::\S+) but", str(w.message))] if m}
    return out, res, exports, skipped


PARAMS = {"ReleaseUrl": "s3://artifacts-bucket/sdserve/releases/sdserve-0.1.0-linux-x86_64-cuda.tar.gz",
          "ReleaseSha256": "a" * 64}


def test_two_stacks_coexist_in_one_region():
    status, res, exports, skipped = create_stacks(TEMPLATE.read_text(), ["sd-a", "sd-b"], PARAMS)
    assert status == {"sd-a": "CREATE_COMPLETE", "sd-b": "CREATE_COMPLETE"}, status
    # Everything moto implements was created, in both stacks, with distinct physical ids.
    t = load_template()
    expected = {k for k, v in t["Resources"].items()
                if v["Type"] not in MOTO_UNSUPPORTED and v.get("Condition") in (None, "CreateVpc")}
    for name in ("sd-a", "sd-b"):
        created = {k for k, r in res[name].items() if r["ResourceStatus"] == "CREATE_COMPLETE"}
        assert expected <= created, expected - created
    for logical in ("LogsBucket", "LogGroup", "InstanceRole", "InstanceProfile", "LoadBalancer", "TargetGroup",
                    "LaunchTemplate", "AutoScalingGroup", "Vpc", "AlbSecurityGroup", "InstanceSecurityGroup"):
        a, b = res["sd-a"][logical]["PhysicalResourceId"], res["sd-b"][logical]["PhysicalResourceId"]
        assert a and b and a != b, logical
    names = [e["Name"] for e in exports]
    assert len(names) == 2 * len(t["Outputs"]) == len(set(names))
    assert all(n.startswith(("sd-a-", "sd-b-")) for n in names)
    # What moto could not create is exactly the known list (so the claim above stays honest).
    assert skipped <= MOTO_UNSUPPORTED, skipped - MOTO_UNSUPPORTED


@pytest.mark.parametrize("change", ["bucket name", "export name"])
def test_the_coexistence_check_catches_a_hard_coded_name(change):
    """Negative control: the same moto run fails for the second stack once a name is fixed."""
    text = TEMPLATE.read_text()
    if change == "bucket name":
        old = "  LogsBucket:\n    Type: AWS::S3::Bucket\n    DeletionPolicy: Retain\n    UpdateReplacePolicy: Retain\n    Properties:\n"
        new = old + "      BucketName: sdserve-access-logs\n"
    else:
        old = 'Export: {Name: !Sub "${AWS::StackName}-EndpointUrl"}'
        new = "Export: {Name: sdserve-EndpointUrl}"
    assert old in text
    status, _, _, _ = create_stacks(text.replace(old, new), ["sd-a", "sd-b"], PARAMS)
    assert status["sd-a"] == "CREATE_COMPLETE"
    assert status["sd-b"] != "CREATE_COMPLETE", status


def test_systemd_units_parse_and_are_hardened():
    analyze = shutil.which("systemd-analyze")
    units = sorted((AWS / "instance").glob("*.service"))
    assert {u.name for u in units} == {"sdserve.service", "sdserve-lifecycle.service", "sdserve-backlog.service"}
    for unit in units:
        text = unit.read_text()
        assert "NoNewPrivileges=yes" in text and "ProtectSystem=strict" in text, unit.name
        if analyze:  # only complaint allowed: the executables are not installed on this machine
            p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, timeout=60)
            problems = [line for line in (p.stdout + p.stderr).decode().splitlines()
                        if line.strip() and "is not executable" not in line]
            assert not problems, (unit.name, problems)
    sdserve = (AWS / "instance" / "sdserve.service").read_text()
    assert "User=sdserve" in sdserve and "CapabilityBoundingSet=\n" in sdserve
    assert "IPAddressDeny=169.254.169.254/32" in sdserve  # no instance metadata for the service
    assert "KillSignal=SIGTERM" in sdserve  # SIGTERM is sdserve's drain
    # The GPU behind DevicePolicy=closed: current drivers list "nvidia" and "nvidiactl" in /proc/devices
    # (older ones "nvidia-frontend"), plus "nvidia-uvm" and "nvidia-caps": one glob admits them all.
    # A syscall outside @system-service fails with EPERM rather than killing the CUDA process.
    assert "DevicePolicy=closed" in sdserve and "DeviceAllow=char-nvidia* rwm" in sdserve
    assert "SystemCallErrorNumber=EPERM" in sdserve
    bootstrap = (AWS / "bootstrap.sh").read_text()
    assert "nvidia-modprobe -u -c=0" in bootstrap and "/etc/modules-load.d/" in bootstrap
