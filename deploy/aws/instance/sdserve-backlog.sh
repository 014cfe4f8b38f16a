#!/usr/bin/env bash
# sdserve backlog publisher (systemd: sdserve-backlog.service; docs/DEPLOY.md "Scaling").
#
# Once a minute: reads sdserve_queue_depth and sdserve_jobs_running from the local /metrics (with
# the API key when keys are configured) and publishes their sum as the CloudWatch metric
# Backlog (namespace SDSERVE_METRIC_NAMESPACE, default sdserve) with the dimension
# AutoScalingGroupName. The target-tracking policy averages it over the group: backlog per
# instance. Nothing is published while sdserve is not healthy (loading, draining) or the instance
# is not in service (a warm-pool instance warming up would pull the average down with its zero).
#
# Environment: SDSERVE_PORT, SDSERVE_API_KEY_FILE (default /etc/sdserve/api-keys),
# SDSERVE_METRIC_NAMESPACE. For tests: SDSERVE_IMDS_URL, SDSERVE_ASG_NAME (skips the metadata
# lookup), SDSERVE_BACKLOG_INTERVAL (seconds, default 60), SDSERVE_AGENT_ONCE=1.
set -uo pipefail

imds_url=${SDSERVE_IMDS_URL:-http://169.254.169.254}
port=${SDSERVE_PORT:-7860}
interval=${SDSERVE_BACKLOG_INTERVAL:-60}
namespace=${SDSERVE_METRIC_NAMESPACE:-sdserve}
key_file=${SDSERVE_API_KEY_FILE:-/etc/sdserve/api-keys}

log() { printf '{"time":"%s","agent":"backlog","msg":"%s"}\n' "$(date -u +%FT%TZ)" "$*"; }

imds() {
  local token
  token=$(curl -fsS --noproxy '*' -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    "$imds_url/latest/api/token") || return 1
  curl -fsS --noproxy '*' -m 2 -H "X-aws-ec2-metadata-token: $token" "$imds_url/latest/$1"
}

asg=${SDSERVE_ASG_NAME:-}
while [[ -z $asg ]]; do
  asg=$(imds meta-data/tags/instance/aws:autoscaling:groupName) && break
  log "waiting for the Auto Scaling group tag in instance metadata"
  sleep 10
done
log "publishing $namespace/Backlog for AutoScalingGroupName=$asg every $interval s"

auth=()
while :; do
  if [[ ${#auth[@]} -eq 0 && -r $key_file ]]; then
    key=$(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$key_file" | head -1 | tr -d '[:space:]')
    [[ -n $key ]] && auth=(-H "Authorization: Bearer $key")
  fi
  if [[ $(imds meta-data/autoscaling/target-lifecycle-state) == InService ]] &&
     metrics=$(curl -fsS --noproxy '*' -m 5 "${auth[@]}" "http://127.0.0.1:$port/metrics") &&
     [[ $(curl -s --noproxy '*' -m 3 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]]; then
    backlog=$(awk '$1 == "sdserve_queue_depth" || $1 == "sdserve_jobs_running" { s += $2 } END { printf "%d", s }' <<<"$metrics")
    if aws cloudwatch put-metric-data --namespace "$namespace" --metric-name Backlog --unit Count \
        --dimensions "AutoScalingGroupName=$asg" --value "$backlog" >/dev/null; then
      log "Backlog=$backlog"
    else
      log "put-metric-data failed (Backlog=$backlog)"
    fi
  fi
  [[ ${SDSERVE_AGENT_ONCE:-0} == 1 ]] && exit 0
  sleep "$interval"
done
