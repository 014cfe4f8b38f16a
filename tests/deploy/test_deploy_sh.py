"""deploy/aws/deploy.sh against a recording `aws` CLI: which calls each command makes, the parameter
file handling and the release upload. (What the calls do in AWS is CloudFormation's business; the
template itself is tested in test_template.py.)"""
import hashlib
import os
import subprocess

import pytest

from deploy_helpers import AWS
from fakes import clean_env, fake_aws, read_calls

DEPLOY = AWS / "deploy.sh"


def run(tmp_path, *args, replies=(), env_extra=None):
    calls = fake_aws(tmp_path / "bin", replies)
    env = clean_env(tmp_path, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", **(env_extra or {}))
    p = subprocess.run([str(DEPLOY), *map(str, args)], env=env, capture_output=True, timeout=60)
    return p, read_calls(calls)


@pytest.fixture
def params(tmp_path):
    f = tmp_path / "my.env"
    f.write_text("# test\nModelSource=test-org/sd1-tiny\n\nInstanceTypes=g6.xlarge,g5.xlarge\nMaxSize=3\n")
    return f


OUTPUTS = [(["describe-stacks", "OutputKey=='EndpointUrl'"], "http://sd-alb-1.us-east-1.elb.amazonaws.com", 0),
           (["describe-stacks", "StackStatus"], "", 255)]


def test_up_uploads_the_release_and_deploys_with_its_checksum(tmp_path, params):
    release = tmp_path / "sdserve-0.1.0-linux-x86_64-cuda.tar.gz"
    release.write_bytes(b"not really a tarball")
    sha = hashlib.sha256(release.read_bytes()).hexdigest()
    (tmp_path / (release.name + ".sha256")).write_text(f"{sha}  {release.name}\n")
    p, calls = run(tmp_path, "up", "--stack", "sd", "--region", "eu-west-1", "--params", params,
                   "--bucket", "my-artifacts", "--release", release, replies=OUTPUTS)
    assert p.returncode == 0, p.stderr.decode()
    assert all(c[:2] == ["--region", "eu-west-1"] for c in calls)
    calls = [c[2:] for c in calls]
    assert ["s3api", "head-bucket", "--bucket", "my-artifacts"] in calls
    assert ["s3", "cp", "--only-show-errors", str(release), f"s3://my-artifacts/sdserve/releases/{release.name}"] in calls
    deploy = next(c for c in calls if c[:2] == ["cloudformation", "deploy"])
    opts = deploy[2:deploy.index("--parameter-overrides")]
    assert dict(zip(opts[::2], opts[1::2]))["--stack-name"] == "sd"
    assert "--capabilities" in deploy and "CAPABILITY_IAM" in deploy and "--s3-bucket" in deploy
    assert deploy[deploy.index("--template-file") + 1] == str(AWS / "sdserve.yaml")
    overrides = deploy[deploy.index("--parameter-overrides") + 1:]
    assert overrides == ["ModelSource=test-org/sd1-tiny", "InstanceTypes=g6.xlarge,g5.xlarge", "MaxSize=3",
                         f"ReleaseUrl=s3://my-artifacts/sdserve/releases/{release.name}", f"ReleaseSha256={sha}"]
    assert b"endpoint: http://sd-alb-1.us-east-1.elb.amazonaws.com" in p.stderr


def test_up_refuses_a_release_that_does_not_match_its_checksum_file(tmp_path, params):
    release = tmp_path / "sdserve.tar.gz"
    release.write_bytes(b"x")
    (tmp_path / "sdserve.tar.gz.sha256").write_text("0" * 64 + "  sdserve.tar.gz\n")
    p, calls = run(tmp_path, "up", "--params", params, "--bucket", "b", "--release", release, replies=OUTPUTS)
    assert p.returncode == 1 and b"does not match" in p.stderr
    assert not [c for c in calls if "deploy" in c or "cp" in c]


def test_up_creates_a_private_encrypted_bucket_when_missing(tmp_path, params):
    p, calls = run(tmp_path, "up", "--region", "eu-west-1", "--params", params, "--bucket", "new-bucket",
                   replies=[(["head-bucket"], "", 254)] + OUTPUTS)
    assert p.returncode == 0, p.stderr.decode()
    calls = [c[2:] for c in calls]
    assert ["s3api", "create-bucket", "--bucket", "new-bucket", "--create-bucket-configuration",
            "LocationConstraint=eu-west-1"] in calls
    assert any(c[:2] == ["s3api", "put-public-access-block"] for c in calls)
    assert any(c[:2] == ["s3api", "put-bucket-encryption"] for c in calls)


def test_parameter_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.env"
    bad.write_text("ModelSource=a/b\nthis is not a parameter\n")
    p, calls = run(tmp_path, "up", "--params", bad, "--bucket", "b")
    assert p.returncode == 1 and b"bad.env line 2: expected KEY=VALUE" in p.stderr and not calls
    p, _ = run(tmp_path, "up", "--bucket", "b")
    assert p.returncode == 1 and b"--params FILE is required" in p.stderr
    p, _ = run(tmp_path, "up", "--params", bad.with_name("none.env"), "--bucket", "b")
    assert p.returncode == 1 and b"no such parameters file" in p.stderr


def test_update_needs_an_existing_stack(tmp_path, params):
    p, calls = run(tmp_path, "update", "--params", params, "--bucket", "b", replies=OUTPUTS)
    assert p.returncode == 1 and b"does not exist (use up)" in p.stderr
    assert not [c for c in calls if c[:2] == ["cloudformation", "deploy"]]


def test_down_deletes_waits_and_keeps_or_purges_the_log_bucket(tmp_path):
    replies = [(["describe-stacks", "StackStatus"], "CREATE_COMPLETE", 0),
               (["describe-stacks", "OutputKey=='LogsBucketName'"], "sd-logsbucket-abc", 0)]
    p, calls = run(tmp_path, "down", "--stack", "sd", replies=replies)
    assert p.returncode == 0, p.stderr.decode()
    assert ["cloudformation", "delete-stack", "--stack-name", "sd"] in calls
    assert ["cloudformation", "wait", "stack-delete-complete", "--stack-name", "sd"] in calls
    assert b"kept the access-log bucket s3://sd-logsbucket-abc" in p.stderr
    assert not [c for c in calls if "delete-bucket" in c]
    (tmp_path / "bin" / "aws-calls.jsonl").unlink()
    p, calls = run(tmp_path, "down", "--stack", "sd", "--purge-logs", replies=replies)
    assert p.returncode == 0, p.stderr.decode()
    assert ["s3api", "delete-bucket", "--bucket", "sd-logsbucket-abc"] in calls
    assert [c for c in calls if c[:2] == ["s3api", "list-object-versions"]]


def test_scale_and_key(tmp_path):
    replies = [(["OutputKey=='AutoScalingGroupName'"], "sd-asg", 0),
               (["OutputKey=='ApiKeySecretArn'"], "arn:aws:secretsmanager:us-east-1:1:secret:k", 0),
               (["get-secret-value"], "the-key", 0)]
    p, calls = run(tmp_path, "scale", "3", "--stack", "sd", replies=replies)
    assert p.returncode == 0, p.stderr.decode()
    assert ["autoscaling", "set-desired-capacity", "--auto-scaling-group-name", "sd-asg", "--desired-capacity", "3"] in calls
    p, _ = run(tmp_path, "scale", "many", replies=replies)
    assert p.returncode == 1 and b"usage: deploy.sh scale N" in p.stderr
    p, calls = run(tmp_path, "key", "--stack", "sd", replies=replies)
    assert p.returncode == 0 and p.stdout == b"the-key\n"


def test_the_template_bucket_must_be_in_the_stacks_region(tmp_path, params):
    """`cloudformation deploy --s3-bucket` gives CloudFormation a URL in the stack's region; a bucket
    elsewhere fails there (aws/aws-cli#4372), so deploy.sh refuses it up front."""
    p, calls = run(tmp_path, "up", "--region", "eu-west-1", "--params", params, "--bucket", "bucket-in-virginia",
                   replies=[(["get-bucket-location"], "None", 0)] + OUTPUTS)
    assert p.returncode == 1 and b"is in us-east-1 but the stack goes to eu-west-1" in p.stderr, p.stderr
    assert not [c for c in calls if c[2:4] == ["cloudformation", "deploy"]]
    # The region may come from the environment alone: a new bucket is created there.
    (tmp_path / "bin" / "aws-calls.jsonl").unlink()
    p, calls = run(tmp_path, "up", "--params", params, "--bucket", "new-bucket", env_extra={"AWS_DEFAULT_REGION": "eu-west-1"},
                   replies=[(["head-bucket"], "", 254)] + OUTPUTS)
    assert p.returncode == 0, p.stderr.decode()
    assert ["s3api", "create-bucket", "--bucket", "new-bucket", "--create-bucket-configuration",
            "LocationConstraint=eu-west-1"] in calls
