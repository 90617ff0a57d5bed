package sqltable_test

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/sqlite"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/api"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// callSource opens a sqlite source over a people table and returns it as
// a Caller, with the database to check on.
func callSource(t *testing.T) (connectors.Caller, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "people.db")
	db, err := sqlite.Dialect{}.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{
		`CREATE TABLE people (id_no VARCHAR(18) PRIMARY KEY, name TEXT, birth DATE, income DECIMAL(10,2), note TEXT, age INTEGER, city TEXT)`,
		`INSERT INTO people VALUES ('11010519491231002X', '张三', '1949-12-31', 1234.5, NULL, 75, 'Beijing')`,
		`INSERT INTO people VALUES ('110101199003078515', '李四', '1990-03-07', 100, 'x', 34, 'Beijing')`,
		`INSERT INTO people VALUES ('310101198001010012', '王五', '1980-01-01', 0.25, 'y', 44, 'Beijing')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	c := sqltable.NewSourceConfig(sqlite.Dialect{})
	c.ID, c.DSN, c.Table, c.Strategy = "dept-a.people", path, "people", sqltable.StrategySnapshot
	src, err := c.OpenSource(quietLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	caller, ok := src.(connectors.Caller)
	if !ok {
		t.Fatalf("a %T source does not answer calls", src)
	}
	return caller, db
}

func callDef(name, query string, fields []string, params ...api.CallParam) *connectors.CallDef {
	return &connectors.CallDef{CallDecl: api.CallDecl{Name: name, Params: params, Fields: fields}, Query: query}
}

// texts shows rows as strings, NULL as <nil>.
func texts(rows [][][]byte) [][]string {
	var out [][]string
	for _, r := range rows {
		var s []string
		for _, v := range r {
			if v == nil {
				s = append(s, "<nil>")
			} else {
				s = append(s, string(v))
			}
		}
		out = append(out, s)
	}
	return out
}

// TestCall answers calls from a SQLite table: values in canonical text
// (dates, decimals at their scale), NULL as nil, columns matched to fields
// ignoring case, at most max rows, an int parameter bound as a number.
func TestCall(t *testing.T) {
	src, _ := callSource(t)
	idParam := api.CallParam{Name: "id_no", Type: api.ParamCitizenID}
	byID := callDef("by_id", `SELECT ID_NO, Name, birth, income, note FROM people WHERE id_no = :id_no`,
		[]string{"name", "birth", "income", "note", "id_no"}, idParam)
	byCity := callDef("by_city", `SELECT id_no, age FROM people WHERE city = :city AND age >= :age ORDER BY id_no`,
		[]string{"id_no", "age"}, api.CallParam{Name: "city", Type: api.ParamString}, api.CallParam{Name: "age", Type: api.ParamInt})
	for _, tc := range []struct {
		name   string
		def    *connectors.CallDef
		params map[string]string
		max    int
		want   string
	}{
		{"row with NULL", byID, map[string]string{"id_no": "11010519491231002X"}, 10, "[[张三 1949-12-31 1234.50 <nil> 11010519491231002X]]"},
		{"integer decimal", byID, map[string]string{"id_no": "110101199003078515"}, 10, "[[李四 1990-03-07 100.00 x 110101199003078515]]"},
		{"not found", byID, map[string]string{"id_no": "110101199003070000"}, 10, "[]"},
		{"all rows", byCity, map[string]string{"city": "Beijing", "age": "30"}, 10, "[[110101199003078515 34] [11010519491231002X 75] [310101198001010012 44]]"},
		{"max honoured", byCity, map[string]string{"city": "Beijing", "age": "30"}, 2, "[[110101199003078515 34] [11010519491231002X 75]]"},
		{"int parameter compares as a number", byCity, map[string]string{"city": "Beijing", "age": "40"}, 10, "[[11010519491231002X 75] [310101198001010012 44]]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := src.Call(context.Background(), tc.def, tc.params, tc.max)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.ReplaceAll(fmtRows(texts(rows)), "\n", ""); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func fmtRows(rows [][]string) string {
	var b strings.Builder
	b.WriteString("[")
	for i, r := range rows {
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString("[" + strings.Join(r, " ") + "]")
	}
	return b.String() + "]"
}

// TestCallMissingField names the field the query does not return and what
// it does return.
func TestCallMissingField(t *testing.T) {
	src, _ := callSource(t)
	def := callDef("by_id", `SELECT id_no, name FROM people WHERE id_no = :id_no`, []string{"name", "phone"},
		api.CallParam{Name: "id_no", Type: api.ParamCitizenID})
	_, err := src.Call(context.Background(), def, map[string]string{"id_no": "11010519491231002X"}, 10)
	if err == nil || !strings.Contains(err.Error(), "call by_id: its query returns no column phone (it returns: id_no, name)") {
		t.Fatalf("err = %v", err)
	}
}

// TestCallInjection gives SQL as parameter values: they are bound, so they
// match nothing and change nothing.
func TestCallInjection(t *testing.T) {
	src, db := callSource(t)
	def := callDef("by_name", `SELECT id_no FROM people WHERE name = :name`, []string{"id_no"},
		api.CallParam{Name: "name", Type: api.ParamString})
	byAge := callDef("by_age", `SELECT id_no FROM people WHERE age = :age`, []string{"id_no"},
		api.CallParam{Name: "age", Type: api.ParamString})
	for _, tc := range []struct {
		def *connectors.CallDef
		v   string
	}{
		{def, `' OR '1'='1`},
		{def, `张三' OR 1=1 --`},
		{def, `1; DROP TABLE people`},
		{def, `'; DROP TABLE people; --`},
		{byAge, `75 OR 1=1`},
		{byAge, `1; DROP TABLE people`},
	} {
		rows, err := src.Call(context.Background(), tc.def, map[string]string{tc.def.Params[0].Name: tc.v}, 10)
		if err != nil {
			t.Fatalf("%q: %v", tc.v, err)
		}
		if len(rows) != 0 {
			t.Errorf("%q matched %d rows", tc.v, len(rows))
		}
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM people`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("people has %d rows (%v), want 3", n, err)
	}
}

// TestCallQueryChanges compiles a call again when a reload changes its
// query.
func TestCallQueryChanges(t *testing.T) {
	src, _ := callSource(t)
	p := api.CallParam{Name: "id_no", Type: api.ParamCitizenID}
	def := callDef("by_id", `SELECT name AS v FROM people WHERE id_no = :id_no`, []string{"v"}, p)
	params := map[string]string{"id_no": "110101199003078515"}
	first, err := src.Call(context.Background(), def, params, 1)
	if err != nil {
		t.Fatal(err)
	}
	def = callDef("by_id", `SELECT note AS v FROM people WHERE id_no = :id_no`, []string{"v"}, p)
	second, err := src.Call(context.Background(), def, params, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmtRows(append(texts(first), texts(second)...)); got != "[[李四] [x]]" {
		t.Fatalf("got %s", got)
	}
}
