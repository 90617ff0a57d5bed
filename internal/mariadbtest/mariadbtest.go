// Package mariadbtest gives tests a real MariaDB server: one throwaway
// mariadbd per test binary, listening on 127.0.0.1 only, with its data in a
// temporary folder that is removed when the tests end.
//
// A package that uses it routes its TestMain through Main, so the server is
// stopped after the last test, and asks for the server in each test with Get:
//
//	func TestMain(m *testing.M) { mariadbtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		srv := mariadbtest.Get(t)
//		db := srv.Open(t, srv.NewDatabase(t))
//		…
//	}
//
// The server starts on the first Get, so test binaries (or -run selections)
// that never ask for it pay nothing. Start-up initialises a fresh datadir with
// mariadb-install-db and takes about a second.
//
// The server has a user "qz"@"127.0.0.1" with a random password and all
// privileges; tests connect as that user over TCP with a password, as the
// product does. Its defaults are utf8mb4 with utf8mb4_unicode_ci,
// max_allowed_packet=64M, local_infile=1, no binary log, and the default
// (durable) innodb_flush_log_at_trx_commit=1.
//
// Environment:
//
//   - QZ_TEST_MYSQL_DSN: a go-sql-driver/mysql DSN of an existing server to use
//     instead of starting one. Its user needs the right to create and drop
//     databases; tests get fresh databases named qzt_….
//   - QZ_REQUIRE_MARIADB=1: when mariadbd is not installed, fail the tests
//     that need it instead of skipping them. make test sets it, so a machine
//     without MariaDB never passes by skipping.
//
// In -short mode (make test-unit) the tests that call Get are skipped.
//
// mariadbd is started with a parent-death signal (Linux), so it is killed
// even when the test binary is killed; the temporary folders of binaries that
// died that way are removed by the next start.
package mariadbtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Environment variables read by this package; see the package comment.
const (
	EnvDSN     = "QZ_TEST_MYSQL_DSN"
	EnvRequire = "QZ_REQUIRE_MARIADB"
)

const (
	// User is the account tests connect as on a server started here.
	User = "qz"

	charset   = "utf8mb4"
	collation = "utf8mb4_unicode_ci"

	dirPrefix    = "qz-mariadbtest-"
	ownerFile    = "owner.pid"
	startTimeout = 60 * time.Second
	stopTimeout  = 10 * time.Second
)

// Server is a running throwaway MariaDB, or the external server named by
// QZ_TEST_MYSQL_DSN. It is shared by every test of the binary: give each test
// its own database with NewDatabase.
type Server struct {
	// Addr is the host:port tests connect to (127.0.0.1:port when started here).
	Addr string
	// User and Password are the credentials of an account with all privileges.
	User, Password string
	// Dir is the temporary folder holding the datadir (data/), the error log
	// (error.log) and the socket (mysqld.sock; root can log in there without a
	// password: mariadb -S Dir/mysqld.sock -u root). It is empty for an
	// external server.
	Dir string

	base  *mysql.Config // DSN settings without a database
	admin *sql.DB       // for creating and dropping databases
	proc  *process      // nil for an external server
}

// shared is the server of this test binary, set up by the first Get.
var shared struct {
	mainCalled atomic.Bool
	once       sync.Once
	srv        *Server
	skip       string // why MariaDB is unavailable, when it is
	err        error  // why starting it failed, when it did
}

// Main runs the tests of m, stops the server if a test started it, and exits
// with the tests' status. Call it from TestMain:
//
//	func TestMain(m *testing.M) { mariadbtest.Main(m) }
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain with more to do after the tests: it runs
// them, stops the server and returns the exit code.
func Run(m *testing.M) int {
	shared.mainCalled.Store(true)
	code := m.Run()
	// m.Run has returned, so no test can be inside Get any more.
	if srv := shared.srv; srv != nil {
		if err := srv.close(); err != nil {
			fmt.Fprintf(os.Stderr, "mariadbtest: stop server: %v\n", err)
		}
	}
	return code
}

// Get returns the shared server, starting it on the first call. When MariaDB
// is not installed it skips the test with the reason (or fails it when
// QZ_REQUIRE_MARIADB=1); when the server cannot be started, or has died, it
// fails the test with the tail of the server's log.
func Get(t testing.TB) *Server {
	t.Helper()
	if !shared.mainCalled.Load() {
		t.Fatal("mariadbtest: the package's TestMain must call mariadbtest.Main(m), which stops the server")
	}
	if testing.Short() {
		t.Skip("mariadbtest: tests that need MariaDB do not run in -short mode")
	}
	shared.once.Do(func() {
		shared.srv, shared.skip, shared.err = setup()
	})
	switch {
	case shared.skip != "" && os.Getenv(EnvRequire) == "1":
		t.Fatalf("mariadbtest: %s (%s=1, so this is a failure, not a skip)", shared.skip, EnvRequire)
	case shared.skip != "":
		t.Skip("mariadbtest: " + shared.skip)
	case shared.err != nil:
		t.Fatalf("mariadbtest: %v", shared.err)
	}
	if p := shared.srv.proc; p != nil {
		select {
		case <-p.exited:
			t.Fatalf("mariadbtest: mariadbd exited during the tests (%v); its log ends with:\n%s", p.waitErr, shared.srv.logTail())
		default:
		}
	}
	return shared.srv
}

// Config returns the driver settings for database db (empty for none): TCP
// with the server's credentials, charset utf8mb4, loc UTC, parseTime off,
// multiStatements off and the session variable time_zone='+00:00'. The
// result is a copy that the caller may change, for instance to a wrong
// password for a negative test, and turn into a DSN with FormatDSN.
func (s *Server) Config(db string) *mysql.Config {
	c := s.base.Clone()
	c.DBName = db
	return c
}

// DSN returns a go-sql-driver/mysql DSN for database db with the settings
// described at Config.
func (s *Server) DSN(db string) string {
	return s.Config(db).FormatDSN()
}

// Open returns a pool for database db that is closed when the test ends. It
// fails the test if the server does not answer.
func (s *Server) Open(t testing.TB, db string) *sql.DB {
	t.Helper()
	pool, err := sql.Open("mysql", s.DSN(db))
	if err != nil {
		t.Fatalf("mariadbtest: open %q: %v", db, err)
	}
	t.Cleanup(func() { pool.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pool.PingContext(ctx); err != nil {
		t.Fatalf("mariadbtest: connect to %q: %v", db, err)
	}
	return pool
}

// NewDatabase creates an empty database (utf8mb4) with a name unique to this
// call, derived from the test's name, and drops it when the test ends. Close
// the test's connections first: Open's cleanup does, as it runs before this
// one.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := databaseName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q := fmt.Sprintf("CREATE DATABASE `%s` CHARACTER SET %s COLLATE %s", name, charset, collation)
	if _, err := s.admin.ExecContext(ctx, q); err != nil {
		t.Fatalf("mariadbtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := s.dropDatabase(name); err != nil {
			t.Errorf("mariadbtest: drop database %s (does the test still hold a transaction or lock?): %v", name, err)
		}
	})
	return name
}

func (s *Server) dropDatabase(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := s.admin.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	// A test that leaks an open transaction would otherwise make DROP wait
	// for its metadata lock for a year (the default).
	if _, err := conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 10"); err != nil {
		return err
	}
	_, err = conn.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+name+"`")
	return err
}

// databaseName makes a database name from a test name: qzt_, the test name
// reduced to [a-z0-9_] and shortened, and a random suffix, within MariaDB's
// 64-character limit.
func databaseName(test string) string {
	var b strings.Builder
	b.WriteString("qzt_")
	for _, r := range strings.ToLower(test) {
		if b.Len() >= 44 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteByte('_')
	b.WriteString(randomHex(4))
	return b.String()
}

func randomHex(n int) string {
	buf := make([]byte, n)
	rand.Read(buf) // never fails (crypto/rand)
	return hex.EncodeToString(buf)
}

// setup finds or starts the server. It returns a reason to skip when MariaDB
// is not installed, and an error when it is but cannot be used.
func setup() (srv *Server, skip string, err error) {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		srv, err := external(dsn)
		if err != nil {
			return nil, "", fmt.Errorf("use %s: %w", EnvDSN, err)
		}
		return srv, "", nil
	}
	mariadbd := findBinary("mariadbd", "/usr/sbin/mariadbd")
	if mariadbd == "" {
		return nil, "mariadbd not found (neither on PATH nor /usr/sbin/mariadbd): run make test, which installs mariadb-server, or set " + EnvDSN, nil
	}
	installDB := findBinary("mariadb-install-db", "/usr/bin/mariadb-install-db")
	if installDB == "" {
		return nil, "mariadb-install-db not found (neither on PATH nor /usr/bin/mariadb-install-db): run make test, which installs mariadb-server, or set " + EnvDSN, nil
	}
	srv, err = start(mariadbd, installDB)
	if err != nil {
		return nil, "", err
	}
	return srv, "", nil
}

func findBinary(name, fallback string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if st, err := os.Stat(fallback); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
		return fallback
	}
	return ""
}

// external connects to the server of an existing DSN, keeping its address,
// credentials and TLS settings and replacing the rest with this package's.
func external(dsn string) (*Server, error) {
	given, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DSN: %w", err)
	}
	base := baseConfig(given.User, given.Passwd, given.Addr)
	base.Net = given.Net
	base.TLSConfig, base.TLS = given.TLSConfig, given.TLS
	s := &Server{Addr: given.Addr, User: given.User, Password: given.Passwd, base: base}
	if err := s.openAdmin(); err != nil {
		return nil, err
	}
	return s, nil
}

func baseConfig(user, password, addr string) *mysql.Config {
	c := mysql.NewConfig()
	c.User, c.Passwd = user, password
	c.Net, c.Addr = "tcp", addr
	c.Loc = time.UTC
	c.ParseTime = false
	c.MultiStatements = false
	c.Timeout = 10 * time.Second
	c.Params = map[string]string{"time_zone": "'+00:00'"}
	c.Apply(mysql.Charset(charset, "")) // never fails
	return c
}

func (s *Server) openAdmin() error {
	db, err := sql.Open("mysql", s.DSN(""))
	if err != nil {
		return fmt.Errorf("open admin connection: %w", err)
	}
	db.SetMaxOpenConns(4)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return fmt.Errorf("connect as %s to %s: %w", s.User, s.Addr, err)
	}
	s.admin = db
	return nil
}

// start initialises a datadir in a new temporary folder and runs mariadbd on
// a free loopback port, retrying with another port if the one picked was
// taken in the meantime.
func start(mariadbd, installDB string) (*Server, error) {
	removeStaleDirs()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("create temporary folder: %w", err)
	}
	s := &Server{Dir: dir}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}

	asRoot := os.Geteuid() == 0
	installArgs := []string{
		"--no-defaults",
		"--datadir=" + filepath.Join(dir, "data"),
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
		"--skip-name-resolve",
	}
	if asRoot {
		// Both programs refuse to run as root unless told to.
		installArgs = append(installArgs, "--user=root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, installDB, installArgs...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: %v; its output ends with:\n%s", installDB, err, tail(out, 30))
	}

	const attempts = 5
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		err = s.run(mariadbd, port, asRoot)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortTaken) || attempt == attempts {
			return nil, fmt.Errorf("%w; the log ends with:\n%s", err, s.logTail())
		}
	}

	if err := s.createUser(); err != nil {
		return nil, fmt.Errorf("%w; the log ends with:\n%s", err, s.logTail())
	}
	s.base = baseConfig(s.User, s.Password, s.Addr)
	if err := s.openAdmin(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

var errPortTaken = errors.New("port taken")

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// bufferPool is the server's InnoDB buffer pool: 256M for tests, or
// QZ_MARIADB_BUFFER_POOL (make bench sizes it like a department's server,
// holding the tables it copies).
func bufferPool() string {
	if v := os.Getenv("QZ_MARIADB_BUFFER_POOL"); v != "" {
		return v
	}
	return "256M"
}

// run starts mariadbd on port and waits until it accepts connections.
func (s *Server) run(mariadbd string, port int, asRoot bool) error {
	args := []string{
		"--no-defaults",
		"--datadir=" + filepath.Join(s.Dir, "data"),
		"--socket=" + filepath.Join(s.Dir, "mysqld.sock"),
		"--pid-file=" + filepath.Join(s.Dir, "mysqld.pid"),
		"--log-error=" + filepath.Join(s.Dir, "error.log"),
		"--tmpdir=" + s.Dir,
		"--port=" + strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--skip-name-resolve",
		"--skip-log-bin",
		"--innodb-buffer-pool-size=" + bufferPool(),
		"--character-set-server=" + charset,
		"--collation-server=" + collation,
		"--max-allowed-packet=64M",
		"--local-infile=1",
	}
	if asRoot {
		args = append(args, "--user=root")
	}
	// Start each attempt with empty logs, so an earlier attempt's "Address
	// already in use" is not taken for this one's.
	os.Remove(filepath.Join(s.Dir, "error.log"))
	out, err := os.Create(filepath.Join(s.Dir, "mariadbd.out"))
	if err != nil {
		return err
	}
	defer out.Close() // the child has its own copy
	p, err := spawn(mariadbd, args, out)
	if err != nil {
		return fmt.Errorf("start mariadbd: %w", err)
	}
	s.proc = p

	// Root may log in over TCP without a password until createUser drops that
	// account. Probe quietly: the driver logs refused handshakes to stderr.
	probe := baseConfig("root", "", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	probe.Logger = log.New(io.Discard, "", 0)
	probe.Timeout = time.Second
	conn, err := mysql.NewConnector(probe)
	if err != nil {
		return err
	}
	db := sql.OpenDB(conn)
	defer db.Close()

	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := db.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			s.proc = nil
			if bytes.Contains(s.readLog(), []byte("Address already in use")) {
				return fmt.Errorf("mariadbd on port %d: %w", port, errPortTaken)
			}
			return fmt.Errorf("mariadbd exited before accepting connections: %v", p.waitErr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mariadbd did not accept connections on port %d within %v: %v", port, startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// createUser adds the account tests use and removes root's password-less TCP
// accounts, so only root@localhost (socket) remains.
func (s *Server) createUser() error {
	probe := baseConfig("root", "", s.Addr)
	conn, err := mysql.NewConnector(probe)
	if err != nil {
		return err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s.User, s.Password = User, randomHex(12)
	stmts := []string{
		fmt.Sprintf("CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s'", s.User, s.Password),
		fmt.Sprintf("GRANT ALL PRIVILEGES ON *.* TO '%s'@'127.0.0.1' WITH GRANT OPTION", s.User),
	}
	rows, err := db.QueryContext(ctx, "SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'")
	if err != nil {
		return fmt.Errorf("list root accounts: %w", err)
	}
	for rows.Next() {
		var host string
		if err := rows.Scan(&host); err != nil {
			rows.Close()
			return fmt.Errorf("list root accounts: %w", err)
		}
		stmts = append(stmts, fmt.Sprintf("DROP USER 'root'@'%s'", strings.ReplaceAll(host, "'", "''")))
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("list root accounts: %w", err)
	}
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("create user %s: %w", s.User, err)
		}
	}
	return nil
}

// process is a mariadbd started by spawn.
type process struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited
	waitErr error         // set before exited is closed
}

// spawn starts a program whose death signal is SIGKILL, so it dies with the
// test binary. Linux sends that signal when the thread that forked the child
// ends, not the process, so the fork happens on a goroutine locked to its
// thread, and that goroutine stays until the child exits.
func spawn(path string, args []string, out *os.File) (*process, error) {
	p := &process{exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread exits with this goroutine, after the child.
		runtime.LockOSThread()
		cmd := exec.Command(path, args...)
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.cmd = cmd
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// stop asks mariadbd to shut down, and kills it if it has not within
// stopTimeout.
func (p *process) stop() error {
	select {
	case <-p.exited:
		return fmt.Errorf("mariadbd had already exited: %v", p.waitErr)
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(stopTimeout):
	}
	p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("mariadbd did not stop within %v of SIGTERM and was killed", stopTimeout)
}

// close stops the server if it was started here and removes its folder.
func (s *Server) close() error {
	var errs []error
	if s.admin != nil {
		s.admin.Close()
	}
	if s.proc != nil {
		if err := s.proc.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// readLog returns mariadbd's output before it opened its error log, followed
// by the error log.
func (s *Server) readLog() []byte {
	var b []byte
	for _, name := range []string{"mariadbd.out", "error.log"} {
		data, _ := os.ReadFile(filepath.Join(s.Dir, name))
		b = append(b, data...)
	}
	return b
}

func (s *Server) logTail() string {
	return tail(s.readLog(), 30)
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// removeStaleDirs removes the temporary folders of test binaries that were
// killed before they could clean up; their mariadbd died with them.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // being created, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}
