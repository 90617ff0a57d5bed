package mariadbtest_test

import (
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/qianzhi/qianzhi/internal/mariadbtest"
)

func TestMain(m *testing.M) { mariadbtest.Main(m) }

func TestRoundTrip(t *testing.T) {
	srv := mariadbtest.Get(t)
	name := srv.NewDatabase(t)
	db := srv.Open(t, name)

	var cs, coll, tz string
	if err := db.QueryRow("SELECT @@character_set_database, @@collation_database, @@session.time_zone").Scan(&cs, &coll, &tz); err != nil {
		t.Fatal(err)
	}
	if cs != "utf8mb4" || !strings.HasPrefix(coll, "utf8mb4_") || tz != "+00:00" {
		t.Errorf("database %s: charset %q, collation %q, time_zone %q; want utf8mb4, utf8mb4_*, +00:00", name, cs, coll, tz)
	}

	if _, err := db.Exec(`CREATE TABLE t (
		id INT PRIMARY KEY,
		name VARCHAR(100) NOT NULL,
		at DATETIME(6) NOT NULL
	)`); err != nil {
		t.Fatal(err)
	}
	const (
		text = "千支 数据迁移 🚚 ok" // 3- and 4-byte UTF-8
		at   = "2024-02-29 23:59:59.123456"
	)
	if _, err := db.Exec("INSERT INTO t (id, name, at) VALUES (?, ?, ?)", 1, text, at); err != nil {
		t.Fatal(err)
	}
	var gotName, gotAt string
	if err := db.QueryRow("SELECT name, at FROM t WHERE id = ?", 1).Scan(&gotName, &gotAt); err != nil {
		t.Fatal(err)
	}
	if gotName != text || gotAt != at {
		t.Errorf("read back (%q, %q), want (%q, %q)", gotName, gotAt, text, at)
	}
}

func TestWrongPasswordIsDenied(t *testing.T) {
	srv := mariadbtest.Get(t)
	name := srv.NewDatabase(t)
	cfg := srv.Config(name)
	cfg.Passwd += "-wrong"

	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Ping()
	var myErr *mysql.MySQLError
	if !errors.As(err, &myErr) || myErr.Number != 1045 {
		t.Fatalf("ping with a wrong password: %v; want MySQL error 1045 (access denied)", err)
	}
}

// TestDatabasesAreSeparate checks that two databases of one test do not share
// tables, so tests can run in parallel on the shared server.
func TestDatabasesAreSeparate(t *testing.T) {
	srv := mariadbtest.Get(t)
	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	if a == b {
		t.Fatalf("NewDatabase returned %s twice", a)
	}
	if _, err := srv.Open(t, a).Exec("CREATE TABLE only_in_a (id INT)"); err != nil {
		t.Fatal(err)
	}
	_, err := srv.Open(t, b).Exec("SELECT * FROM only_in_a")
	var myErr *mysql.MySQLError
	if !errors.As(err, &myErr) || myErr.Number != 1146 {
		t.Fatalf("reading a's table from b: %v; want MySQL error 1146 (no such table)", err)
	}
}
