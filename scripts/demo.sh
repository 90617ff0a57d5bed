#!/usr/bin/env bash
# make demo: a hub and two agents on loopback, in a temp folder. The provider
# publishes a folder and a table (in an embedded SQLite database), the
# operator grants both to the consumer, and the demo waits until every file
# has arrived byte-identical and the consumer's table equals the provider's,
# through inserts, updates and deletes.
# DEMO_KEEP=1 leaves everything running.
NAME=demo
source "$(dirname "$0")/lib.sh"

say "hub: $HUB, everything under $DEMO"
mkdir -p "$DEMO"/{outbox,inbox,db}
go build -o "$DEMO/demodb" ./scripts/demodb
DB="$DEMO/demodb"
agent_config provider
agent_config consumer
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

start_hub
say "enrol two departments"
enrol_and_run provider dept-provider "demo provider"
enrol_and_run consumer dept-consumer "demo consumer"

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
