package e2e

import (
	"bytes"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/agent"
	"github.com/qianzhi/qianzhi/internal/mariadbtest"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/pkg/receipt"
	"github.com/qianzhi/qianzhi/pkg/seal"
)

const householdDDL = `CREATE TABLE household (
  id_no CHAR(18) NOT NULL PRIMARY KEY,
  name VARCHAR(50) NOT NULL,
  address VARCHAR(200),
  birth DATE,
  income DECIMAL(12,2),
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
)`

// householdResource is a MariaDB table published with two declared calls.
func householdResource(id, dsn string) string {
	return fmt.Sprintf(`  - id: %s
    kind: mysql
    dsn: %q
    table: household
    strategy: snapshot
    catalog:
      name: 户籍人口基本信息
      code: GA-2026-001
      format: table
      department: 市公安局
      category: conditional
      legal_basis: 《中华人民共和国户口登记条例》
      frequency: daily
      modes: [batch, query, verify]
      fields:
        - {name: id_no, type: string, description: 公民身份号码}
        - {name: name, type: string, description: 姓名}
        - {name: address, type: string, description: 住址}
        - {name: birth, type: date, description: 出生日期}
        - {name: income, type: decimal, description: 年收入}
    calls:
      - name: by_id
        description: 按公民身份号码查询户籍
        params:
          - {name: id_no, type: citizen_id}
        query: "SELECT id_no, name, address, birth, income FROM household WHERE id_no = :id_no"
        fields: [id_no, name, address, birth, income]
      - name: by_name
        description: 按姓名查询
        params:
          - {name: name, type: string, max_len: 50}
        query: "SELECT id_no, name, address, birth, income FROM household WHERE name = :name ORDER BY id_no"
        fields: [id_no, name, address, birth, income]
        max_rows: 5
`, id, dsn)
}

// citizenID makes a valid 18-character citizen ID number (GB 11643) from
// a region, a birth date (YYYYMMDD) and a sequence number.
func citizenID(region, birth string, seq int) string {
	s := fmt.Sprintf("%s%s%03d", region, birth, seq%1000)
	weights := []int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
	sum := 0
	for i, w := range weights {
		sum += int(s[i]-'0') * w
	}
	return s + string("10X98765432"[sum%11])
}

// person is one row of the household table.
type person struct{ id, name, address, birth, income string }

func households(n int) []person {
	var out []person
	for i := range n {
		birth := fmt.Sprintf("19%02d%02d%02d", 50+i%40, 1+i%12, 1+i%28)
		out = append(out, person{
			id:      citizenID(fmt.Sprintf("%06d", 110105+i/1000), birth, i), // unique: one region per thousand
			name:    fmt.Sprintf("居民%03d", i),
			address: fmt.Sprintf("北京市朝阳区建国路%d号院%d号楼", 80+i, 1+i%9),
			birth:   birth[:4] + "-" + birth[4:6] + "-" + birth[6:],
			income:  fmt.Sprintf("%d.%02d", 30000+i*137, i%100),
		})
	}
	return out
}

// callAPI posts to an agent's local call endpoint and returns the status
// and the raw body.
func callAPI(t *testing.T, addr, token, path string, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, bytes.NewReader(b))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// TestQueryAndVerify: a consumer queries and verifies against a real
// MariaDB table through a real hub and the provider's agent. Each refusal
// (no grant, wrong mode, invalid ID number, over quota, revoked grant) is
// clear and audited; a verification's answer holds no source value; SQL
// in a parameter does nothing; every answered call has a receipt sealed by
// the provider; with the provider's agent killed, a call fails within the
// hub's timeout.
func TestQueryAndVerify(t *testing.T) {
	srv := mariadbtest.Get(t)
	dbName := srv.NewDatabase(t)
	db := srv.Open(t, dbName)
	if _, err := db.Exec(householdDDL); err != nil {
		t.Fatal(err)
	}
	people := households(60)
	for _, p := range people {
		if _, err := db.Exec(`INSERT INTO household (id_no, name, address, birth, income) VALUES (?, ?, ?, ?, ?)`, p.id, p.name, p.address, p.birth, p.income); err != nil {
			t.Fatal(err)
		}
	}
	h := newHub(t, hubOpts{extra: "call_timeout: 2s\n"})
	h.start()
	prov := newNode(t, h, "gaj", nodeOpts{resources: householdResource("gaj.huji", srv.DSN(dbName))})
	cons := newNode(t, h, "mzj", nodeOpts{})
	other := newNode(t, h, "rsj", nodeOpts{})
	prov.start()
	cons.start()
	other.start()
	waitFor(t, 15*time.Second, "the catalog entry", func() bool { return strings.Contains(h.central("catalog", "list"), "gaj.huji") })
	h.central("catalog", "approve", "gaj.huji", "--version", "1")
	ag := func(n *node, args ...string) []string { return append(args, "--config", n.cfg) }
	apply := func(mode, fields string, approve ...string) string {
		t.Helper()
		res := mustRun(t, "qz-agent", ag(cons, "apply", "gaj.huji", "--fields", fields, "--mode", mode, "--purpose", "低保资格核验", "--scenario", "窗口办理")...)
		id := strings.Fields(strings.Split(res, "\n")[1])[0]
		h.central("application", "approve", id)
		res = mustRun(t, "qz-agent", ag(prov, append([]string{"approve", id}, approve...)...)...)
		for _, f := range strings.Fields(res) {
			if strings.HasPrefix(f, "g-") {
				return f
			}
		}
		t.Fatalf("no grant in the approval:\n%s", res)
		return ""
	}
	queryGrant := apply("query", "id_no,name,address,birth", "--mask", "address=truncate(6)", "--rate", "200", "--quota", "1000")
	verifyGrant := apply("verify", "id_no,name,birth", "--quota", "12")
	batchGrant := h.approved(prov, other, "gaj.huji", "batch", "id_no,name,address,birth,income")
	t.Logf("grants: query %s, verify %s, batch %s", queryGrant, verifyGrant, batchGrant)

	p := people[7]
	var answered []string // IDs of calls answered, for the receipts
	// The provider learns of new grants through its own long poll: wait
	// until a query is answered.
	var ans api.CallAnswer
	waitFor(t, 15*time.Second, "the first query to be answered", func() bool {
		out, _, err := run("qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id, "--json")...)
		return err == nil && json.Unmarshal([]byte(out), &ans) == nil
	})
	answered = append(answered, ans.ID)

	t.Run("query", func(t *testing.T) {
		if strings.Join(ans.Fields, ",") != "id_no,name,address,birth" {
			t.Fatalf("fields %v: want the granted ones only (income is not granted)", ans.Fields)
		}
		if len(ans.Rows) != 1 || !ans.Found {
			t.Fatalf("rows %v found %v", ans.Rows, ans.Found)
		}
		row := ans.Rows[0]
		want := []string{p.id, p.name, string([]rune(p.address)[:6]), p.birth}
		for i, w := range want {
			if row[i] == nil || *row[i] != w {
				t.Errorf("%s = %v, want %q", ans.Fields[i], row[i], w)
			}
		}
		out := mustRun(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+people[3].id)...)
		if !strings.Contains(out, people[3].name) || strings.Contains(out, people[3].address) || !strings.Contains(out, "receipt sealed by gaj") {
			t.Errorf("text answer:\n%s", out)
		}
		answered = append(answered, lastCallID(t, out))
		// The ID number read from standard input, out of the process list.
		cmd := exec.Command(filepath.Join(binDir, "qz-agent"), ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no=-")...)
		cmd.Stdin = strings.NewReader(people[4].id + "\n")
		b, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(b), people[4].name) {
			t.Errorf("id_no=- with the number on standard input: %v\n%s", err, b)
		} else {
			answered = append(answered, lastCallID(t, string(b)))
		}
	})

	token, err := os.ReadFile(filepath.Join(cons.state, "call-api.token"))
	if err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(string(token))
	var addr string
	waitFor(t, 10*time.Second, "the call API address in status", func() bool { addr = cons.status().CallAPI; return addr != "" })

	var apiAns api.CallAnswer // a query through the local API, with its call key
	t.Run("local API", func(t *testing.T) {
		if code, body := callAPI(t, addr, "", "/v1/query/gaj.huji/by_id", map[string]any{"params": map[string]string{"id_no": p.id}}); code != http.StatusUnauthorized || !bytes.Contains(body, []byte("call-api.token")) {
			t.Errorf("no token: %d %s", code, body)
		}
		if code, _ := callAPI(t, addr, "wrong-token-wrong-token", "/v1/query/gaj.huji/by_id", map[string]any{"params": map[string]string{"id_no": p.id}}); code != http.StatusUnauthorized {
			t.Errorf("wrong token: %d", code)
		}
		code, body := callAPI(t, addr, tok, "/v1/query/gaj.huji/by_id", map[string]any{"params": map[string]string{"id_no": p.id}})
		var a api.CallAnswer
		if code != http.StatusOK || json.Unmarshal(body, &a) != nil || len(a.Rows) != 1 || *a.Rows[0][1] != p.name {
			t.Fatalf("query through the local API: %d %s", code, body)
		}
		answered = append(answered, a.ID)
		apiAns = a
	})

	t.Run("the hub cannot confirm a guess", func(t *testing.T) {
		hubBlind(t, h, cons, prov, apiAns, map[string]string{"id_no": p.id}, people[8].id)
	})

	t.Run("verify", func(t *testing.T) {
		other := people[20]
		code, body := callAPI(t, addr, tok, "/v1/verify/gaj.huji/by_id", map[string]any{
			"params": map[string]string{"id_no": p.id},
			"values": map[string]string{"name": p.name, "birth": other.birth},
		})
		var a api.CallAnswer
		if code != http.StatusOK || json.Unmarshal(body, &a) != nil {
			t.Fatalf("verify: %d %s", code, body)
		}
		answered = append(answered, a.ID)
		if !a.Found || !a.Matches["name"] || a.Matches["birth"] || len(a.Matches) != 2 {
			t.Errorf("verify answer: found %v matches %v", a.Found, a.Matches)
		}
		// No source value, not even one the consumer sent or a masked
		// one: the answer's bytes are searched for each.
		for _, secret := range []string{p.id, p.name, p.birth, p.address, p.income, string([]rune(p.address)[:6])} {
			if bytes.Contains(body, []byte(secret)) {
				t.Errorf("the verify answer contains %q:\n%s", secret, body)
			}
		}
		var top map[string]json.RawMessage
		json.Unmarshal(body, &top)
		for _, k := range []string{"rows", "fields"} {
			if _, ok := top[k]; ok {
				t.Errorf("the verify answer has %q:\n%s", k, body)
			}
		}
		// A subject that does not exist.
		code, body = callAPI(t, addr, tok, "/v1/verify/gaj.huji/by_id", map[string]any{
			"params": map[string]string{"id_no": citizenID("110105", "19491231", 999)},
			"values": map[string]string{"name": p.name},
		})
		if code != http.StatusOK || json.Unmarshal(body, &a) != nil || a.Found || a.Matches["name"] {
			t.Errorf("verify of no such subject: %d %s", code, body)
		}
		answered = append(answered, a.ID)
		out := mustRun(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id, "--value", "name="+p.name)...)
		if !strings.Contains(out, "name  match") || strings.Contains(out, p.address) {
			t.Errorf("verify on the command line:\n%s", out)
		}
		answered = append(answered, lastCallID(t, out))
	})

	t.Run("SQL in a parameter", func(t *testing.T) {
		expectFail(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id+"' OR '1'='1"), "id_no")
		for _, inj := range []string{"x' OR '1'='1", "居民007'; DROP TABLE household; --", `" OR ""="`} {
			out := mustRun(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_name", "--param", "name="+inj, "--json")...)
			var a api.CallAnswer
			if err := json.Unmarshal([]byte(out), &a); err != nil || len(a.Rows) != 0 || a.Found {
				t.Errorf("injection %q answered: %s", inj, out)
			}
			answered = append(answered, a.ID)
		}
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM household`).Scan(&n); err != nil || n != len(people) {
			t.Errorf("household has %d rows (%v), want %d", n, err, len(people))
		}
	})

	t.Run("refusals", func(t *testing.T) {
		badID := p.id[:17] + string("0123456789X"[(strings.IndexByte("0123456789X", p.id[17])+1)%11])
		expectFail(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+badID), "check", "id_no")
		expectFail(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "name=x"), "no parameter")
		expectFail(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_sql", "--param", "id_no="+p.id), "declares no call by_sql")
		expectFail(t, "qz-agent", ag(other, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id), "for mode batch, not query")
		// A verification of a field the grant does not cover.
		expectFail(t, "qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id, "--value", "income="+p.income), "income")
		// The verify grant allows 12 calls a day: use them up.
		var over string
		for i := range 20 {
			out, errOut, err := run("qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+people[i].id, "--value", "name="+people[i].name)...)
			if err != nil {
				over = errOut
				break
			}
			answered = append(answered, lastCallID(t, out))
		}
		if !strings.Contains(over, "quota") {
			t.Errorf("no quota refusal within 20 verifications; last error %q", over)
		}
		// A node with no grant at all.
		third := newNode(t, h, "wjw", nodeOpts{})
		expectFail(t, "qz-agent", ag(third, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id), "no grant for gaj.huji in mode query")
	})

	t.Run("provider offline", func(t *testing.T) {
		prov.p.kill()
		start := time.Now()
		_, errOut, err := run("qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id)...)
		took := time.Since(start)
		if err == nil {
			t.Fatal("a call to a killed provider succeeded")
		}
		if !strings.Contains(errOut, "gaj") || !(strings.Contains(errOut, "did not answer within 2s") || strings.Contains(errOut, "not connected")) {
			t.Errorf("error %q does not say the provider is offline", strings.TrimSpace(errOut))
		}
		if took > 2*time.Second+3*time.Second {
			t.Errorf("the call failed after %s; the hub's call_timeout is 2s", took)
		}
		t.Logf("call to a killed provider failed after %s: %s", took.Round(time.Millisecond), strings.TrimSpace(errOut))
	})

	t.Run("revoked", func(t *testing.T) {
		h.central("grant", "revoke", queryGrant)
		waitFor(t, 10*time.Second, "the revoked grant to be refused", func() bool {
			_, errOut, err := run("qz-agent", ag(cons, "call", "gaj.huji", "by_id", "--param", "id_no="+p.id)...)
			return err != nil && strings.Contains(errOut, "revoked")
		})
	})

	t.Run("audit", func(t *testing.T) {
		audit := h.central("audit", "list")
		var calls []string
		for _, l := range strings.Split(audit, "\n") {
			if strings.Contains(l, " call.") {
				calls = append(calls, l)
			}
		}
		// Each refusal has its own audit record, with its reason.
		for _, w := range [][2]string{
			{"call.refused", "parameter id_no is not a valid citizen_id"},
			{"call.refused", `call by_id has no parameter "name"`},
			{"call.refused", "declares no call by_sql"},
			{"call.refused", "is for mode batch, not query"},
			{"call.refused", "does not cover field income"},
			{"call.refused", "daily quota of 12 calls is used up"},
			{"call.refused", "in mode query was revoked"},
			{"call.refused", "node wjw has no grant for gaj.huji in mode query"},
			{"call.timeout", "provider gaj did not answer within 2s"},
			{"call.query", "status=answered"},
			{"call.verify", "status=answered"},
		} {
			if !slices.ContainsFunc(calls, func(l string) bool { return strings.Contains(l, w[0]) && strings.Contains(l, w[1]) }) {
				t.Errorf("no %s audit record with %q", w[0], w[1])
			}
		}
		for _, secret := range []string{p.id, p.name, p.address} {
			if strings.Contains(audit, secret) {
				t.Errorf("the audit log holds the value %q", secret)
			}
		}
		if out := h.central("audit", "verify"); !strings.Contains(out, "audit log intact") {
			t.Errorf("audit verify: %s", out)
		}
	})

	t.Run("receipts", func(t *testing.T) {
		key, err := seal.LoadOrCreate(filepath.Join(prov.state, "identity", "seal.key"))
		if err != nil {
			t.Fatal(err)
		}
		pub := key.Public()
		for _, n := range []*node{cons, prov} {
			var recs []struct {
				api.CallRecord
				Seal string `json:"seal"`
			}
			out := mustRun(t, "qz-agent", ag(n, "calls", "--limit", "1000", "--json")...)
			if err := json.Unmarshal([]byte(out), &recs); err != nil {
				t.Fatalf("calls --json: %v\n%s", err, out)
			}
			byID := map[string]api.CallRecord{}
			seals := map[string]string{}
			refused := 0
			for _, r := range recs {
				byID[r.ID] = r.CallRecord
				seals[r.ID] = r.Seal
				if r.Status == api.CallRefused {
					refused++
				}
			}
			for _, id := range answered {
				r, ok := byID[id]
				if !ok || r.Status != api.CallAnswered || len(r.Receipt) == 0 {
					t.Errorf("%s: call %s: record %+v", n.id, id, r)
					continue
				}
				rc, err := receipt.ParseCall(r.Receipt)
				if err != nil || rc.Verify(pub) != nil || rc.ID != id || rc.Consumer != "mzj" || rc.Provider != "gaj" {
					t.Errorf("%s: call %s: receipt %s does not verify (%v)", n.id, id, r.Receipt, err)
				}
				if seals[id] != "verified" {
					t.Errorf("%s: qz-agent calls says the seal of call %s is %q", n.id, id, seals[id])
				}
			}
			if n == cons && refused < 5 {
				t.Errorf("the consumer sees %d refused calls, want at least 5", refused)
			}
		}
		out := h.central("calls", "--limit", "1000")
		if !strings.Contains(out, "answered") || !strings.Contains(out, "refused") || !strings.Contains(out, "verified") || strings.Contains(out, "BAD") {
			t.Errorf("qz-central calls:\n%s", out)
		}
	})
}

// lastCallID finds "call ID" in qz-agent call's text output.
func lastCallID(t *testing.T, out string) string {
	t.Helper()
	i := strings.LastIndex(out, "call ")
	if i < 0 {
		t.Fatalf("no call ID in:\n%s", out)
	}
	return strings.Fields(out[i+5:])[0]
}

// hubBlind takes everything the hub keeps of an answered call (its row in
// the calls table with the receipt, its audit records, a backup of the hub
// and the hub's log) and shows that none of it confirms the call's
// parameters: the plain digest of the right guess is nowhere, nor is any
// digest keyed with what the hub holds (nothing, the call ID, the two
// public keys the receipt names, a key agreed with the hub's own keys).
// The consumer, with the call key its agent handed over or derived again
// from its node key, and the provider, from its own node key, each prove
// the parameters; a wrong guess does not pass.
func hubBlind(t *testing.T, h *hub, cons, prov *node, ans api.CallAnswer, params map[string]string, wrong string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(h.dir, "state", "central.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var stored [][]byte
	collect := func(q string, args ...any) int {
		rows, err := db.Query(q, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		n := 0
		for rows.Next() {
			vals := make([]any, len(cols))
			for i := range vals {
				vals[i] = new(sql.RawBytes)
			}
			if err := rows.Scan(vals...); err != nil {
				t.Fatal(err)
			}
			for _, v := range vals {
				stored = append(stored, slices.Clone([]byte(*v.(*sql.RawBytes))))
			}
			n++
		}
		return n
	}
	if collect(`SELECT * FROM calls WHERE id = ?`, ans.ID) != 1 || collect(`SELECT * FROM audit WHERE subject = ? OR detail LIKE ?`, ans.ID, "%"+ans.ID+"%") == 0 {
		t.Fatalf("the hub has no call record or no audit record of call %s", ans.ID)
	}
	var raw []byte
	if err := db.QueryRow(`SELECT receipt FROM calls WHERE id = ?`, ans.ID).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	rc, err := receipt.ParseCall(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{rc.ParamsDigest, rc.AnswerDigest} {
		stored = append(stored, []byte(v))
	}
	bk := filepath.Join(t.TempDir(), "backup")
	h.central("backup", bk)
	filepath.WalkDir(bk, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(path)
			stored = append(stored, b)
		}
		return err
	})
	hubLog, _ := os.ReadFile(filepath.Join(h.dir, "hub.log"))
	stored = append(stored, hubLog)
	for _, v := range params {
		if bytes.Contains(hubLog, []byte(v)) {
			t.Errorf("the hub's log holds the parameter %q", v)
		}
	}
	found := func(digest string) bool {
		return slices.ContainsFunc(stored, func(b []byte) bool { return bytes.Contains(b, []byte(digest)) })
	}

	if rc.Version != receipt.CallKeyed {
		t.Errorf("the receipt is version %d, want %d (keyed)", rc.Version, receipt.CallKeyed)
	}
	if d := receipt.ParamsDigest(ans.ID, params, nil); found(d) {
		t.Errorf("the hub stores the plain digest of the right guess (%s): a guessed ID number is confirmed", d)
	}
	// Keys the hub could try: what it holds or is sent.
	tries := [][]byte{nil, []byte(ans.ID), rc.ConsumerKey, rc.ProviderKey, append(slices.Clone(rc.ConsumerKey), rc.ProviderKey...)}
	for _, k := range tries[2:] {
		sum := sha256.Sum256(k)
		tries = append(tries, sum[:])
	}
	for _, f := range []string{"ca.key", "server.key"} {
		pem, err := os.ReadFile(filepath.Join(h.dir, "state", f))
		if err != nil {
			t.Fatal(err)
		}
		k, err := pki.ParseKeyPEM(pem)
		if err != nil {
			t.Fatal(err)
		}
		hk, err := receipt.NewCallKeyer(k)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, peer := range [][]byte{rc.ConsumerKey, rc.ProviderKey} {
			ck, err := hk.CallKey(peer, ans.ID, rc.Consumer, rc.Provider)
			if err != nil {
				t.Fatal(err)
			}
			tries = append(tries, ck)
		}
	}
	for i, k := range tries {
		if d := receipt.KeyedParamsDigest(k, ans.ID, params, nil); found(d) {
			t.Errorf("a digest keyed with what the hub holds (try %d) is stored: the hub can confirm the guess", i)
		}
	}

	// The consumer proves the parameters with the key its agent gave it,
	// and derives the same key again from its node key; so does the
	// provider from its own.
	key, err := hex.DecodeString(ans.CallKey)
	if err != nil || len(key) != 32 {
		t.Fatalf("the consumer's agent handed over call key %q", ans.CallKey)
	}
	if receipt.KeyedParamsDigest(key, ans.ID, params, nil) != rc.ParamsDigest ||
		receipt.KeyedAnswerDigest(key, ans.Fields, ans.Rows, ans.Found, ans.Matches) != rc.AnswerDigest {
		t.Error("the consumer's call key does not prove the parameters and the answer the receipt covers")
	}
	if receipt.KeyedParamsDigest(key, ans.ID, map[string]string{"id_no": wrong}, nil) == rc.ParamsDigest {
		t.Error("a wrong guess passes with the call key")
	}
	for _, side := range []struct {
		n    *node
		peer []byte
	}{{cons, rc.ProviderKey}, {prov, rc.ConsumerKey}} {
		id, err := agent.LoadIdentity(filepath.Join(side.n.state, "identity"))
		if err != nil {
			t.Fatal(err)
		}
		k, err := receipt.NewCallKeyer(id.Cert.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		again, err := k.CallKey(side.peer, ans.ID, rc.Consumer, rc.Provider)
		if err != nil || !bytes.Equal(again, key) {
			t.Errorf("%s derives call key %x again from its node key (%v), want %x", side.n.id, again, err, key)
		}
		// qz-agent calls lists it beside the record.
		type line struct {
			ID      string `json:"id"`
			Seal    string `json:"seal"`
			CallKey string `json:"call_key"`
		}
		var lines []line
		out := mustRun(t, "qz-agent", "calls", "--limit", "1000", "--json", "--config", side.n.cfg)
		if err := json.Unmarshal([]byte(out), &lines); err != nil {
			t.Fatalf("calls --json: %v\n%s", err, out)
		}
		i := slices.IndexFunc(lines, func(l line) bool { return l.ID == ans.ID })
		if i < 0 {
			t.Errorf("%s: qz-agent calls does not list call %s", side.n.id, ans.ID)
		} else if lines[i].Seal != "verified" || lines[i].CallKey != ans.CallKey {
			t.Errorf("%s: qz-agent calls lists call %s with %+v, want its seal verified and call key %s", side.n.id, ans.ID, lines[i], ans.CallKey)
		}
	}
}
