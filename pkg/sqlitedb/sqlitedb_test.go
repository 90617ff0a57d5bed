package sqlitedb

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var testSchema = func() []string {
	var s []string
	for i := range 30 {
		s = append(s, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS t%d (id INTEGER PRIMARY KEY, v TEXT)`, i))
	}
	return s
}()

// TestMain lets the test binary act as a second process opening the
// database (QZ_SQLITEDB_OPEN names it).
func TestMain(m *testing.M) {
	if path := os.Getenv("QZ_SQLITEDB_OPEN"); path != "" {
		db, err := Open(path, testSchema)
		if err == nil {
			_, err = db.Exec(`INSERT INTO t29 (v) VALUES ('x')`)
			db.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestOpenConcurrent opens one new database from several processes at
// once, as a daemon and an admin command do when both start on a fresh
// state folder: every one of them must get a usable database, none a
// "database is locked".
func TestOpenConcurrent(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for round := range 60 {
		path := filepath.Join(t.TempDir(), "state.db")
		var wg sync.WaitGroup
		var mu sync.Mutex
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(exe, "-test.run=^$")
				cmd.Env = append(os.Environ(), "QZ_SQLITEDB_OPEN="+path)
				out, err := cmd.CombinedOutput()
				if err != nil {
					mu.Lock()
					t.Errorf("round %d: %v: %s", round, err, strings.TrimSpace(string(out)))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
}
