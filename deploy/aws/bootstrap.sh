#!/usr/bin/env bash
# sdserve instance bootstrap: the launch template's user data writes /etc/sdserve/deploy.env and
# this script (deploy/aws/render.py copies it into deploy/aws/sdserve.yaml), then runs it.
#
#   sdserve-bootstrap --env /etc/sdserve/deploy.env        on EC2 (as root, from user data)
#   SDSERVE_BOOTSTRAP_ROOT=/tmp/x bootstrap.sh --local-test   tests: no apt, NVIDIA, systemd,
#       CloudWatch agent or cfn signal; installs under the root folder, starts sdserve in the
#       background (pid in ROOT/run/sdserve.pid) and leaves it running once /health is 200
#
# Steps: preflight, CloudWatch agent (logs ship even when a later step fails), release tarball
# (sha256-checked; or a build from a pinned git commit), the CUDA/cuDNN/cuBLAS runtime the
# binary was built against (read from its BUILDINFO), the API key from Secrets Manager, the model
# through `sdserve pull` (hub or S3), the systemd units, warm-up (/health 200 and one small
# generation), agents, then the CloudFormation signal. Progress goes to stdout and
# /var/log/sdserve/bootstrap.log; a failure is one line "bootstrap: error: ..." on stderr, a
# FAILURE signal and an ABANDON of the launch hook (the group replaces the instance).
# Settings (deploy.env or the environment; the template writes them): docs/DEPLOY.md.
set -Eeuo pipefail
umask 022

LOCAL=0 ENV_FILE=""
while (($#)); do
  case $1 in
    --local-test) LOCAL=1 ;;
    --env) ENV_FILE=${2:?--env needs a file}; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bootstrap: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# KEY=VALUE lines, never sourced (values are data, not shell); the environment wins.
if [[ -n $ENV_FILE ]]; then
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^(SDSERVE_[A-Z0-9_]+|HF_ENDPOINT|AWS_DEFAULT_REGION)=(.*)$ ]] || continue
    [[ -v ${BASH_REMATCH[1]} ]] || export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
  done < "$ENV_FILE"
fi

ROOT=${SDSERVE_BOOTSTRAP_ROOT:-}
if ((LOCAL)) && [[ -z $ROOT ]]; then
  echo "bootstrap: error: --local-test needs SDSERVE_BOOTSTRAP_ROOT (a scratch folder)" >&2; exit 2
elif ((!LOCAL)) && [[ -n $ROOT ]]; then
  echo "bootstrap: error: SDSERVE_BOOTSTRAP_ROOT is only for --local-test" >&2; exit 2
fi
PREFIX=$ROOT/opt/sdserve ETC=$ROOT/etc/sdserve STATE=$ROOT/var/lib/sdserve LOGDIR=$ROOT/var/log/sdserve
LOG=$LOGDIR/bootstrap.log
PORT=${SDSERVE_PORT:-7860}
IMDS=${SDSERVE_IMDS_URL:-http://169.254.169.254}
mkdir -p "$PREFIX/releases" "$ETC" "$STATE/cache" "$LOGDIR"
STEP=start INSTANCE_ID="" SDSERVE=""

log() { printf '%s bootstrap: [%s] %s\n' "$(date -u +%FT%TZ)" "$STEP" "$*" | tee -a "$LOG"; }
redact() { printf '%s' "${1%%\?*}"; }  # a URL without its query (presigned signatures)
die() {
  trap - ERR
  local msg="bootstrap: error: $*"
  printf '%s %s\n' "$(date -u +%FT%TZ)" "$msg" >> "$LOG"
  printf '%s\n' "$msg" >&2
  ((LOCAL)) || on_failure
  exit 1
}
trap 'die "step \"$STEP\" failed (line $LINENO; full log in $LOG)"' ERR

imds() {
  local t
  t=$(curl -fsS -m 5 --retry 3 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token")
  curl -fsS -m 5 --retry 3 -H "X-aws-ec2-metadata-token: $t" "$IMDS/latest/$1"
}
on_failure() {  # best effort: tell CloudFormation and the Auto Scaling group
  [[ -n $INSTANCE_ID ]] || return 0
  aws cloudformation signal-resource --stack-name "$SDSERVE_STACK" --logical-resource-id "$SDSERVE_SIGNAL_RESOURCE" \
    --unique-id "$INSTANCE_ID" --status FAILURE >> "$LOG" 2>&1 || true
  local asg
  asg=$(imds meta-data/tags/instance/aws:autoscaling:groupName 2>/dev/null) || return 0
  aws autoscaling complete-lifecycle-action --lifecycle-hook-name "$SDSERVE_LAUNCH_HOOK" --auto-scaling-group-name "$asg" \
    --instance-id "$INSTANCE_ID" --lifecycle-action-result ABANDON >> "$LOG" 2>&1 || true
}
# Best effort, at the start of each slow step: restarts the launch hook's timeout (WarmupSeconds),
# which would otherwise count the downloads and installs too and ABANDON (terminate) an instance
# whose bootstrap is still making progress.
heartbeat() {
  ((LOCAL)) && return 0
  [[ -n $INSTANCE_ID && -n ${SDSERVE_LAUNCH_HOOK:-} ]] || return 0
  local asg
  asg=$(imds meta-data/tags/instance/aws:autoscaling:groupName 2>/dev/null) || return 0
  aws autoscaling record-lifecycle-action-heartbeat --lifecycle-hook-name "$SDSERVE_LAUNCH_HOOK" \
    --auto-scaling-group-name "$asg" --instance-id "$INSTANCE_ID" >> "$LOG" 2>&1 || true
}
run() { log "\$ $*"; "$@" >> "$LOG" 2>&1; }  # a command whose output only goes to the log
# apt-get that waits (up to 10 minutes) for the dpkg lock: on a first boot unattended-upgrades or
# apt-daily may hold it, and a plain apt-get/dpkg would fail at once.
apt_get() { run env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q "$@"; }

fetch() {  # fetch URL FILE: s3:// through the instance role, http(s) resumable
  case $1 in
    s3://*) aws s3 cp --only-show-errors "$1" "$2" >> "$LOG" 2>&1 ;;
    http://*|https://*) curl -fsSL --retry 4 --retry-delay 2 --connect-timeout 10 -C - -o "$2" "$1" 2>> "$LOG" ;;
    *) return 1 ;;
  esac
}

preflight() {
  STEP=preflight
  for tool in curl sha256sum tar; do command -v "$tool" >/dev/null || die "$tool is missing"; done
  ((LOCAL)) && { log "local test: installing under $ROOT"; return; }
  [[ $(id -u) == 0 ]] || die "run as root"
  command -v aws >/dev/null || die "the AWS CLI is missing (the Deep Learning AMI ships it)"
  INSTANCE_ID=$(imds meta-data/instance-id) || die "instance metadata (IMDSv2) is unreachable"
  AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-$(imds meta-data/placement/region)}
  export AWS_DEFAULT_REGION
  log "instance $INSTANCE_ID in $AWS_DEFAULT_REGION, stack ${SDSERVE_STACK:-?}"
  id sdserve >/dev/null 2>&1 || run useradd --system --home-dir /var/lib/sdserve --shell /usr/sbin/nologin sdserve
}

cloudwatch_agent() {
  STEP=cloudwatch-agent
  if ((LOCAL)) || [[ -z ${SDSERVE_LOG_GROUP:-} ]]; then return 0; fi
  local ctl=/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl r=$AWS_DEFAULT_REGION
  if [[ ! -x $ctl ]]; then
    local tmp base="https://amazoncloudwatch-agent-$r.s3.$r.amazonaws.com"
    tmp=$(mktemp -d)
    fetch "$base/ubuntu/amd64/latest/amazon-cloudwatch-agent.deb" "$tmp/cw.deb"
    fetch "$base/ubuntu/amd64/latest/amazon-cloudwatch-agent.deb.sig" "$tmp/cw.sig"
    fetch "$base/assets/amazon-cloudwatch-agent.gpg" "$tmp/cw.gpg"
    gpg --homedir "$tmp" --batch --import "$tmp/cw.gpg" >> "$LOG" 2>&1
    gpg --homedir "$tmp" --batch --with-colons --fingerprint | grep -q '^fpr:*937616F3450B7D806CBD9725D58167303B789C72:' ||
      die "the CloudWatch agent's signing key has an unexpected fingerprint"
    gpg --homedir "$tmp" --batch --verify "$tmp/cw.sig" "$tmp/cw.deb" >> "$LOG" 2>&1 || die "the CloudWatch agent package's signature does not verify"
    apt_get install -y "$tmp/cw.deb"
    rm -rf "$tmp"
  fi
  local files="" f
  for f in bootstrap sdserve agents; do
    files+="{\"file_path\":\"/var/log/sdserve/$f.log\",\"log_group_name\":\"$SDSERVE_LOG_GROUP\",\"log_stream_name\":\"{instance_id}/$f\"},"
  done
  files+="{\"file_path\":\"/var/log/cloud-init-output.log\",\"log_group_name\":\"$SDSERVE_LOG_GROUP\",\"log_stream_name\":\"{instance_id}/cloud-init\"}"
  printf '{"logs":{"logs_collected":{"files":{"collect_list":[%s]}}}}\n' "$files" > /opt/aws/amazon-cloudwatch-agent/etc/sdserve.json
  run "$ctl" -a fetch-config -m ec2 -c file:/opt/aws/amazon-cloudwatch-agent/etc/sdserve.json -s
}

install_release() {
  STEP=release
  heartbeat
  local url=${SDSERVE_RELEASE_URL:-} want=${SDSERVE_RELEASE_SHA256:-} tgz=$STATE/release.tar.gz got
  if [[ -z $url ]]; then
    build_from_source
    url=$STATE/src/dist/$(basename "$STATE"/src/dist/*.tar.gz) want=$(sha256sum "$url" | cut -d' ' -f1)
    cp "$url" "$tgz"
  else
    [[ $want =~ ^[0-9a-f]{64}$ ]] || die "SDSERVE_RELEASE_SHA256 must be the release tarball's SHA-256 (64 hex digits), got '$want'"
    log "downloading $(redact "$url")"
    rm -f "$tgz"
    fetch "$url" "$tgz" || die "cannot download the release from $(redact "$url") (see $LOG)"
    got=$(sha256sum "$tgz" | cut -d' ' -f1)
    [[ $got == "$want" ]] || { rm -f "$tgz"; die "release checksum mismatch for $(redact "$url"): expected $want, got $got"; }
  fi
  local dir=$PREFIX/releases/${want:0:16}
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  tar -xzf "$tgz" -C "$dir.tmp" --strip-components=1 --no-same-owner
  [[ -x $dir.tmp/bin/sdserve && -f $dir.tmp/share/sdserve/BUILDINFO ]] || die "the release tarball has no bin/sdserve or share/sdserve/BUILDINFO"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  ln -sfn "releases/${want:0:16}" "$PREFIX/current"
  SDSERVE=$PREFIX/current/bin/sdserve
  log "installed $("$SDSERVE" --version) ($(buildinfo FLAVOUR)) into $dir"
}
buildinfo() { sed -n "s/^$1=//p" "$PREFIX/current/share/sdserve/BUILDINFO"; }

build_from_source() {  # fallback: no release tarball, a pinned commit
  local ref=${SDSERVE_GIT_REF:-} repo=${SDSERVE_GIT_URL:-}
  ((LOCAL)) && die "no release URL given (--local-test does not build from source)"
  [[ $ref =~ ^[0-9a-f]{40}$ && -n $repo ]] ||
    die "no release: set ReleaseUrl and ReleaseSha256, or SourceRepoUrl and SourceGitRef (a full 40-hex commit), got '$ref'"
  log "building $repo at $ref (slow: prefer a release tarball)"
  nvidia_repo libcudnn9-dev-cuda-13
  apt_get install -y --no-install-recommends git cmake ninja-build g++ pkg-config \
    patchelf libdnnl-dev libopenblas-dev nlohmann-json3-dev libcli11-dev zlib1g-dev libpng-dev libjpeg-turbo8-dev \
    libwebp-dev libcpp-httplib-dev libssl-dev libbrotli-dev libcudnn9-dev-cuda-13
  rm -rf "$STATE/src" && mkdir -p "$STATE/src"
  run git -C "$STATE/src" init -q
  run git -C "$STATE/src" fetch -q --depth 1 "$repo" "$ref"
  run git -C "$STATE/src" -c advice.detachedHead=false checkout -q FETCH_HEAD
  [[ $(git -C "$STATE/src" rev-parse HEAD) == "$ref" ]] || die "the fetched commit is not $ref"
  run env PATH="/usr/local/cuda/bin:$PATH" cmake -S "$STATE/src" --preset cuda
  run cmake --build "$STATE/src/build/cuda" --target sdserve
  run "$STATE/src/scripts/package.sh" --build-dir "$STATE/src/build/cuda" --out "$STATE/src/dist"
}

# NVIDIA's CUDA apt repository (cuDNN, cuBLAS): the lists are refreshed first; the keyring package
# is installed only when no apt source names the repository yet (a second source for it with
# another keyring would make apt refuse to run: "Conflicting values set for option Signed-By").
nvidia_repo() {  # nvidia_repo PACKAGE: PACKAGE has an install candidate afterwards (or apt says why not)
  apt_get update
  [[ $(apt-cache policy "$1" 2>/dev/null) == *"Candidate: "[0-9]* ]] && return 0
  if ! grep -rqs 'developer.download.nvidia.com/compute/cuda/repos' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    fetch https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/cuda-keyring_1.1-1_all.deb /tmp/cuda-keyring.deb
    apt_get install -y /tmp/cuda-keyring.deb
    apt_get update
  fi
}

cuda_runtime() {
  STEP="cuda-runtime"
  ((LOCAL)) && return 0
  heartbeat
  local glibc need drv
  glibc=$(ldd --version | awk 'NR==1 {print $NF}') need=$(buildinfo GLIBC_MIN)
  [[ $(printf '%s\n' "$need" "$glibc" | sort -V | head -1) == "$need" ]] ||
    die "glibc $glibc is older than the $need the binary was built against (use an Ubuntu 24.04 AMI)"
  [[ $(buildinfo FLAVOUR) == cuda ]] || { log "CPU build: no CUDA runtime needed"; return 0; }
  drv=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>>"$LOG" | head -1) || die "nvidia-smi failed: no NVIDIA driver (use the Deep Learning Base OSS Nvidia Driver AMI)"
  [[ ${drv%%.*} -ge ${SDSERVE_MIN_DRIVER:-580} ]] || die "NVIDIA driver $drv is older than ${SDSERVE_MIN_DRIVER:-580} (CUDA $(buildinfo CUDA_VERSION) needs it)"
  # sdserve.service's DevicePolicy resolves the NVIDIA device groups from /proc/devices when the
  # unit starts, so nvidia-uvm must be loaded before that, now and at every boot (reboots, warm-pool
  # restarts); the unprivileged service cannot load it or create /dev/nvidia-uvm itself.
  echo nvidia-uvm > /etc/modules-load.d/sdserve-nvidia-uvm.conf
  if command -v nvidia-modprobe >/dev/null; then run nvidia-modprobe -u -c=0; else run modprobe nvidia-uvm; fi
  local uvm
  uvm=$(awk '$2 == "nvidia-uvm" {print $1}' /proc/devices)
  [[ -n $uvm ]] || die "the nvidia-uvm kernel module does not load (CUDA needs it; see $LOG)"
  [[ -e /dev/nvidia-uvm ]] || { mknod -m 666 /dev/nvidia-uvm c "$uvm" 0 && mknod -m 666 /dev/nvidia-uvm-tools c "$uvm" 1; }
  local cuda cudnn cublas
  cuda=$(buildinfo CUDA_VERSION) cudnn=$(buildinfo CUDNN_VERSION) cublas=$(buildinfo CUBLAS_VERSION)
  local pkgs=("libcudnn9-cuda-${cuda%%.*}=$cudnn*" "libcublas-${cuda/./-}=$cublas*")
  log "driver $drv; installing ${pkgs[*]}"
  nvidia_repo "libcudnn9-cuda-${cuda%%.*}"
  apt_get install -y --no-install-recommends --allow-downgrades "${pkgs[@]}"
  run ldconfig
  if ldd "$SDSERVE" | grep -q 'not found'; then
    die "unresolved libraries: $(ldd "$SDSERVE" | awk '/not found/ {print $1}' | tr '\n' ' ')"
  fi
  log "$(ldd "$SDSERVE" | grep -E 'libcudnn\.|libcublasLt' | tr -s ' \t' ' ' | tr '\n' ';')"
}

api_key() {
  STEP=api-key
  local key=""
  if [[ -n ${SDSERVE_API_KEY_SECRET_ARN:-} ]]; then
    key=$(aws secretsmanager get-secret-value --secret-id "$SDSERVE_API_KEY_SECRET_ARN" --query SecretString --output text 2>>"$LOG") ||
      die "cannot read the API key secret $SDSERVE_API_KEY_SECRET_ARN"
  elif [[ -n ${SDSERVE_API_KEY:-} ]]; then
    key=$SDSERVE_API_KEY
  fi
  unset SDSERVE_API_KEY
  if [[ -z $key ]]; then log "no API key configured: the endpoint is open"; return 0; fi
  ((${#key} >= 8)) || die "the API key is shorter than 8 characters"
  (umask 077 && printf '%s\n' "$key" > "$ETC/api-keys")
  ((LOCAL)) || { chgrp sdserve "$ETC/api-keys"; chmod 0640 "$ETC/api-keys"; }
  KEY=$key
  log "API key installed ($ETC/api-keys)"
}

pull() {  # pull ARGS...: sdserve pull into the cache; MODEL_PATH = its last stdout line
  local out err
  err=$(mktemp)
  if ! out=$("$SDSERVE" pull "$@" --cache-dir "$STATE/cache" 2>"$err"); then
    cat "$err" >> "$LOG"
    die "model pull failed: $(grep -v '^[[:space:]]*$' "$err" | tail -1)"
  fi
  cat "$err" >> "$LOG" && rm -f "$err"
  MODEL_PATH=$(printf '%s\n' "$out" | tail -1)
}

model() {
  STEP=model
  heartbeat
  local src=${SDSERVE_MODEL_SOURCE:-stable-diffusion-v1-5/stable-diffusion-v1-5} sha=()
  [[ -n ${SDSERVE_MODEL_SHA256:-} ]] && sha=(--sha256 "$SDSERVE_MODEL_SHA256")
  log "model $(redact "$src")"
  case $src in
    s3://*.safetensors)
      pull "$(aws s3 presign "$src" --expires-in 3600)" "${sha[@]}" ;;
    s3://*)
      run aws s3 sync --only-show-errors "${src%/}/" "$STATE/models/model/" || die "cannot copy the model from $src"
      MODEL_PATH=$STATE/models/model ;;
    http://*|https://*) pull "$src" "${sha[@]}" ;;
    demo) MODEL_PATH=demo ;;
    */*)
      local variant=()
      [[ -n ${SDSERVE_MODEL_VARIANT:-} ]] && variant=(--variant "$SDSERVE_MODEL_VARIANT")
      pull "$src" --revision "${SDSERVE_MODEL_REVISION:-main}" "${variant[@]}" ;;
    *) die "model source '$src' is neither org/name, a URL, an s3:// URI nor demo" ;;
  esac
  if [[ $MODEL_PATH != demo ]]; then
    local info
    info=$("$SDSERVE" inspect "$MODEL_PATH" 2>>"$LOG") || die "the model at $MODEL_PATH does not load (see $LOG)"
    log "model ready: $MODEL_PATH ($(printf '%s\n' "$info" | awk -F': *' '/^(family|layout|weights):/ {printf "%s%s", s, $2; s=", "}'))"
  fi
  local what dir
  for what in LORA UPSCALER; do
    dir=${what,,}s
    local var=SDSERVE_${what}_S3
    [[ -n ${!var:-} ]] || continue
    run aws s3 sync --only-show-errors "${!var%/}/" "$STATE/$dir/" || die "cannot copy ${dir} from ${!var}"
    printf 'SDSERVE_%s_DIR=%s\n' "$what" "$STATE/$dir" >> "$STATE/extra.env"
  done
}

configure() {
  STEP=configure
  local host=0.0.0.0
  ((LOCAL)) && host=127.0.0.1
  {
    echo "SDSERVE_MODEL=$MODEL_PATH"
    echo "SDSERVE_HOST=$host"
    echo "SDSERVE_PORT=$PORT"
    echo "SDSERVE_DEVICE=${SDSERVE_DEVICE:-cuda}"
    echo "SDSERVE_DRAIN_TIMEOUT=${SDSERVE_DRAIN_TIMEOUT:-110}"
    echo "SDSERVE_JOB_TIMEOUT=${SDSERVE_JOB_TIMEOUT:-300}"
    echo "SDSERVE_QUEUE_SIZE=${SDSERVE_QUEUE_SIZE:-16}"
    # Idle connections outlast the load balancer's, so it never reuses one sdserve is closing (502s);
    # each open connection holds a server thread, hence the larger pool.
    echo "SDSERVE_KEEP_ALIVE_TIMEOUT=$((${SDSERVE_ALB_IDLE_TIMEOUT:-600} + 5))"
    echo "SDSERVE_HTTP_THREADS=${SDSERVE_HTTP_THREADS:-256}"
    echo "SDSERVE_CACHE_DIR=$STATE/cache"
    echo "HF_HUB_OFFLINE=1"
    [[ -n ${KEY:-} ]] && echo "SDSERVE_API_KEY_FILE=$ETC/api-keys"
    [[ -f $STATE/extra.env ]] && cat "$STATE/extra.env"
  } > "$ETC/sdserve.env"
  ((LOCAL)) && return 0
  chown -R sdserve:sdserve "$STATE" "$LOGDIR"
  local share=$PREFIX/current/share/sdserve/aws
  install -m 0644 "$share"/sdserve.service "$share"/sdserve-lifecycle.service "$share"/sdserve-backlog.service /etc/systemd/system/
  install -m 0644 "$share/logrotate.conf" /etc/logrotate.d/sdserve
  # systemd must not kill sdserve before its drain can end.
  mkdir -p /etc/systemd/system/sdserve.service.d
  printf '[Service]\nTimeoutStopSec=%s\n' "$((${SDSERVE_DRAIN_TIMEOUT:-110} + 40))" > /etc/systemd/system/sdserve.service.d/drain.conf
  run systemctl daemon-reload
}

start() {
  STEP=start
  if ((LOCAL)); then
    mkdir -p "$ROOT/run"
    local envs
    mapfile -t envs < "$ETC/sdserve.env"
    env "${envs[@]}" "$SDSERVE" serve < /dev/null >> "$LOGDIR/sdserve.log" 2>&1 &
    PID=$!
    echo "$PID" > "$ROOT/run/sdserve.pid"
  else
    run systemctl enable --now sdserve.service
  fi
}

alive() {
  if ((LOCAL)); then kill -0 "$PID" 2>/dev/null; return; fi
  ! systemctl is-failed --quiet sdserve.service && (($(systemctl show -p NRestarts --value sdserve.service) < 3))
}

warm_up() {
  STEP=warm-up
  heartbeat
  local deadline=$((SECONDS + ${SDSERVE_WARMUP_TIMEOUT:-1200})) code body
  log "waiting for http://127.0.0.1:$PORT/health"
  while :; do
    body=$(curl -s --noproxy '*' -m 5 -w '\n%{http_code}' "http://127.0.0.1:$PORT/health") || true
    code=${body##*$'\n'}
    [[ $code == 200 ]] && break
    [[ $body == *"failed to load"* ]] && die "sdserve cannot load the model: $(printf '%s' "${body%$'\n'*}" | tr -d '\n')"
    alive || die "sdserve exited while loading: $(tail -1 "$LOGDIR/sdserve.log" 2>/dev/null)"
    ((SECONDS < deadline)) || die "sdserve was not healthy within ${SDSERVE_WARMUP_TIMEOUT:-1200} s (last /health: $code)"
    sleep 2
  done
  heartbeat
  local size=${SDSERVE_WARMUP_SIZE:-512} auth=()
  [[ -n ${KEY:-} ]] && auth=(-H "Authorization: Bearer $KEY")
  code=$(curl -s --noproxy '*' -m 600 -o /dev/null -w '%{http_code}' "${auth[@]}" -H 'Content-Type: application/json' \
    -d "{\"prompt\":\"warm-up\",\"steps\":${SDSERVE_WARMUP_STEPS:-2},\"width\":$size,\"height\":$size,\"seed\":1}" \
    "http://127.0.0.1:$PORT/txt2img") || true
  [[ $code == 200 ]] || die "the warm-up generation failed (HTTP $code; see $LOGDIR/sdserve.log)"
  log "healthy, warm-up image generated"
}

finish() {
  STEP=finish
  if ((LOCAL)); then
    log "sdserve is healthy at http://127.0.0.1:$PORT (pid $PID)"
    return 0
  fi
  run systemctl enable --now sdserve-lifecycle.service sdserve-backlog.service
  aws cloudformation signal-resource --stack-name "$SDSERVE_STACK" --logical-resource-id "$SDSERVE_SIGNAL_RESOURCE" \
    --unique-id "$INSTANCE_ID" --status SUCCESS >> "$LOG" 2>&1 || log "signal not accepted (the stack is not waiting for one)"
  log "done: the lifecycle agent completes the launch hook and the instance joins the load balancer"
}

preflight
cloudwatch_agent
install_release
cuda_runtime
api_key
model
configure
start
warm_up
finish
