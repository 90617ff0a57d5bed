package oracle

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	go_ora "github.com/sijms/go-ora/v2"
	"github.com/sijms/go-ora/v2/converters"
	"github.com/sijms/go-ora/v2/network"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Oracle cannot run on this machine, so the SQL the dialect writes is
// checked here as text, and against a real server in live_test.go when
// QZ_TEST_ORACLE_DSN is set.

var d Dialect

func TestRegistered(t *testing.T) {
	k, err := connectors.Lookup(Kind)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := k.SourceConf().(*sqltable.SourceConfig); !ok {
		t.Fatalf("source config is %T", k.SourceConf())
	}
}

func TestNormalizeDSN(t *testing.T) {
	for _, c := range []struct {
		name, dsn, want, err string
	}{
		{"port and prefetch filled in", "oracle://scott:tiger@db.example:1521/ORCLPDB1", "oracle://scott:tiger@db.example:1521/ORCLPDB1?PREFETCH_ROWS=1000", ""},
		{"default port", "oracle://scott:tiger@db.example/ORCLPDB1", "oracle://scott:tiger@db.example:1521/ORCLPDB1?PREFETCH_ROWS=1000", ""},
		{"prefetch kept", "oracle://scott:tiger@db:1522/X?prefetch_rows=50", "oracle://scott:tiger@db:1522/X?prefetch_rows=50", ""},
		{"escaped password kept", "oracle://u:p%40ss%2Fw@db:1521/X", "oracle://u:p%40ss%2Fw@db:1521/X?PREFETCH_ROWS=1000", ""},
		{"sid instead of service", "oracle://u:p@db:1521?SID=ORCL", "oracle://u:p@db:1521?PREFETCH_ROWS=1000&SID=ORCL", ""},
		{"wrong scheme", "mysql://u:secret@db/x", "", "not oracle"},
		{"no user", "oracle://db:1521/X", "", "no user"},
		{"no service", "oracle://u:secret@db:1521", "", "no service"},
		{"malformed", "oracle://u:secret@db:port/X", "", "malformed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := normalizeDSN(c.dsn)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("want an error with %q, got %v", c.err, err)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Fatalf("the error repeats the password: %v", err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestOpenUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	db, err := d.Open(ctx, "oracle://scott:secret@"+addr+"/ORCL")
	if err == nil {
		db.Close()
		t.Fatal("connected to nothing")
	}
	if strings.Contains(err.Error(), "secret") {
		t.Fatalf("the error repeats the password: %v", err)
	}
}

func TestSessionSQL(t *testing.T) {
	// Each setting guards a behaviour: TO_NUMBER reading '.', keyset
	// pagination agreeing with ORDER BY on text keys, Gregorian years,
	// instants converting to plain TIMESTAMP as UTC.
	for _, s := range []string{"NLS_NUMERIC_CHARACTERS = '.,'", "NLS_SORT = 'BINARY'", "NLS_COMP = 'BINARY'", "NLS_CALENDAR = 'GREGORIAN'", "TIME_ZONE = '+00:00'"} {
		if !strings.Contains(sessionSQL, s) {
			t.Errorf("session setup lacks %s", s)
		}
	}
}

func TestQuoteParam(t *testing.T) {
	for in, want := range map[string]string{
		"PEOPLE":       `"PEOPLE"`,
		"people":       `"people"`,
		"HR.PEOPLE":    `"HR"."PEOPLE"`,
		"张三表":          `"张三表"`,
		`A"B`:          `"A""B"`,
		"qz_applied":   `"qz_applied"`,
		"HR.Mixed_Cas": `"HR"."Mixed_Cas"`,
	} {
		if got := d.Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
	if d.Param(1) != ":1" || d.Param(12) != ":12" {
		t.Errorf("Param: %s %s", d.Param(1), d.Param(12))
	}
}

func col(name, typ string, prec int) batch.Column {
	return batch.Column{Name: name, Type: typ, Precision: prec}
}

func TestBind(t *testing.T) {
	for _, c := range []struct {
		c    batch.Column
		want string
	}{
		{col("A", batch.TypeInt, 0), "TO_NUMBER(:1)"},
		{batch.Column{Name: "A", Type: batch.TypeDecimal, Precision: 38, Scale: 10}, "TO_NUMBER(:1)"},
		{col("A", batch.TypeFloat, 0), "TO_BINARY_FLOAT(:1)"},
		{col("A", batch.TypeDouble, 0), "TO_BINARY_DOUBLE(:1)"},
		{col("A", batch.TypeString, 0), ":1"},
		{col("A", batch.TypeText, 0), ":1"},
		{col("A", batch.TypeBinary, 0), ":1"},
		{col("A", batch.TypeBlob, 0), ":1"},
		{col("A", batch.TypeTime, 0), ":1"},
		{col("A", batch.TypeDate, 0), "TO_DATE(:1, 'YYYY-MM-DD')"},
		{col("A", batch.TypeDatetime, 0), "TO_DATE(:1, 'YYYY-MM-DD HH24:MI:SS')"},
		{col("A", batch.TypeDatetime, 6), "TO_TIMESTAMP(:1, 'YYYY-MM-DD HH24:MI:SS.FF')"},
		{col("A", batch.TypeDatetime, 9), "TO_TIMESTAMP(:1, 'YYYY-MM-DD HH24:MI:SS.FF')"},
		{col("A", batch.TypeTimestamp, 0), "CAST(FROM_TZ(TO_TIMESTAMP(:1, 'YYYY-MM-DD HH24:MI:SS'), '+00:00') AS TIMESTAMP(0) WITH LOCAL TIME ZONE)"},
		{col("A", batch.TypeTimestamp, 3), "CAST(FROM_TZ(TO_TIMESTAMP(:1, 'YYYY-MM-DD HH24:MI:SS.FF'), '+00:00') AS TIMESTAMP(3) WITH LOCAL TIME ZONE)"},
		{col("A", batch.TypeTimestampTZ, 0), "TO_TIMESTAMP_TZ(:1, 'YYYY-MM-DD HH24:MI:SS TZH:TZM')"},
		{col("A", batch.TypeTimestampTZ, 6), "TO_TIMESTAMP_TZ(:1, 'YYYY-MM-DD HH24:MI:SS.FF TZH:TZM')"},
	} {
		if got := d.Bind(c.c, ":1"); got != c.want {
			t.Errorf("Bind(%s(%d)) = %s, want %s", c.c.Type, c.c.Precision, got, c.want)
		}
	}
}

func TestSelect(t *testing.T) {
	a := alias(`"C"`)
	for _, c := range []struct {
		c    batch.Column
		want string
	}{
		// NUMBER is read as it is: go-ora decodes it to an exact string.
		{col("C", batch.TypeInt, 0), `"C"`},
		{batch.Column{Name: "C", Type: batch.TypeDecimal, Precision: 38, Scale: 10}, `"C"`},
		{col("C", batch.TypeFloat, 0), `CAST("C" AS BINARY_DOUBLE) ` + a},
		{col("C", batch.TypeDouble, 0), `"C"`},
		{col("C", batch.TypeString, 0), `"C"`},
		{col("C", batch.TypeText, 0), `"C"`},
		{col("C", batch.TypeBinary, 0), `"C"`},
		{col("C", batch.TypeBlob, 0), `"C"`},
		{col("C", batch.TypeDate, 0), `TO_CHAR("C", 'YYYY-MM-DD') ` + a},
		{col("C", batch.TypeDatetime, 0), `TO_CHAR("C", 'YYYY-MM-DD HH24:MI:SS') ` + a},
		{col("C", batch.TypeDatetime, 3), `TO_CHAR("C", 'YYYY-MM-DD HH24:MI:SS.FF3') ` + a},
		{col("C", batch.TypeDatetime, 9), `TO_CHAR("C", 'YYYY-MM-DD HH24:MI:SS.FF9') ` + a},
		{col("C", batch.TypeTimestamp, 6), `TO_CHAR(SYS_EXTRACT_UTC("C"), 'YYYY-MM-DD HH24:MI:SS.FF6') ` + a},
		{col("C", batch.TypeTimestampTZ, 0), `TO_CHAR("C", 'YYYY-MM-DD HH24:MI:SS TZH:TZM') ` + a},
		{col("C", batch.TypeTimestampTZ, 6), `TO_CHAR("C", 'YYYY-MM-DD HH24:MI:SS.FF6 TZH:TZM') ` + a},
	} {
		if got := d.Select(c.c, `"C"`); got != c.want {
			t.Errorf("Select(%s(%d)) = %s, want %s", c.c.Type, c.c.Precision, got, c.want)
		}
	}
	if len(a) > 32 || a == `"C"` || alias(`"D"`) == a {
		t.Errorf("alias %s must be short, not the column, and differ between columns", a)
	}
}

func TestLimit(t *testing.T) {
	got := d.Limit(`SELECT "ID" FROM "T" ORDER BY "ID"`, 5000)
	if want := `SELECT * FROM (SELECT "ID" FROM "T" ORDER BY "ID") WHERE ROWNUM <= 5000`; got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
}

// everyType is a schema with every logical type.
var everyType = &batch.Schema{Columns: []batch.Column{
	{Name: "ID", Type: batch.TypeInt},
	{Name: "AMOUNT", Type: batch.TypeDecimal, Precision: 38, Scale: 10, Nullable: true},
	{Name: "ANY_NUM", Type: batch.TypeDecimal, Nullable: true},
	{Name: "WIDE", Type: batch.TypeDecimal, Precision: 65, Scale: 30, Nullable: true},
	{Name: "F", Type: batch.TypeFloat, Nullable: true},
	{Name: "D", Type: batch.TypeDouble},
	{Name: "NAME", Type: batch.TypeString, Length: 50},
	{Name: "LONG_NAME", Type: batch.TypeString, Length: 5000, Nullable: true},
	{Name: "NOTE", Type: batch.TypeText, Nullable: true},
	{Name: "BIN", Type: batch.TypeBinary, Length: 16},
	{Name: "BIG_BIN", Type: batch.TypeBinary, Length: 65535, Nullable: true},
	{Name: "PHOTO", Type: batch.TypeBlob, Nullable: true},
	{Name: "BORN", Type: batch.TypeDate},
	{Name: "AT_TIME", Type: batch.TypeTime, Precision: 6, Nullable: true},
	{Name: "DT0", Type: batch.TypeDatetime, Nullable: true},
	{Name: "DT6", Type: batch.TypeDatetime, Precision: 6},
	{Name: "TS3", Type: batch.TypeTimestamp, Precision: 3, Nullable: true},
	{Name: "TSTZ", Type: batch.TypeTimestampTZ, Precision: 6, Nullable: true},
}, Key: []string{"ID"}}

func TestCreateTable(t *testing.T) {
	got, err := d.CreateTable("HR.PEOPLE", everyType)
	if err != nil {
		t.Fatal(err)
	}
	want := `CREATE TABLE "HR"."PEOPLE" (
  "ID" NUMBER(19) NOT NULL,
  "AMOUNT" NUMBER(38,10),
  "ANY_NUM" NUMBER,
  "WIDE" NUMBER,
  "F" BINARY_FLOAT,
  "D" BINARY_DOUBLE NOT NULL,
  "NAME" NVARCHAR2(50),
  "LONG_NAME" NCLOB,
  "NOTE" NCLOB,
  "BIN" RAW(16),
  "BIG_BIN" BLOB,
  "PHOTO" BLOB,
  "BORN" DATE NOT NULL,
  "AT_TIME" VARCHAR2(20),
  "DT0" DATE,
  "DT6" TIMESTAMP(6) NOT NULL,
  "TS3" TIMESTAMP(3) WITH LOCAL TIME ZONE,
  "TSTZ" TIMESTAMP(6) WITH TIME ZONE,
  PRIMARY KEY ("ID")
)`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestCreateTableKeys(t *testing.T) {
	// A key cannot be a LOB, and Oracle cannot keep a NOT NULL text
	// column apart from '' (the primary key makes keys NOT NULL anyway).
	s := &batch.Schema{Columns: []batch.Column{
		{Name: "K1", Type: batch.TypeText},
		{Name: "K2", Type: batch.TypeBlob},
		{Name: "K3", Type: batch.TypeString},
		{Name: "V", Type: batch.TypeString, Length: 10},
	}, Key: []string{"K1", "K2", "K3"}}
	got, err := d.CreateTable("T", s)
	if err != nil {
		t.Fatal(err)
	}
	want := "CREATE TABLE \"T\" (\n  \"K1\" NVARCHAR2(2000),\n  \"K2\" RAW(2000),\n  \"K3\" NVARCHAR2(2000),\n  \"V\" NVARCHAR2(10),\n  PRIMARY KEY (\"K1\", \"K2\", \"K3\")\n)"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if _, err := d.CreateTable("T", &batch.Schema{Columns: []batch.Column{{Name: "X", Type: "interval"}}, Key: []string{"X"}}); err == nil {
		t.Fatal("an unknown type must be refused")
	}
}

var placeholder = regexp.MustCompile(`:[0-9]+`)

func TestUpsert(t *testing.T) {
	cols := []batch.Column{
		{Name: "ID", Type: batch.TypeInt},
		{Name: "NAME", Type: batch.TypeString, Length: 50},
		{Name: "AT", Type: batch.TypeDatetime, Precision: 6},
	}
	for _, c := range []struct {
		name string
		cols []batch.Column
		key  []string
		rows int
		want string
	}{
		{"one row", cols, []string{"ID"}, 1,
			`MERGE INTO "HR"."T" t USING (SELECT TO_NUMBER(:1) AS "ID", :2 AS "NAME", TO_TIMESTAMP(:3, 'YYYY-MM-DD HH24:MI:SS.FF') AS "AT" FROM DUAL) s` +
				` ON (t."ID" = s."ID")` +
				` WHEN MATCHED THEN UPDATE SET t."NAME" = s."NAME", t."AT" = s."AT"` +
				` WHEN NOT MATCHED THEN INSERT ("ID", "NAME", "AT") VALUES (s."ID", s."NAME", s."AT")`},
		{"compound key", cols, []string{"ID", "AT"}, 1,
			`MERGE INTO "HR"."T" t USING (SELECT TO_NUMBER(:1) AS "ID", :2 AS "NAME", TO_TIMESTAMP(:3, 'YYYY-MM-DD HH24:MI:SS.FF') AS "AT" FROM DUAL) s` +
				` ON (t."ID" = s."ID" AND t."AT" = s."AT")` +
				` WHEN MATCHED THEN UPDATE SET t."NAME" = s."NAME"` +
				` WHEN NOT MATCHED THEN INSERT ("ID", "NAME", "AT") VALUES (s."ID", s."NAME", s."AT")`},
		{"every column in the key", cols[:2], []string{"ID", "NAME"}, 1,
			`MERGE INTO "HR"."T" t USING (SELECT TO_NUMBER(:1) AS "ID", :2 AS "NAME" FROM DUAL) s` +
				` ON (t."ID" = s."ID" AND t."NAME" = s."NAME")` +
				` WHEN NOT MATCHED THEN INSERT ("ID", "NAME") VALUES (s."ID", s."NAME")`},
		{"two rows", cols[:2], []string{"ID"}, 2,
			`MERGE INTO "HR"."T" t USING (SELECT TO_NUMBER(:1) AS "ID", :2 AS "NAME" FROM DUAL UNION ALL SELECT TO_NUMBER(:3) AS "ID", :4 AS "NAME" FROM DUAL) s` +
				` ON (t."ID" = s."ID")` +
				` WHEN MATCHED THEN UPDATE SET t."NAME" = s."NAME"` +
				` WHEN NOT MATCHED THEN INSERT ("ID", "NAME") VALUES (s."ID", s."NAME")`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := d.Upsert("HR.T", c.cols, c.key, c.rows); got != c.want {
				t.Fatalf("got\n%s\nwant\n%s", got, c.want)
			}
			if n := len(placeholder.FindAllString(c.want, -1)); n != len(c.cols)*c.rows {
				t.Fatalf("%d placeholders for %d values", n, len(c.cols)*c.rows)
			}
		})
	}
	if d.UpsertRows(3) != 1 {
		t.Fatal("one MERGE a row: a key twice in one MERGE fails with ORA-30926")
	}
}

// TestSourceSQL assembles the statements the sqltable source runs, from
// the Dialect's pieces in the same order as source.go, and checks that the
// result is Oracle SQL whose comparisons keep the columns untouched (so
// their indexes serve the range and the ORDER BY).
func TestSourceSQL(t *testing.T) {
	id := batch.Column{Name: "ID", Type: batch.TypeInt}
	name := batch.Column{Name: "NAME", Type: batch.TypeString, Length: 50}
	upd := batch.Column{Name: "UPDATED_AT", Type: batch.TypeDatetime}
	cols := []batch.Column{id, name, upd}
	var list []string
	for _, c := range cols {
		list = append(list, d.Select(c, d.Quote(c.Name)))
	}
	sel := "SELECT " + strings.Join(list, ", ")
	sn := snapshot{scn: "48151623"}

	// A snapshot page after key (7, "王"): k1 >= ? AND (k1 > ? OR k2 > ?).
	where := `"ID" >= ` + d.Bind(id, d.Param(1)) + ` AND ("ID" > ` + d.Bind(id, d.Param(2)) + ` OR (` + `"NAME" > ` + d.Bind(name, d.Param(3)) + `))`
	page := d.Limit(sel+" FROM "+sn.From(d.Quote("HR.PEOPLE"))+" WHERE "+where+` ORDER BY "ID", "NAME"`, 5000)
	a := alias(`"UPDATED_AT"`)
	want := `SELECT * FROM (SELECT "ID", "NAME", TO_CHAR("UPDATED_AT", 'YYYY-MM-DD HH24:MI:SS') ` + a +
		` FROM "HR"."PEOPLE" AS OF SCN 48151623` +
		` WHERE "ID" >= TO_NUMBER(:1) AND ("ID" > TO_NUMBER(:2) OR ("NAME" > :3))` +
		` ORDER BY "ID", "NAME") WHERE ROWNUM <= 5000`
	if page != want {
		t.Fatalf("snapshot page:\ngot  %s\nwant %s", page, want)
	}

	// An incremental read after mark (m, 7) before upper bound u.
	w := d.Quote(upd.Name)
	cond := w + " >= " + d.Bind(upd, d.Param(1)) + " AND (" + w + " > " + d.Bind(upd, d.Param(2)) + " OR (" + `"ID" > ` + d.Bind(id, d.Param(3)) + "))" +
		" AND " + w + " < " + d.Bind(upd, d.Param(4))
	inc := d.Limit(sel+` FROM "HR"."PEOPLE" WHERE `+cond+" ORDER BY "+w+`, "ID"`, 5000)
	want = `SELECT * FROM (SELECT "ID", "NAME", TO_CHAR("UPDATED_AT", 'YYYY-MM-DD HH24:MI:SS') ` + a +
		` FROM "HR"."PEOPLE"` +
		` WHERE "UPDATED_AT" >= TO_DATE(:1, 'YYYY-MM-DD HH24:MI:SS') AND ("UPDATED_AT" > TO_DATE(:2, 'YYYY-MM-DD HH24:MI:SS') OR ("ID" > TO_NUMBER(:3)))` +
		` AND "UPDATED_AT" < TO_DATE(:4, 'YYYY-MM-DD HH24:MI:SS')` +
		` ORDER BY "UPDATED_AT", "ID") WHERE ROWNUM <= 5000`
	if inc != want {
		t.Fatalf("incremental read:\ngot  %s\nwant %s", inc, want)
	}
	if strings.Contains(inc, `ORDER BY `+a) || strings.Contains(inc, `TO_CHAR("UPDATED_AT", 'YYYY-MM-DD HH24:MI:SS') "UPDATED_AT"`) {
		t.Fatal("ORDER BY must mean the column, not its text")
	}

	// The sink's delete by key: sqltable names at most 500 keys a
	// statement, under Oracle's 1000 expressions in an IN list.
	var in []string
	for i := 1; i <= 500; i++ {
		in = append(in, d.Bind(id, d.Param(i)))
	}
	del := `DELETE FROM "T" WHERE "ID" IN (` + strings.Join(in, ", ") + ")"
	if !strings.HasSuffix(del, "TO_NUMBER(:499), TO_NUMBER(:500))") {
		t.Fatalf("delete: %s", del[len(del)-60:])
	}
}

func TestDescribeSQL(t *testing.T) {
	cols, _, _, args := describeSQL("PEOPLE")
	if !strings.Contains(cols, "OWNER = SYS_CONTEXT('USERENV', 'CURRENT_SCHEMA') AND TABLE_NAME = :1") || len(args) != 1 || args[0] != "PEOPLE" {
		t.Fatalf("current schema: %s %v", cols, args)
	}
	cols, cons, idx, args := describeSQL("HR.PEOPLE")
	if len(args) != 2 || args[0] != "HR" || args[1] != "PEOPLE" {
		t.Fatalf("args %v", args)
	}
	for _, q := range []string{cols, cons, idx} {
		if !strings.Contains(q, ":1 AND ") || !strings.Contains(q, " = :2") {
			t.Errorf("owner and table are not both bound: %s", q)
		}
	}
	for _, s := range []string{"ALL_TAB_COLUMNS", "DATA_TYPE, DATA_LENGTH, CHAR_LENGTH, DATA_PRECISION, DATA_SCALE, NULLABLE", "ORDER BY COLUMN_ID"} {
		if !strings.Contains(cols, s) {
			t.Errorf("columns query lacks %s", s)
		}
	}
	for _, s := range []string{"ALL_CONSTRAINTS", "ALL_CONS_COLUMNS", "CONSTRAINT_TYPE IN ('P', 'U')", "STATUS = 'ENABLED'", "ORDER BY c.CONSTRAINT_NAME, cc.POSITION"} {
		if !strings.Contains(cons, s) {
			t.Errorf("constraints query lacks %s", s)
		}
	}
	for _, s := range []string{"ALL_INDEXES", "ALL_IND_COLUMNS", "UNIQUENESS", "COLUMN_POSITION", "ORDER BY i.INDEX_NAME, ic.COLUMN_POSITION"} {
		if !strings.Contains(idx, s) {
			t.Errorf("indexes query lacks %s", s)
		}
	}
}

func n(v int64) sql.NullInt64 { return sql.NullInt64{Int64: v, Valid: true} }

var null sql.NullInt64

// TestLogical maps ALL_TAB_COLUMNS rows of every Oracle type.
func TestLogical(t *testing.T) {
	for _, c := range []struct {
		row    columnRow
		want   batch.Column
		native string
	}{
		{columnRow{DataType: "NUMBER", Precision: n(10), Scale: n(0), Nullable: "N"}, batch.Column{Type: batch.TypeInt}, "NUMBER(10)"},
		{columnRow{DataType: "NUMBER", Precision: n(18), Scale: n(0)}, batch.Column{Type: batch.TypeInt}, "NUMBER(18)"},
		{columnRow{DataType: "NUMBER", Precision: n(19), Scale: n(0)}, batch.Column{Type: batch.TypeDecimal, Precision: 19}, "NUMBER(19)"},
		{columnRow{DataType: "NUMBER", Precision: n(38), Scale: n(10)}, batch.Column{Type: batch.TypeDecimal, Precision: 38, Scale: 10}, "NUMBER(38,10)"},
		{columnRow{DataType: "NUMBER", Precision: n(12), Scale: n(2)}, batch.Column{Type: batch.TypeDecimal, Precision: 12, Scale: 2}, "NUMBER(12,2)"},
		{columnRow{DataType: "NUMBER", Precision: null, Scale: null}, batch.Column{Type: batch.TypeDecimal}, "NUMBER"},
		{columnRow{DataType: "NUMBER", Precision: null, Scale: n(0)}, batch.Column{Type: batch.TypeDecimal, Precision: 38}, "NUMBER(*,0)"}, // INTEGER
		{columnRow{DataType: "NUMBER", Precision: n(5), Scale: n(-2)}, batch.Column{Type: batch.TypeInt}, "NUMBER(5,-2)"},
		{columnRow{DataType: "NUMBER", Precision: n(3), Scale: n(5)}, batch.Column{Type: batch.TypeDecimal, Precision: 5, Scale: 5}, "NUMBER(3,5)"},
		{columnRow{DataType: "FLOAT", Precision: n(126)}, batch.Column{Type: batch.TypeDecimal}, "FLOAT(126)"},
		{columnRow{DataType: "BINARY_FLOAT"}, batch.Column{Type: batch.TypeFloat}, "BINARY_FLOAT"},
		{columnRow{DataType: "BINARY_DOUBLE"}, batch.Column{Type: batch.TypeDouble}, "BINARY_DOUBLE"},
		{columnRow{DataType: "VARCHAR2", DataLength: n(200), CharLength: n(50)}, batch.Column{Type: batch.TypeString, Length: 50}, "VARCHAR2(50)"},
		{columnRow{DataType: "NVARCHAR2", DataLength: n(100), CharLength: n(50)}, batch.Column{Type: batch.TypeString, Length: 50}, "NVARCHAR2(50)"},
		{columnRow{DataType: "CHAR", DataLength: n(4), CharLength: n(4)}, batch.Column{Type: batch.TypeString, Length: 4}, "CHAR(4)"},
		{columnRow{DataType: "NCHAR", DataLength: n(8), CharLength: n(4)}, batch.Column{Type: batch.TypeString, Length: 4}, "NCHAR(4)"},
		{columnRow{DataType: "CLOB", DataLength: n(4000)}, batch.Column{Type: batch.TypeText}, "CLOB"},
		{columnRow{DataType: "NCLOB"}, batch.Column{Type: batch.TypeText}, "NCLOB"},
		{columnRow{DataType: "LONG"}, batch.Column{Type: batch.TypeText}, "LONG"},
		{columnRow{DataType: "RAW", DataLength: n(16)}, batch.Column{Type: batch.TypeBinary, Length: 16}, "RAW(16)"},
		{columnRow{DataType: "BLOB"}, batch.Column{Type: batch.TypeBlob}, "BLOB"},
		{columnRow{DataType: "LONG RAW"}, batch.Column{Type: batch.TypeBlob}, "LONG RAW"},
		{columnRow{DataType: "DATE", Nullable: "N"}, batch.Column{Type: batch.TypeDatetime}, "DATE"},
		{columnRow{DataType: "TIMESTAMP(6)", Scale: n(6)}, batch.Column{Type: batch.TypeDatetime, Precision: 6}, "TIMESTAMP(6)"},
		{columnRow{DataType: "TIMESTAMP(9)", Scale: n(9)}, batch.Column{Type: batch.TypeDatetime, Precision: 9}, "TIMESTAMP(9)"},
		{columnRow{DataType: "TIMESTAMP(0)", Scale: n(0)}, batch.Column{Type: batch.TypeDatetime}, "TIMESTAMP(0)"},
		{columnRow{DataType: "TIMESTAMP(3) WITH TIME ZONE", Scale: n(3)}, batch.Column{Type: batch.TypeTimestampTZ, Precision: 3}, "TIMESTAMP(3) WITH TIME ZONE"},
		{columnRow{DataType: "TIMESTAMP(6) WITH LOCAL TIME ZONE", Scale: n(6)}, batch.Column{Type: batch.TypeTimestamp, Precision: 6}, "TIMESTAMP(6) WITH LOCAL TIME ZONE"},
		{columnRow{DataType: "XMLTYPE"}, batch.Column{}, "XMLTYPE"},
		{columnRow{DataType: "ROWID"}, batch.Column{}, "ROWID"},
		{columnRow{DataType: "UROWID"}, batch.Column{}, "UROWID"},
		{columnRow{DataType: "INTERVAL DAY(2) TO SECOND(6)"}, batch.Column{}, "INTERVAL DAY(2) TO SECOND(6)"},
		{columnRow{DataType: "INTERVAL YEAR(2) TO MONTH"}, batch.Column{}, "INTERVAL YEAR(2) TO MONTH"},
		{columnRow{DataType: "BFILE"}, batch.Column{}, "BFILE"},
	} {
		t.Run(c.native, func(t *testing.T) {
			c.row.Name = "C"
			if c.row.Nullable == "" {
				c.row.Nullable = "Y"
			}
			c.want.Name, c.want.Nullable = "C", c.row.Nullable == "Y"
			if got := logical(c.row); got != c.want {
				t.Errorf("logical = %+v, want %+v", got, c.want)
			}
			if got := native(c.row); got != c.native {
				t.Errorf("native = %s, want %s", got, c.native)
			}
		})
	}
}

// TestRoundTripTypes checks that what CreateTable makes, read back
// through the dictionary, has the logical type it was made for (the
// dictionary rows are what Oracle reports for those DDL types).
func TestRoundTripTypes(t *testing.T) {
	dict := map[string]columnRow{
		"NUMBER(19)":                        {DataType: "NUMBER", Precision: n(19), Scale: n(0)},
		"NUMBER(38,10)":                     {DataType: "NUMBER", Precision: n(38), Scale: n(10)},
		"NUMBER":                            {DataType: "NUMBER"},
		"BINARY_FLOAT":                      {DataType: "BINARY_FLOAT"},
		"BINARY_DOUBLE":                     {DataType: "BINARY_DOUBLE"},
		"NVARCHAR2(50)":                     {DataType: "NVARCHAR2", CharLength: n(50)},
		"NCLOB":                             {DataType: "NCLOB"},
		"RAW(16)":                           {DataType: "RAW", DataLength: n(16)},
		"BLOB":                              {DataType: "BLOB"},
		"DATE":                              {DataType: "DATE"},
		"TIMESTAMP(6)":                      {DataType: "TIMESTAMP(6)", Scale: n(6)},
		"TIMESTAMP(3) WITH LOCAL TIME ZONE": {DataType: "TIMESTAMP(3) WITH LOCAL TIME ZONE", Scale: n(3)},
		"TIMESTAMP(6) WITH TIME ZONE":       {DataType: "TIMESTAMP(6) WITH TIME ZONE", Scale: n(6)},
	}
	for _, c := range []batch.Column{
		{Type: batch.TypeDecimal, Precision: 38, Scale: 10},
		{Type: batch.TypeDecimal},
		{Type: batch.TypeFloat},
		{Type: batch.TypeDouble},
		{Type: batch.TypeString, Length: 50},
		{Type: batch.TypeText},
		{Type: batch.TypeBinary, Length: 16},
		{Type: batch.TypeBlob},
		{Type: batch.TypeDatetime},
		{Type: batch.TypeDatetime, Precision: 6},
		{Type: batch.TypeTimestamp, Precision: 3},
		{Type: batch.TypeTimestampTZ, Precision: 6},
	} {
		nt, err := nativeType(c, false)
		if err != nil {
			t.Fatal(err)
		}
		row, ok := dict[nt]
		if !ok {
			t.Fatalf("%s(%d) became %s, which this test does not know", c.Type, c.Precision, nt)
		}
		row.Nullable = "Y"
		got := logical(row)
		if got.Type != c.Type || got.Precision != c.Precision || got.Scale != c.Scale || got.Length != c.Length {
			t.Errorf("%+v → %s → %+v", c, nt, got)
		}
	}
}

func TestFromQuery(t *testing.T) {
	for _, c := range []struct {
		in   queryColumn
		want batch.Column
	}{
		{queryColumn{Type: "NCHAR", Length: 50}, batch.Column{Type: batch.TypeString, Length: 50}},
		{queryColumn{Type: "CHAR", Length: 4}, batch.Column{Type: batch.TypeString, Length: 4}},
		{queryColumn{Type: "NUMBER", Precision: 10, Scale: 0}, batch.Column{Type: batch.TypeInt}},
		{queryColumn{Type: "NUMBER", Precision: 38, Scale: 10}, batch.Column{Type: batch.TypeDecimal, Precision: 38, Scale: 10}},
		{queryColumn{Type: "NUMBER", Precision: 38, Scale: 255}, batch.Column{Type: batch.TypeDecimal}},
		{queryColumn{Type: "IBFloat"}, batch.Column{Type: batch.TypeFloat}},
		{queryColumn{Type: "IBDouble"}, batch.Column{Type: batch.TypeDouble}},
		{queryColumn{Type: "DATE"}, batch.Column{Type: batch.TypeDatetime}},
		{queryColumn{Type: "TimeStampDTY"}, batch.Column{Type: batch.TypeDatetime, Precision: 9}},
		{queryColumn{Type: "TimeStampTZ_DTY"}, batch.Column{Type: batch.TypeTimestampTZ, Precision: 9}},
		{queryColumn{Type: "TimeStampLTZ_DTY"}, batch.Column{Type: batch.TypeTimestamp, Precision: 9}},
		{queryColumn{Type: "OCIClobLocator"}, batch.Column{Type: batch.TypeText}},
		{queryColumn{Type: "LONG"}, batch.Column{Type: batch.TypeText}},
		{queryColumn{Type: "RAW"}, batch.Column{Type: batch.TypeBinary, Length: 2000}},
		{queryColumn{Type: "OCIBlobLocator"}, batch.Column{Type: batch.TypeBlob}},
		{queryColumn{Type: "LongRaw"}, batch.Column{Type: batch.TypeBlob}},
		{queryColumn{Type: "ROWID"}, batch.Column{}},
		{queryColumn{Type: "IntervalDS_DTY"}, batch.Column{}},
		{queryColumn{Type: "XMLType"}, batch.Column{}},
	} {
		c.in.Name, c.want.Name = "C", "C"
		if got := fromQuery(c.in); got != c.want {
			t.Errorf("%s(%d,%d): got %+v, want %+v", c.in.Type, c.in.Precision, c.in.Scale, got, c.want)
		}
	}
}

func TestNowSQL(t *testing.T) {
	lag := 5*time.Second + 250*time.Millisecond
	for _, c := range []struct {
		name string
		c    batch.Column
		zone string
		want string
		args []any
	}{
		{"date wall clock", col("W", batch.TypeDatetime, 0), "",
			"SELECT TO_CHAR(CAST(SYSTIMESTAMP AS TIMESTAMP(9)) - NUMTODSINTERVAL(:1 / 1000000, 'SECOND'), 'YYYY-MM-DD HH24:MI:SS') FROM DUAL",
			[]any{int64(5250000)}},
		{"timestamp wall clock", col("W", batch.TypeDatetime, 6), "",
			"SELECT TO_CHAR(CAST(SYSTIMESTAMP AS TIMESTAMP(9)) - NUMTODSINTERVAL(:1 / 1000000, 'SECOND'), 'YYYY-MM-DD HH24:MI:SS.FF6') FROM DUAL",
			[]any{int64(5250000)}},
		{"wall clock in a zone", col("W", batch.TypeDatetime, 3), "+08:00",
			"SELECT TO_CHAR(CAST(SYSTIMESTAMP AT TIME ZONE :1 AS TIMESTAMP(9)) - NUMTODSINTERVAL(:2 / 1000000, 'SECOND'), 'YYYY-MM-DD HH24:MI:SS.FF3') FROM DUAL",
			[]any{"+08:00", int64(5250000)}},
		{"instant", col("W", batch.TypeTimestamp, 6), "+08:00",
			"SELECT TO_CHAR(SYS_EXTRACT_UTC(SYSTIMESTAMP) - NUMTODSINTERVAL(:1 / 1000000, 'SECOND'), 'YYYY-MM-DD HH24:MI:SS.FF6') FROM DUAL",
			[]any{int64(5250000)}},
		{"date", col("W", batch.TypeDate, 0), "",
			"SELECT TO_CHAR(CAST(SYSTIMESTAMP AS TIMESTAMP(9)) - NUMTODSINTERVAL(:1 / 1000000, 'SECOND'), 'YYYY-MM-DD') FROM DUAL",
			[]any{int64(5250000)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			q, args := nowSQL(c.c, lag, c.zone)
			if q != c.want || fmt.Sprint(args) != fmt.Sprint(c.args) {
				t.Fatalf("got  %s %v\nwant %s %v", q, args, c.want, c.args)
			}
		})
	}
}

func TestSnapshot(t *testing.T) {
	sn, err := d.Snapshot(t.Context(), nil, "48151623")
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if sn.Token() != "48151623" {
		t.Fatalf("token %q", sn.Token())
	}
	if got := sn.From(`"HR"."T"`); got != `"HR"."T" AS OF SCN 48151623` {
		t.Fatalf("from %s", got)
	}
	if got := sn.From("(SELECT 1 FROM DUAL) qz_q"); got != "(SELECT 1 FROM DUAL) qz_q" {
		t.Fatalf("a query takes no AS OF: %s", got)
	}
	for _, bad := range []string{"1 OR 1=1", "-5", "12.5", "123456789012345678901"} {
		if _, err := d.Snapshot(t.Context(), nil, bad); err == nil {
			t.Errorf("token %q accepted", bad)
		}
	}
}

func TestTooOld(t *testing.T) {
	for _, code := range []int{1555, 8181} {
		err := tooOld(fmt.Errorf("query: %w", &network.OracleError{ErrCode: code, ErrMsg: fmt.Sprintf("ORA-%05d", code)}))
		if !errors.Is(err, ErrSnapshotTooOld) || !strings.Contains(err.Error(), "undo_retention") || !strings.Contains(err.Error(), fmt.Sprintf("ORA-%05d", code)) {
			t.Errorf("ORA-%05d: %v", code, err)
		}
		var oe *network.OracleError
		if !errors.As(err, &oe) {
			t.Errorf("the driver error is not wrapped: %v", err)
		}
	}
	other := &network.OracleError{ErrCode: 942, ErrMsg: "ORA-00942"}
	if err := tooOld(other); err != other || tooOld(nil) != nil {
		t.Errorf("other errors must pass unchanged: %v", err)
	}
}

func TestBindArg(t *testing.T) {
	small, big := strings.Repeat("张", 1333), strings.Repeat("张", 1334) // 3999 and 4002 bytes
	if v := bindArg(small); v != small {
		t.Errorf("a string that fits a VARCHAR2 bind changed to %T", v)
	}
	if v, ok := bindArg(big).(go_ora.NClob); !ok || !v.Valid || v.String != big {
		t.Errorf("a string over 4000 bytes must go as NCLOB, got %T", bindArg(big))
	}
	raw, blob := make([]byte, 2000), make([]byte, 2001)
	if v, ok := bindArg(raw).([]byte); !ok || len(v) != 2000 {
		t.Errorf("bytes that fit a RAW bind changed to %T", bindArg(raw))
	}
	if v, ok := bindArg(blob).(go_ora.Blob); !ok || len(v.Data) != 2001 {
		t.Errorf("bytes over 2000 must go as BLOB, got %T", bindArg(blob))
	}
	for _, v := range []any{nil, int64(5), "x"} {
		if bindArg(v) != v {
			t.Errorf("%v changed", v)
		}
	}
	nv := driver.NamedValue{Ordinal: 1, Value: big}
	if err := (&conn{}).CheckNamedValue(&nv); err != nil {
		t.Fatal(err)
	}
	if _, ok := nv.Value.(go_ora.NClob); !ok {
		t.Errorf("CheckNamedValue left a %T", nv.Value)
	}
}

// TestDriverNumberIsExact guards the choice to read NUMBER as it is: go-ora
// turns NUMBER bytes into text with Number.String, which must be exact
// over NUMBER's range. A driver upgrade that broke this would fail here
// (and one returning float64 would fail loudly in sqltable.ToText).
func TestDriverNumberIsExact(t *testing.T) {
	for _, s := range []string{
		"0", "1", "-1", "0.5", "-0.5", "100", "123456789012345678",
		"9223372036854775807", "-9223372036854775808",
		"9999999999999999999999999999.9999999999", "-9999999999999999999999999999.9999999999",
		"0.0000000001", "12345678901234567890123456789012345678",
		"0.0000000000000000000000000000000000000000000000000123",
		"1" + strings.Repeat("0", 125),
	} {
		num, err := go_ora.NewNumberFromString(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		got, err := num.String()
		if err != nil || got != s {
			t.Errorf("NUMBER %s reads back as %q (%v)", s, got, err)
		}
		b, err := sqltable.ToText(&batch.Column{Name: "N", Type: batch.TypeDecimal}, got)
		if err != nil || string(b) != s {
			t.Errorf("ToText(%s) = %s, %v", s, b, err)
		}
	}
}

// oracleDoubleBytes encodes x as Oracle stores BINARY_DOUBLE: the
// sign bit set for positive numbers, every bit inverted for negative ones.
func oracleDoubleBytes(x float64) []byte {
	u := math.Float64bits(x)
	if x >= 0 {
		u |= 1 << 63
	} else {
		u = ^u
	}
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, u)
	return b
}

// TestBinaryFloatReadWidened checks the path Select gives BINARY_FLOAT:
// CAST to BINARY_DOUBLE (exact), decoded by go-ora, written by ToText as
// the shortest float32 text.
func TestBinaryFloatReadWidened(t *testing.T) {
	c := &batch.Column{Name: "F", Type: batch.TypeFloat}
	for _, want := range []string{"0.7", "-0.7", "0.1", "1.5e-10", "3.4028235e+38", "123.456", "1e-45", "1.6777216e+07"} {
		var f float32
		fmt.Sscan(want, &f)
		got, err := sqltable.ToText(c, converters.ConvertBinaryDouble(oracleDoubleBytes(float64(f))))
		if err != nil || string(got) != want {
			t.Errorf("BINARY_FLOAT %s read as %s (%v)", want, got, err)
		}
	}
}

func TestAppliedTableDefault(t *testing.T) {
	k, err := connectors.Lookup(Kind)
	if err != nil {
		t.Fatal(err)
	}
	if c := k.SinkConf().(*sqltable.SinkConfig); c.AppliedTable != "QZ_APPLIED" {
		t.Fatalf("applied table %q, want QZ_APPLIED", c.AppliedTable)
	}
}
