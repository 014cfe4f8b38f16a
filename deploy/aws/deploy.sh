#!/usr/bin/env bash
# One command for the sdserve AWS stack (deploy/aws/sdserve.yaml), over the AWS CLI (v2 advised).
#
#   deploy/aws/deploy.sh up     --params my.env --bucket my-artifacts [--release dist/sdserve-...-cuda.tar.gz]
#   deploy/aws/deploy.sh update --params my.env --bucket my-artifacts [--release FILE]
#   deploy/aws/deploy.sh status | key | logs | scale N | down [--purge-logs]
#
# Commands:
#   up        create the stack, or update it if it exists, and wait; prints the endpoint
#   update    update an existing stack (parameters, template, release) and wait; instances are
#             replaced one at a time (rolling update) when the launch template changes
#   status    stack status and outputs, instances (type, Spot or On-Demand, health), target
#             health, and the endpoint's /health
#   key       print the API key (Secrets Manager)
#   logs      follow the service's CloudWatch logs (aws logs tail; CLI v2)
#   scale N   set the group's desired capacity (between MinSize and MaxSize)
#   down      delete the stack and wait; the access-log bucket is kept unless --purge-logs
# Options:
#   --stack NAME     stack name (default $SDSERVE_STACK, else sdserve)
#   --region REGION  AWS region (default: the CLI's)
#   --params FILE    KEY=VALUE lines, one template parameter each, # comments
#                    (deploy/aws/params.example.env); the file is the whole configuration
#   --bucket NAME    an S3 bucket of yours for the template (it is over CloudFormation's 51,200-byte
#                    inline limit) and the release tarball; created (private, encrypted) if missing
#   --release FILE   a tarball from scripts/package.sh: uploaded next to the template, and
#                    ReleaseUrl/ReleaseSha256 set from it (FILE.sha256 is checked when present)
#   --template FILE  default deploy/aws/sdserve.yaml
#   --purge-logs     down: also empty and delete the access-log bucket
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

stack=${SDSERVE_STACK:-sdserve} region="" params="" bucket="" release="" template="$here/sdserve.yaml" purge=0
cmd=${1:-}
[[ -n $cmd ]] && shift
count=""
if [[ $cmd == scale ]]; then count=${1:-}; [[ $# -gt 0 ]] && shift; fi
while (($#)); do
  case $1 in
    --stack) stack=$2; shift 2 ;;
    --region) region=$2; shift 2 ;;
    --params) params=$2; shift 2 ;;
    --bucket) bucket=$2; shift 2 ;;
    --release) release=$2; shift 2 ;;
    --template) template=$2; shift 2 ;;
    --purge-logs) purge=1; shift ;;
    -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "deploy: error: $*" >&2; exit 1; }
say() { echo "deploy: $*" >&2; }
aws_() { if [[ -n $region ]]; then aws --region "$region" "$@"; else aws "$@"; fi; }
command -v aws >/dev/null || die "the AWS CLI is not installed (https://docs.aws.amazon.com/cli/)"

sha256() { if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi; }
output() {  # output KEY: a stack output's value
  aws_ cloudformation describe-stacks --stack-name "$stack" --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
stack_status() {
  aws_ cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].StackStatus' --output text 2>/dev/null || true
}

read_params() {  # the params file as KEY=VALUE words (blank lines and comments skipped)
  [[ -n $params ]] || die "--params FILE is required (start from deploy/aws/params.example.env)"
  [[ -f $params ]] || die "no such parameters file: $params"
  local line n=0
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    line=${line%$'\r'}
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    [[ $line =~ ^[A-Za-z0-9]+=.*$ ]] || die "$params line $n: expected KEY=VALUE, got '$line'"
    overrides+=("$line")
  done < "$params"
}

ensure_bucket() {
  [[ -n $bucket ]] || die "--bucket NAME is required (the template is too large to send inline; the release goes there too)"
  # The region the CLI will use: --region, else the environment, else the profile (`aws configure
  # get` reads only the files).
  local r=${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region || true)}}}
  if aws_ s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
    # `cloudformation deploy` hands CloudFormation a template URL for the stack's region: a bucket
    # elsewhere fails with "must be addressed using the specified endpoint" (aws/aws-cli#4372).
    local loc
    loc=$(aws_ s3api get-bucket-location --bucket "$bucket" --query LocationConstraint --output text 2>/dev/null || true)
    case $loc in None|null) loc=us-east-1 ;; EU) loc=eu-west-1 ;; esac
    if [[ -n $loc && -n $r && $loc != "$r" ]]; then
      die "s3://$bucket is in $loc but the stack goes to $r: name a bucket in $r (CloudFormation reads the template from the stack's region)"
    fi
    return
  fi
  say "creating the private bucket s3://$bucket"
  if [[ -z $r || $r == us-east-1 ]]; then
    aws_ s3api create-bucket --bucket "$bucket" >/dev/null
  else
    aws_ s3api create-bucket --bucket "$bucket" --create-bucket-configuration "LocationConstraint=$r" >/dev/null
  fi
  aws_ s3api put-public-access-block --bucket "$bucket" \
    --public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
  aws_ s3api put-bucket-encryption --bucket "$bucket" \
    --server-side-encryption-configuration '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}'
}

upload_release() {
  [[ -n $release ]] || return 0
  [[ -f $release ]] || die "no such release tarball: $release"
  local sum name
  sum=$(sha256 "$release") name=$(basename "$release")
  if [[ -f $release.sha256 ]]; then
    [[ $(cut -d' ' -f1 "$release.sha256") == "$sum" ]] || die "$release does not match $release.sha256"
  fi
  say "uploading $name to s3://$bucket/sdserve/releases/"
  aws_ s3 cp --only-show-errors "$release" "s3://$bucket/sdserve/releases/$name"
  overrides+=("ReleaseUrl=s3://$bucket/sdserve/releases/$name" "ReleaseSha256=$sum")
}

deploy() {  # deploy create|update
  local overrides=()
  read_params
  ensure_bucket
  upload_release
  local status
  status=$(stack_status)
  if [[ $1 == update && ( -z $status || $status == None ) ]]; then die "stack $stack does not exist (use up)"; fi
  if [[ $status == ROLLBACK_COMPLETE ]]; then
    die "stack $stack failed to create (ROLLBACK_COMPLETE); see deploy.sh status, then deploy.sh down and up again"
  fi
  say "deploying stack $stack (this waits; a first start downloads the model and can take 15-30 minutes)"
  local extra=()
  ((${#overrides[@]})) && extra=(--parameter-overrides "${overrides[@]}")
  aws_ cloudformation deploy --stack-name "$stack" --template-file "$template" \
    --s3-bucket "$bucket" --s3-prefix "sdserve/templates/$stack" --capabilities CAPABILITY_IAM \
    --no-fail-on-empty-changeset "${extra[@]}"
  say "endpoint: $(output EndpointUrl)"
  say "API key:  deploy/aws/deploy.sh key --stack $stack${region:+ --region $region}"
}

case $cmd in
  up) deploy create ;;
  update) deploy update ;;
  status)
    status=$(stack_status)
    [[ -n $status && $status != None ]] || die "stack $stack does not exist"
    echo "stack $stack: $status"
    aws_ cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text
    if [[ $status == *FAILED* || $status == *ROLLBACK* ]]; then
      echo "recent failures:"
      aws_ cloudformation describe-stack-events --stack-name "$stack" --max-items 50 \
        --query "StackEvents[?contains(ResourceStatus, 'FAILED')].[LogicalResourceId,ResourceStatusReason]" --output text
    fi
    asg=$(output AutoScalingGroupName)
    if [[ -n $asg && $asg != None ]]; then
      echo "instances:"
      aws_ autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$asg" \
        --query 'AutoScalingGroups[0].[DesiredCapacity,MinSize,MaxSize]' --output text | awk '{print "  desired " $1 " (min " $2 ", max " $3 ")"}'
      ids=$(aws_ autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$asg" \
        --query 'AutoScalingGroups[0].Instances[].InstanceId' --output text)
      if [[ -n $ids && $ids != None ]]; then
        # shellcheck disable=SC2086,SC2016 # one argument per instance id; `on-demand` is a JMESPath literal
        aws_ ec2 describe-instances --instance-ids $ids \
          --query 'Reservations[].Instances[].[InstanceId,InstanceType,InstanceLifecycle || `on-demand`,Placement.AvailabilityZone,State.Name]' --output text | sed 's/^/  /'
        aws_ autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$asg" \
          --query 'AutoScalingGroups[0].Instances[].[InstanceId,LifecycleState,HealthStatus]' --output text | sed 's/^/  /'
      fi
      tg=$(aws_ cloudformation describe-stack-resource --stack-name "$stack" --logical-resource-id TargetGroup \
        --query StackResourceDetail.PhysicalResourceId --output text)
      echo "target health:"
      aws_ elbv2 describe-target-health --target-group-arn "$tg" \
        --query 'TargetHealthDescriptions[].[Target.Id,TargetHealth.State,TargetHealth.Description]' --output text | sed 's/^/  /'
    fi
    url=$(output EndpointUrl)
    if [[ -n $url && $url != None ]]; then
      echo "GET $url/health: $(curl -s -m 10 -o /dev/null -w '%{http_code}' "$url/health" || echo unreachable)"
    fi
    ;;
  key)
    arn=$(output ApiKeySecretArn)
    aws_ secretsmanager get-secret-value --secret-id "$arn" --query SecretString --output text ;;
  logs)
    aws_ logs tail "$(output LogGroupName)" --since 1h --follow ;;
  scale)
    [[ $count =~ ^[0-9]+$ ]] || die "usage: deploy.sh scale N [--stack NAME]"
    asg=$(output AutoScalingGroupName)
    aws_ autoscaling set-desired-capacity --auto-scaling-group-name "$asg" --desired-capacity "$count"
    say "desired capacity of $asg set to $count (new instances take several minutes to warm up)" ;;
  down)
    status=$(stack_status)
    [[ -n $status && $status != None ]] || die "stack $stack does not exist"
    logs_bucket=$(output LogsBucketName)
    say "deleting stack $stack"
    aws_ cloudformation delete-stack --stack-name "$stack"
    aws_ cloudformation wait stack-delete-complete --stack-name "$stack"
    say "stack $stack deleted"
    if [[ -n $logs_bucket && $logs_bucket != None ]]; then
      if ((purge)); then
        say "emptying and deleting s3://$logs_bucket"
        for kind in Versions DeleteMarkers; do
          while :; do
            batch=$(aws_ s3api list-object-versions --bucket "$logs_bucket" --max-items 1000 \
              --query "{Objects: ${kind}[].{Key: Key, VersionId: VersionId}}" --output json)
            [[ $batch == *'"Key"'* ]] || break
            aws_ s3api delete-objects --bucket "$logs_bucket" --delete "$batch" >/dev/null
          done
        done
        aws_ s3api delete-bucket --bucket "$logs_bucket"
      else
        say "kept the access-log bucket s3://$logs_bucket (delete it with: deploy.sh down --purge-logs, or the S3 console)"
      fi
    fi ;;
  ""|-h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command $cmd (up, update, status, key, logs, scale, down)" ;;
esac
