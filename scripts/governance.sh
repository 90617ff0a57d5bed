#!/usr/bin/env bash
# A full request through the governance workflow, on loopback, printing
# each command and its real output (docs/governance.md is one such run):
# the civil affairs bureau (市民政局) publishes a conditional table; its
# catalog entry is reviewed; the human resources bureau (市人社局) applies
# for three of its fields; the hub checks the application and the provider
# approves it with masking; the masked rows arrive; an error is reported and
# answered; the audit log is verified and exported.
NAME=governance
source "$(dirname "$0")/lib.sh"

# show prints a command, then runs it.
show() {
	local line="$*"
	line=${line//$BIN\//}
	printf '\n$ %s\n' "${line//$DEMO/\$DIR}"
	"$@"
}

go build -o "$DEMO/demodb" ./scripts/demodb
DB="$DEMO/demodb"
mkdir -p "$DEMO/db"
$DB citizens "$DEMO/db/mzj.db"
start_hub
agent_config mzj
cat >>"$DEMO/mzj/agent.yaml" <<YAML
resources:
  - id: mzj.dibao
    kind: sqlite
    dsn: $DEMO/db/mzj.db
    table: 低保对象
    watermark: updated_at
    lag: 1s
    catalog:
      name: 最低生活保障对象信息
      code: MZ-2026-007
      format: table
      description: 本市最低生活保障（低保）对象的身份、住址和收入
      department: 市民政局
      category: conditional
      legal_basis: 《社会救助暂行办法》第十一条
      scope: 全市政务部门
      frequency: daily
      timeliness: 2个工作日内
      modes: [batch]
      fields:
        - {name: 身份证号, type: string}
        - {name: 姓名, type: string}
        - {name: 住址, type: string}
        - {name: 月收入, type: decimal}
YAML
agent_config rsj
cat >>"$DEMO/rsj/agent.yaml" <<YAML
subscriptions:
  - id: mzj.dibao
    kind: sqlite
    dsn: $DEMO/db/rsj.db
    table: 低保对象
    create_table: true
YAML
enrol_and_run mzj mzj "市民政局" >/dev/null
enrol_and_run rsj rsj "市人社局" >/dev/null
until_ok 20 bash -c "$C catalog list | grep -q mzj.dibao"
A="$BIN/qz-agent"
MZJ="--config $DEMO/mzj/agent.yaml"
RSJ="--config $DEMO/rsj/agent.yaml"

say "1. the provider's catalog entry waits for the hub's review"
show $C catalog list
show $C catalog approve mzj.dibao --version 1

say "2. another department finds it"
show $A catalog search 低保 收入 $RSJ

say "3. it applies for three of the four fields"
show $A apply mzj.dibao --fields 身份证号,姓名,住址 --mode batch --purpose "就业困难人员认定时核对低保身份" --scenario "窗口办理" $RSJ
id=$($A applications $RSJ | awk 'NR==2 {print $1}')

say "4. the hub checks it (2 working days) and passes it to the provider (5 working days)"
show $C application list
show $C application approve "$id"

say "5. the provider decides, through its own agent, with masking"
show $A applications $MZJ
show $A approve "$id" --mask 身份证号=hash --mask 姓名=name --mask '住址=truncate(6)' $MZJ

say "6. the rows arrive masked; the ungranted field never left the provider"
until_ok 30 bash -c "$DB show '$DEMO/db/rsj.db' 低保对象 | grep -q '张\*\*'"
show $DB show "$DEMO/db/rsj.db" 低保对象

say "7. the consumer reports an error in a record; the provider answers"
rec=$($DB show "$DEMO/db/rsj.db" 低保对象 | awk '/李\*\*/ {print $1}')
show $A feedback report mzj.dibao --record "身份证号=$rec" --field 住址 --problem "住址已迁至通州区" $RSJ
fid=$($A feedback list $MZJ | awk 'NR==2 {print $1}')
show $A feedback answer "$fid" --text "已核实并更正，次日批次送达" $MZJ

say "8. the grant is revoked; the consumer destroys what it received and proves it"
g=$($C grant list | awk '$2 == "mzj.dibao" {print $1}')
show $C grant revoke "$g" --destroy
until_ok 30 bash -c "$C grant list | grep -q 'signed receipt'"
show $C grant list
show $DB show "$DEMO/db/rsj.db" 低保对象

say "9. a reviewer works from another machine, with an operator certificate"
show $C operator add wang --role reviewer --out "$DEMO/wang"
show $BIN/qz-central --remote "$HUB" --operator "$DEMO/wang" application list
show $BIN/qz-central --remote "$HUB" --operator "$DEMO/wang" grant revoke "$g" || true

say "10. nothing is overdue; the departments' figures; the audit log is intact"
show $C report overdue
show $C report departments
show $C audit verify
show $C audit list
