#!/usr/bin/env bash
# make demo: a hub and two agents on loopback, in a temp folder. The provider
# publishes a folder and a table (in an embedded SQLite database), the
# operator grants both to the consumer, and the demo waits until every file
# has arrived byte-identical and the consumer's table equals the provider's,
# through inserts, updates and deletes.
# DEMO_KEEP=1 leaves everything running.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${QZ_BIN:-$PWD/bin}
DEMO=$(mktemp -d "${TMPDIR:-/tmp}/qianzhi-demo.XXXXXX")
PIDS=()
failed=0
cleanup() {
	[[ "${DEMO_KEEP:-}" == 1 && $failed == 0 ]] && return
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ $failed == 1 ]]; then echo "demo: logs kept in $DEMO" >&2; else rm -rf "$DEMO"; fi
}
trap cleanup EXIT
trap 'failed=1' ERR

# A port free on loopback (nothing answers on TCP there).
while :; do
	port=$((20000 + RANDOM % 12000)) # below the ephemeral range
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
done
HUB=127.0.0.1:$port
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "hub: $HUB, everything under $DEMO"
mkdir -p "$DEMO"/{hub,provider,consumer,outbox,inbox,db}
go build -o "$DEMO/demodb" ./scripts/demodb
DB="$DEMO/demodb"
cat >"$DEMO/hub/central.yaml" <<YAML
listen: $HUB
state_dir: $DEMO/hub/state
hosts: [127.0.0.1, localhost]
YAML
for n in provider consumer; do
	cat >"$DEMO/$n/agent.yaml" <<YAML
hub: $HUB
state_dir: $DEMO/$n/state
YAML
done
cat >>"$DEMO/provider/agent.yaml" <<YAML
resources:
  - id: demo.reports
    kind: file
    path: $DEMO/outbox
    settle: 500ms
  - id: demo.people
    kind: sqlite
    dsn: $DEMO/db/provider.db
    table: 人口
    columns: [id, 身份证号, 姓名, 补贴, 备注, updated_at]
    watermark: updated_at
    lag: 1s
    soft_delete: {column: deleted, value: "1"}
YAML
cat >>"$DEMO/consumer/agent.yaml" <<YAML
subscriptions:
  - id: demo.reports
    kind: file
    path: $DEMO/inbox
  - id: demo.people
    kind: sqlite
    dsn: $DEMO/db/consumer.db
    table: 人口
    create_table: true
YAML

say "sample files: a 100 MiB file, a nested folder, Chinese names"
mkdir -p "$DEMO/outbox/报表/2026" "$DEMO/outbox/nested/deeper"
head -c 100M /dev/urandom >"$DEMO/outbox/large.bin"
printf '姓名,身份证号\n张三,110101199003078515\n' >"$DEMO/outbox/报表/2026/第一季度人口统计.csv"
seq 1 100000 >"$DEMO/outbox/nested/deeper/numbers.txt"
echo "Qianzhi demo" >"$DEMO/outbox/readme.txt"
touch -d '1 minute ago' "$DEMO"/outbox/large.bin "$DEMO"/outbox/readme.txt "$DEMO"/outbox/nested/deeper/numbers.txt "$DEMO"/outbox/报表/2026/*.csv
say "sample table: 人口 with 10,000 rows in the provider's SQLite database"
$DB init "$DEMO/db/provider.db"

C="$BIN/qz-central --config $DEMO/hub/central.yaml"
$C init >/dev/null
$C run >"$DEMO/hub/hub.log" 2>&1 & PIDS+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

say "enrol two departments"
for n in provider consumer; do
	tok=$($C node add "dept-$n" --name "demo $n" 2>/dev/null)
	"$BIN/qz-agent" enroll --config "$DEMO/$n/agent.yaml" --token "$tok"
	"$BIN/qz-agent" run --config "$DEMO/$n/agent.yaml" >"$DEMO/$n/agent.log" 2>&1 & PIDS+=($!)
done

for r in demo.reports demo.people; do
	say "grant $r to dept-consumer"
	for _ in $(seq 100); do
		if g=$($C grant add --resource $r --consumer dept-consumer 2>/dev/null); then break; fi
		sleep 0.1
	done
	echo "grant $g"
done

say "waiting for every file to arrive"
start=$(date +%s)
files=$(cd "$DEMO/outbox" && find . -type f | sort)
while :; do
	ok=1
	while IFS= read -r f; do
		[[ -f "$DEMO/inbox/$f" ]] && cmp -s "$DEMO/outbox/$f" "$DEMO/inbox/$f" || { ok=0; break; }
	done <<<"$files"
	[[ $ok == 1 ]] && break
	if (($(date +%s) - start > 50)); then
		echo "demo: files did not arrive within 50s" >&2
		failed=1
		exit 1
	fi
	sleep 0.3
done

printf '\n%12s  %-15s  %s\n' BYTES "SHA-256 MATCHES" FILE
while IFS= read -r f; do
	a=$(sha256sum <"$DEMO/outbox/$f" | cut -c1-64)
	b=$(sha256sum <"$DEMO/inbox/$f" | cut -c1-64)
	printf '%12s  %-15s  %s\n' "$(stat -c %s "$DEMO/inbox/$f")" "$([[ $a == "$b" ]] && echo yes || echo NO)" "${f#./}"
done <<<"$files"
echo "arrived in $(($(date +%s) - start))s"

# until CMD succeeds, for at most $1 seconds.
until_ok() {
	local limit=$1
	shift
	local t0=$(date +%s)
	until "$@" >/dev/null 2>&1; do
		if (($(date +%s) - t0 > limit)); then
			echo "demo: gave up after ${limit}s: $*" >&2
			"$@" >&2 || true
			failed=1
			exit 1
		fi
		sleep 0.3
	done
}
A="$DEMO/db/provider.db"
B="$DEMO/db/consumer.db"
say "the table: snapshot"
until_ok 30 $DB compare "$A" "$B"
$DB compare "$A" "$B"
say "the table: 100 inserts, 50 updates, 20 soft deletes, 5 hard deletes at the provider"
$DB change "$A"
# 10,000 + 100 inserted - 20 soft-deleted: the watermark carries these.
until_ok 30 bash -c "$DB compare '$A' '$B' | grep -q '^consumer *10080 '"
$DB compare "$A" "$B" || echo "(the 5 rows deleted outright are still at the consumer)"
say "hard deletes leave no trace for the watermark: qz-agent reconcile resends what differs"
"$BIN/qz-agent" reconcile demo.people --config "$DEMO/provider/agent.yaml"
until_ok 30 $DB compare "$A" "$B"
$DB compare "$A" "$B"
echo
echo "the hub's audit log:"
$C audit verify

if [[ "${DEMO_KEEP:-}" == 1 ]]; then
	cat <<MSG

Everything keeps running (DEMO_KEEP=1). Look around:
  $C node list
  $C grant list
  $C audit list
  $BIN/qz-agent status --config $DEMO/consumer/agent.yaml
  ls -R $DEMO/inbox
  cp some-file $DEMO/outbox/      # and watch it arrive
Logs: $DEMO/*/*.log    Stop: kill ${PIDS[*]}
MSG
fi
