#!/usr/bin/env bash
# sdserve lifecycle agent (systemd: sdserve-lifecycle.service; docs/DEPLOY.md "Spot interruptions").
#
# Every few seconds it reads, through IMDSv2:
#   meta-data/autoscaling/target-lifecycle-state   InService, Terminated, Warmed:Stopped, ...
#   meta-data/spot/instance-action                  present once a Spot interruption is announced
# and:
#   - once sdserve's /health is 200 while the instance is headed for InService (or the warm pool),
#     completes the launch lifecycle hook (CONTINUE): the instance only joins the load balancer
#     warm. This also covers instances that come back from a warm pool, where user data does not
#     run again (the flag lives in /run, so every boot completes its own hook);
#   - when the instance is to be terminated (scale-in, instance refresh, Spot interruption) or,
#     with a warm pool that reuses instances, sent back to the pool from service (the termination
#     hook then pauses it in Warmed:Pending:Wait with target state Warmed:Stopped), stops sdserve
#     (SIGTERM: /health 503, queued and running jobs finish within the drain timeout) and then
#     completes the termination hook (CONTINUE), so the instance goes at once instead of waiting
#     for the hook's timeout.
#
# Environment (from /etc/sdserve/deploy.env): SDSERVE_LAUNCH_HOOK, SDSERVE_DRAIN_HOOK,
# SDSERVE_PORT. For tests: SDSERVE_IMDS_URL (default http://169.254.169.254), SDSERVE_STOP_CMD
# (default: systemctl stop sdserve.service), SDSERVE_AGENT_INTERVAL (seconds, default 5),
# SDSERVE_AGENT_ONCE=1 (one pass, then exit), SDSERVE_AGENT_STATE (folder for the agent's flags).
set -uo pipefail

imds_url=${SDSERVE_IMDS_URL:-http://169.254.169.254}
port=${SDSERVE_PORT:-7860}
interval=${SDSERVE_AGENT_INTERVAL:-5}
state_dir=${SDSERVE_AGENT_STATE:-${RUNTIME_DIRECTORY:-/run/sdserve-lifecycle}}
stop_cmd=${SDSERVE_STOP_CMD:-systemctl stop sdserve.service}
mkdir -p "$state_dir"

log() { printf '{"time":"%s","agent":"lifecycle","msg":"%s"}\n' "$(date -u +%FT%TZ)" "$*"; }

token="" token_at=0
imds() {  # imds PATH: prints the value; non-zero when absent (404) or unreachable
  local now; now=$(date +%s)
  if [[ -z $token ]] || ((now - token_at > 300)); then
    token=$(curl -fsS --noproxy '*' -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 600' \
      "$imds_url/latest/api/token") || return 1
    token_at=$now
  fi
  curl -fsS --noproxy '*' -m 2 -H "X-aws-ec2-metadata-token: $token" "$imds_url/latest/$1"
}

healthy() {
  [[ $(curl -s --noproxy '*' -m 3 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]]
}

complete_hook() {  # complete_hook HOOK RESULT
  local asg id
  asg=$(imds meta-data/tags/instance/aws:autoscaling:groupName) || { log "no Auto Scaling group tag in instance metadata; not completing $1"; return 1; }
  id=$(imds meta-data/instance-id) || return 1
  local out
  if out=$(aws autoscaling complete-lifecycle-action --lifecycle-hook-name "$1" --auto-scaling-group-name "$asg" \
      --instance-id "$id" --lifecycle-action-result "$2" 2>&1); then
    log "completed lifecycle hook $1 ($2)"
  else
    out=${out//[$'\n\r\t"\\']/ }  # one JSON-safe line (an IAM denial shows up here)
    log "could not complete lifecycle hook $1 (no pending action?): ${out:0:300}"
  fi
}

drain() {  # drain REASON
  log "draining: $1"
  local start; start=$(date +%s)
  if eval "$stop_cmd"; then
    log "sdserve stopped after $(($(date +%s) - start)) s"
  else
    log "stopping sdserve failed; completing the hook anyway"
  fi
  [[ -n ${SDSERVE_DRAIN_HOOK:-} ]] && complete_hook "$SDSERVE_DRAIN_HOOK" CONTINUE
  touch "$state_dir/drained"
}

log "started (port $port, launch hook ${SDSERVE_LAUNCH_HOOK:-none}, drain hook ${SDSERVE_DRAIN_HOOK:-none})"
while :; do
  if [[ ! -e $state_dir/drained ]]; then
    target=$(imds meta-data/autoscaling/target-lifecycle-state) || target=""
    spot=$(imds meta-data/spot/instance-action) || spot=""
    # The target state this boot's launch hook was completed for (empty: not yet).
    launched_as=""
    [[ -e $state_dir/launched ]] && launched_as=$(<"$state_dir/launched")
    if [[ $target == Terminated || $target == Warmed:Terminated || $target == Detached ]]; then
      drain "target lifecycle state $target"
    elif [[ -n $spot ]]; then
      drain "Spot interruption notice ${spot//\"/}"
    elif [[ $target == Warmed:* && $launched_as == InService ]]; then
      drain "returning to the warm pool (target lifecycle state $target)"
    elif [[ ($target == InService || $target == Warmed:*) && -z $launched_as ]] && healthy; then
      [[ -n ${SDSERVE_LAUNCH_HOOK:-} ]] && complete_hook "$SDSERVE_LAUNCH_HOOK" CONTINUE
      printf '%s\n' "$target" > "$state_dir/launched"
    fi
  fi
  [[ ${SDSERVE_AGENT_ONCE:-0} == 1 ]] && exit 0
  sleep "$interval"
done
