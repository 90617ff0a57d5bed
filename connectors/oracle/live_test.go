package oracle

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/connectorstest"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// These tests run against a real Oracle when QZ_TEST_ORACLE_DSN is set
// (oracle://user:password@host:1521/service; the user needs CREATE TABLE
// and SELECT on V_$DATABASE or EXECUTE on DBMS_FLASHBACK).

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func liveDSN(t *testing.T) string {
	t.Helper()
	dsn := os.Getenv("QZ_TEST_ORACLE_DSN")
	if dsn == "" {
		t.Skip("QZ_TEST_ORACLE_DSN not set: Oracle cannot run on this machine; the generated SQL is checked as text above")
	}
	return dsn
}

func liveDB(t *testing.T) *sql.DB {
	t.Helper()
	dsn := liveDSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := d.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// tableName is a name no other run uses, dropped when the test ends.
func tableName(t *testing.T, db *sql.DB, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano()%1e9)
	t.Cleanup(func() { db.Exec(`DROP TABLE "` + name + `" PURGE`) })
	return name
}

func exec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

const everyOracleType = `CREATE TABLE "%s" (
  ID NUMBER(10) PRIMARY KEY,
  NAME NVARCHAR2(50),
  CODE VARCHAR2(20 CHAR),
  FIXED CHAR(4),
  AMOUNT NUMBER(38,10),
  ANY_NUM NUMBER,
  APPROX FLOAT(63),
  F BINARY_FLOAT,
  D BINARY_DOUBLE,
  BORN DATE,
  TS TIMESTAMP(9),
  TSTZ TIMESTAMP(6) WITH TIME ZONE,
  TSLTZ TIMESTAMP(3) WITH LOCAL TIME ZONE,
  NOTE CLOB,
  NNOTE NCLOB,
  BIN RAW(16),
  PHOTO BLOB,
  UPDATED_AT TIMESTAMP(6) DEFAULT CAST(SYSTIMESTAMP AS TIMESTAMP(6)) NOT NULL
)`

// The watermark holds the server's wall clock, as SYSDATE would: the
// clock Now reads. (SYSTIMESTAMP assigned to a TIMESTAMP without the CAST
// may go through the session's zone, which is UTC in this connector's
// sessions.)

// insertEdges fills a table of everyOracleType with edge values.
func insertEdges(t *testing.T, db *sql.DB, table string) {
	t.Helper()
	q := `INSERT INTO "` + table + `" (ID, NAME, CODE, FIXED, AMOUNT, ANY_NUM, APPROX, F, D, BORN, TS, TSTZ, TSLTZ, NOTE, NNOTE, BIN, PHOTO) VALUES (` +
		`:1, :2, :3, :4, TO_NUMBER(:5), TO_NUMBER(:6), TO_NUMBER(:7), TO_BINARY_FLOAT(:8), TO_BINARY_DOUBLE(:9), ` +
		`TO_DATE(:10, 'YYYY-MM-DD HH24:MI:SS'), TO_TIMESTAMP(:11, 'YYYY-MM-DD HH24:MI:SS.FF'), ` +
		`TO_TIMESTAMP_TZ(:12, 'YYYY-MM-DD HH24:MI:SS.FF TZH:TZM'), CAST(TO_TIMESTAMP_TZ(:13, 'YYYY-MM-DD HH24:MI:SS.FF TZH:TZM') AS TIMESTAMP(3) WITH LOCAL TIME ZONE), ` +
		`:14, :15, :16, :17)`
	bigText := strings.Repeat("长文本 long text 𠮷 ", 4000) // well over 64 KiB
	bigBlob := bytes.Repeat([]byte{0, 1, 2, 0xFE, 0xFF}, 20000)
	for _, row := range [][]any{
		{1, "张三", "ABC", "ab", "9999999999999999999999999999.9999999999", "0.0000000000000000000000000000000000000000000000000123", "0.1",
			"0.7", "0.1", "2024-02-29 23:59:59", "2024-02-29 23:59:59.123456789", "2024-02-29 23:59:59.123456 +08:00", "2024-02-29 23:59:59.123 +08:00",
			"短", "中文", []byte{0, 1, 2, 0xFF}, []byte{0xFF, 0xD8}},
		{2, "李四", "Z", "abcd", "-9999999999999999999999999999.9999999999", "-12345678901234567890123456789012345678", "-1e-100",
			"-3.4028235e+38", "-1.7976931348623157e+308", "0001-01-01 00:00:00", "1970-01-01 00:00:00.000000001", "1999-12-31 23:59:59.999999 -05:30", "1999-12-31 23:59:59.999 -05:30",
			bigText, bigText, []byte{0x80}, bigBlob},
		{3, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil},
		{4, "", "", "", "0", "0", "0", "0", "0", "2000-01-01 00:00:00", "2000-01-01 00:00:00", "2000-01-01 00:00:00 +00:00", "2000-01-01 00:00:00 +00:00", "", "", []byte{}, []byte{}},
	} {
		exec(t, db, q, row...)
	}
	for i := 5; i <= 12; i++ {
		exec(t, db, `INSERT INTO "`+table+`" (ID, NAME, AMOUNT) VALUES (:1, :2, TO_NUMBER(:3))`, i, fmt.Sprintf("行%d", i), fmt.Sprintf("%d.0105", i))
	}
}

// dump is a table's rows in ID order, every column as canonical text read
// the way the source reads it.
func dump(t *testing.T, db *sql.DB, table string, cols []batch.Column) []string {
	t.Helper()
	var sel []string
	for _, c := range cols {
		sel = append(sel, d.Select(c, d.Quote(c.Name)))
	}
	rows, err := db.Query("SELECT " + strings.Join(sel, ", ") + " FROM " + d.Quote(table) + ` ORDER BY "ID"`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for i, v := range vals {
			text, err := sqltable.ToText(&cols[i], v)
			if err != nil {
				t.Fatal(err)
			}
			if text == nil {
				fmt.Fprintf(&b, "%s=NULL|", cols[i].Name)
			} else if len(text) > 80 {
				fmt.Fprintf(&b, "%s=%d bytes %x|", cols[i].Name, len(text), text[:40])
			} else {
				fmt.Fprintf(&b, "%s=%q|", cols[i].Name, text)
			}
		}
		out = append(out, b.String())
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLiveDescribe(t *testing.T) {
	db := liveDB(t)
	src := tableName(t, db, "QZ_DESC")
	exec(t, db, fmt.Sprintf(everyOracleType, src))
	exec(t, db, `CREATE UNIQUE INDEX "`+src+`_U" ON "`+src+`" (CODE, FIXED)`)
	exec(t, db, `CREATE INDEX "`+src+`_W" ON "`+src+`" (UPDATED_AT, ID)`)
	tbl, err := d.Describe(t.Context(), db, src)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"ID": "int", "NAME": "string", "CODE": "string", "FIXED": "string", "AMOUNT": "decimal", "ANY_NUM": "decimal", "APPROX": "decimal",
		"F": "float", "D": "double", "BORN": "datetime", "TS": "datetime", "TSTZ": "timestamptz", "TSLTZ": "timestamp",
		"NOTE": "text", "NNOTE": "text", "BIN": "binary", "PHOTO": "blob", "UPDATED_AT": "datetime",
	}
	for _, c := range tbl.Columns {
		if want[c.Name] != c.Type {
			t.Errorf("column %s (%s): %s, want %s", c.Name, tbl.Native[c.Name], c.Type, want[c.Name])
		}
	}
	if fmt.Sprint(tbl.Key) != "[ID]" || !tbl.Leading["UPDATED_AT"] || !tbl.Leading["CODE"] || tbl.Leading["FIXED"] {
		t.Errorf("key %v leading %v", tbl.Key, tbl.Leading)
	}
	if fmt.Sprint(tbl.Unique) != "[[ID] [CODE FIXED]]" && fmt.Sprint(tbl.Unique) != "[[CODE FIXED] [ID]]" {
		t.Errorf("unique %v", tbl.Unique)
	}
	if _, err := d.Describe(t.Context(), db, strings.ToLower(src)); !errors.Is(err, sqltable.ErrNoTable) || !strings.Contains(err.Error(), "upper case") {
		t.Errorf("a lower-case name: %v", err)
	}
	qcols, _, err := d.DescribeQuery(t.Context(), db, `SELECT ID, NAME, AMOUNT, TS, NOTE FROM "`+src+`"`)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(qcols); !strings.Contains(got, "ID int") || !strings.Contains(got, "AMOUNT decimal") || !strings.Contains(got, "TS datetime") {
		t.Errorf("query columns %v", got)
	}
	sn, err := d.Snapshot(t.Context(), db, "")
	if err != nil {
		t.Fatal(err)
	}
	var count int
	if err := sn.Q().QueryRowContext(t.Context(), "SELECT COUNT(*) FROM "+sn.From(d.Quote(src))).Scan(&count); err != nil {
		t.Fatalf("flashback read: %v", err)
	}
	now, err := d.Now(t.Context(), db, batch.Column{Type: batch.TypeDatetime, Precision: 6}, time.Second, "+08:00")
	if err != nil || len(now) != len("2006-01-02 15:04:05.000000") {
		t.Errorf("now %q, %v", now, err)
	}
	plan, err := d.Explain(t.Context(), db, `SELECT * FROM "`+src+`" WHERE UPDATED_AT >= TO_TIMESTAMP(:1, 'YYYY-MM-DD HH24:MI:SS.FF')`, []any{now})
	if err != nil || !strings.Contains(plan, src) {
		t.Errorf("plan %q, %v", plan, err)
	}
}

// TestLiveRoundTrip moves a table of every type through a sqltable source
// and sink into a new table, and compares every value as canonical text.
func TestLiveRoundTrip(t *testing.T) {
	db := liveDB(t)
	dsn := liveDSN(t)
	src, dst, applied := tableName(t, db, "QZ_SRC"), tableName(t, db, "QZ_DST"), tableName(t, db, "QZ_APL")
	exec(t, db, fmt.Sprintf(everyOracleType, src))
	exec(t, db, `CREATE INDEX "`+src+`_W" ON "`+src+`" (UPDATED_AT, ID)`)
	insertEdges(t, db, src)

	k, err := connectors.Lookup(Kind)
	if err != nil {
		t.Fatal(err)
	}
	sc := k.SourceConf().(*sqltable.SourceConfig)
	sc.ID, sc.DSN, sc.Table, sc.Watermark, sc.Lag, sc.PageRows = "dept-a.every", dsn, src, "UPDATED_AT", 0, 3
	kc := k.SinkConf().(*sqltable.SinkConfig)
	kc.ID, kc.DSN, kc.Table, kc.CreateTable, kc.AppliedTable = "dept-a.every", dsn, dst, true, applied
	if err := errors.Join(sc.Validate(), kc.Validate()); err != nil {
		t.Fatal(err)
	}
	source, err := sc.OpenSource(quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()
	sink, err := kc.OpenSink(quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()

	st := connectorstest.NewMemState("src/g1")
	var seq uint64
	drain := func() {
		t.Helper()
		for range 1000 {
			out := connectors.Output{Limit: 32 << 10}
			err := source.Next(t.Context(), st, &out)
			if errors.Is(err, connectors.ErrIdle) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !out.Empty() {
				seq++
				h := batch.Header{Kind: out.Kind, Resource: "dept-a.every", Grant: "g1", Sequence: seq, Schema: out.Schema, Rows: out.Rows}
				if err := sink.Apply(t.Context(), &h, bytes.NewReader(out.Body), nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			st.Commit(&out.Changes)
		}
		t.Fatal("the source never went idle")
	}
	compare := func() {
		t.Helper()
		tbl, err := d.Describe(t.Context(), db, src)
		if err != nil {
			t.Fatal(err)
		}
		a, b := dump(t, db, src, tbl.Columns), dump(t, db, dst, tbl.Columns)
		if len(a) != len(b) {
			t.Fatalf("%d rows at the source, %d at the target", len(a), len(b))
		}
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("row %d differs:\nsource %s\ntarget %s", i, a[i], b[i])
			}
		}
	}

	drain()
	compare()
	exec(t, db, `UPDATE "`+src+`" SET NAME = '王五', AMOUNT = -0.0001, UPDATED_AT = CAST(SYSTIMESTAMP AS TIMESTAMP(6)) WHERE ID IN (1, 3, 7)`)
	exec(t, db, `INSERT INTO "`+src+`" (ID, NAME) VALUES (99, '新行')`)
	drain()
	compare()

	got, err := d.Describe(t.Context(), db, dst)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := d.Describe(t.Context(), db, src)
	for i, c := range got.Columns {
		if w := want.Columns[i]; c.Name != w.Name || c.Type != w.Type || (c.Type != batch.TypeDecimal && c.Precision != w.Precision) {
			t.Errorf("target column %s is %s(%d) (%s), source %s(%d) (%s)", c.Name, c.Type, c.Precision, got.Native[c.Name], w.Type, w.Precision, want.Native[w.Name])
		}
	}
}

// TestLiveEmptyStringNotNull shows what becomes of an empty string bound
// into a NOT NULL character column: Oracle stores it as NULL and refuses
// the row, naming the column.
func TestLiveEmptyStringNotNull(t *testing.T) {
	db := liveDB(t)
	tbl := tableName(t, db, "QZ_EMPTY")
	exec(t, db, `CREATE TABLE "`+tbl+`" (ID NUMBER(10) PRIMARY KEY, S VARCHAR2(10) NOT NULL)`)
	cols := []batch.Column{{Name: "ID", Type: batch.TypeInt}, {Name: "S", Type: batch.TypeString, Length: 10}}
	_, err := db.Exec(d.Upsert(tbl, cols, []string{"ID"}, 1), "1", "")
	if err == nil || !strings.Contains(err.Error(), `"S"`) {
		t.Fatalf("want ORA-01400 naming column S, got %v", err)
	}
}
