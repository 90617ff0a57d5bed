# Shared by the demo scripts: a temp folder, a free loopback port, a hub,
# enrolled agents, and cleanup. Source it after setting NAME (for the temp
# folder). DEMO_KEEP=1 leaves everything running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${QZ_BIN:-$PWD/bin}
DEMO=$(mktemp -d "${TMPDIR:-/tmp}/qianzhi-$NAME.XXXXXX")
PIDS=()
failed=0
cleanup() {
	[[ "${DEMO_KEEP:-}" == 1 && $failed == 0 ]] && return
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ $failed == 1 ]]; then echo "$NAME: logs kept in $DEMO" >&2; else rm -rf "$DEMO"; fi
}
trap cleanup EXIT
trap 'failed=1' ERR

# A port free on loopback (nothing answers on TCP there).
while :; do
	port=$((20000 + RANDOM % 12000)) # below the ephemeral range
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
done
HUB=127.0.0.1:$port
C="$BIN/qz-central --config $DEMO/hub/central.yaml"
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# start_hub writes the hub's config and starts it.
start_hub() {
	mkdir -p "$DEMO/hub"
	cat >"$DEMO/hub/central.yaml" <<YAML
listen: $HUB
state_dir: $DEMO/hub/state
hosts: [127.0.0.1, localhost]
metrics_listen: 127.0.0.1:0
YAML
	$C init >/dev/null
	$C run >"$DEMO/hub/hub.log" 2>&1 &
	PIDS+=($!)
	for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
}

# agent_config DIR writes an agent config's common part in DIR; append the
# rest.
agent_config() {
	mkdir -p "$DEMO/$1"
	cat >"$DEMO/$1/agent.yaml" <<YAML
hub: $HUB
state_dir: $DEMO/$1/state
metrics_listen: 127.0.0.1:0
call_api:
  listen: 127.0.0.1:0
YAML
}

# enrol_and_run DIR NODE NAME adds a node at the hub, enrols the agent
# configured in DIR (see agent_config) and runs it.
enrol_and_run() {
	local tok
	tok=$($C node add "$2" --name "$3" 2>/dev/null)
	"$BIN/qz-agent" enroll --config "$DEMO/$1/agent.yaml" --token "$tok"
	"$BIN/qz-agent" run --config "$DEMO/$1/agent.yaml" >"$DEMO/$1/agent.log" 2>&1 &
	PIDS+=($!)
}

# until_ok SECONDS CMD… runs CMD until it succeeds, for at most SECONDS.
until_ok() {
	local limit=$1
	shift
	local t0
	t0=$(date +%s)
	until "$@" >/dev/null 2>&1; do
		if (($(date +%s) - t0 > limit)); then
			echo "$NAME: gave up after ${limit}s: $*" >&2
			"$@" >&2 || true
			failed=1
			exit 1
		fi
		sleep 0.3
	done
}
