package mysql_test

import (
	"context"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/connectors/mysql"
	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/internal/mariadbtest"
	"github.com/qianzhi/qianzhi/pkg/api"
)

// TestCall answers a call from MariaDB: dates, times and decimals in
// canonical text, NULL as nil, at most max rows, and SQL given as a
// parameter value matching nothing.
func TestCall(t *testing.T) {
	srv := mariadbtest.Get(t)
	name := srv.NewDatabase(t)
	db := srv.Open(t, name)
	exec(t, db,
		`CREATE TABLE people (id_no CHAR(18) PRIMARY KEY, name VARCHAR(40), birth DATE, seen DATETIME(3),
			stamp TIMESTAMP NULL, income DECIMAL(12,2), ratio DOUBLE, score FLOAT, note TEXT, city VARCHAR(20), age INT UNSIGNED)`,
		`INSERT INTO people VALUES ('11010519491231002X', '张三', '1949-12-31', '2024-05-06 07:08:09.120', '2024-05-06 07:08:09', 1234.5, 0.1, 1.5, NULL, 'Beijing', 75)`,
		`INSERT INTO people VALUES ('110101199003078515', '李四', '1990-03-07', '2024-01-01 00:00:00', NULL, -0.5, 2, 0.25, 'x', 'Beijing', 34)`,
	)
	k, _ := connectors.Lookup(mysql.Kind)
	sc := k.SourceConf().(*sqltable.SourceConfig)
	sc.ID, sc.DSN, sc.Table, sc.Strategy = "dept-a.people", srv.DSN(name), "people", sqltable.StrategySnapshot
	s, err := sc.OpenSource(quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	src, ok := s.(connectors.Caller)
	if !ok {
		t.Fatalf("a %T source does not answer calls", s)
	}
	fields := []string{"name", "birth", "seen", "stamp", "income", "ratio", "score", "note", "age"}
	byID := &connectors.CallDef{CallDecl: api.CallDecl{Name: "by_id", Fields: fields,
		Params: []api.CallParam{{Name: "id_no", Type: api.ParamCitizenID}}},
		Query: "SELECT * FROM people WHERE id_no = :id_no"}
	rows, err := src.Call(context.Background(), byID, map[string]string{"id_no": "11010519491231002X"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := "张三|1949-12-31|2024-05-06 07:08:09.120|2024-05-06 07:08:09|1234.50|0.1|1.5|<nil>|75"
	if len(rows) != 1 || show(rows[0]) != want {
		t.Fatalf("got %d rows: %v, want %s", len(rows), showAll(rows), want)
	}
	byCity := &connectors.CallDef{CallDecl: api.CallDecl{Name: "by_city", Fields: []string{"id_no"},
		Params: []api.CallParam{{Name: "city", Type: api.ParamString}, {Name: "age", Type: api.ParamInt}}},
		Query: "SELECT id_no FROM people WHERE city = :city AND age > :age ORDER BY id_no"}
	rows, err = src.Call(context.Background(), byCity, map[string]string{"city": "Beijing", "age": "0"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || show(rows[0]) != "110101199003078515" {
		t.Fatalf("max 1: got %v", showAll(rows))
	}
	for _, v := range []string{`' OR '1'='1`, `Beijing'; DROP TABLE people; --`, `1; DROP TABLE people`} {
		rows, err := src.Call(context.Background(), byCity, map[string]string{"city": v, "age": "0"}, 10)
		if err != nil || len(rows) != 0 {
			t.Fatalf("%q: %d rows, %v", v, len(rows), err)
		}
	}
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM people").Scan(&n); err != nil || n != 2 {
		t.Fatalf("people has %d rows (%v), want 2", n, err)
	}
}

func show(row [][]byte) string {
	var s []string
	for _, v := range row {
		if v == nil {
			s = append(s, "<nil>")
		} else {
			s = append(s, string(v))
		}
	}
	return strings.Join(s, "|")
}

func showAll(rows [][][]byte) []string {
	var out []string
	for _, r := range rows {
		out = append(out, show(r))
	}
	return out
}
