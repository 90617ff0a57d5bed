// Package sqlite is the connector kind for SQLite database files: the small
// embedded engine many departmental applications keep their data in, and
// the one `make demo` and the tests use. It runs on modernc.org/sqlite, a
// pure-Go driver, so the agent stays a static binary.
//
// The dsn is the absolute path of the database file, e.g.
// /var/lib/dept/app.db. Both sides open it the same way (sqltable does not
// tell Open which side asks), so a missing file is created when its
// directory exists: a consumer can start from nothing, and a provider whose
// path is mistyped finds an empty database and is told the table does not
// exist.
//
// SQLite types values, not columns: a column's declared type only gives it
// an affinity, and a value keeps whatever storage class the application
// gave it. What a column travels as is therefore decided by its declared
// type name (see logical), and values are read as stored, never reparsed.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" driver

	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Kind is the registry name of this connector.
const Kind = "sqlite"

func init() { sqltable.Register(Dialect{}) }

// Dialect is SQLite's SQL.
type Dialect struct{}

// DSNHint says what to check when the database cannot be opened.
func (Dialect) DSNHint() string { return "the absolute path of the database file" }

// Name implements sqltable.Dialect.
func (Dialect) Name() string { return Kind }

// Open implements sqltable.Dialect. Every connection waits up to 10 s for
// a lock instead of failing at once, commits with a full fsync, and uses
// WAL, in which readers and the one writer do not block each other: a
// provider's snapshot must never stall the department's application. WAL
// is a property of the file, so opening a provider's database switches it
// to WAL for good; every SQLite since 3.7 reads such a file transparently.
//
// Transactions begun with BeginTx (only BeginApply does) are IMMEDIATE:
// they take the write lock at BEGIN. A DEFERRED one would start as a read
// and, when another connection committed in between, fail with
// SQLITE_BUSY at its first write, however long the busy timeout.
func (Dialect) Open(ctx context.Context, dsn string) (*sql.DB, error) {
	path := dsn
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("dsn %q is not an absolute file path (want e.g. /var/lib/dept/app.db)", dsn)
	}
	switch fi, err := os.Stat(path); {
	case errors.Is(err, fs.ErrNotExist):
		if _, err := os.Stat(filepath.Dir(path)); err != nil {
			return nil, fmt.Errorf("database file %s does not exist, nor can it be created: %w", path, err)
		}
	case err != nil:
		return nil, fmt.Errorf("database file %s: %w", path, err)
	case fi.IsDir():
		return nil, fmt.Errorf("database file %s is a directory", path)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+uriPath(path)+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	if db, err = sqltable.ReadyPool(ctx, db); err != nil {
		return nil, fmt.Errorf("open database file %s: %w", path, err)
	}
	return db, nil
}

// uriPath escapes the characters that mean something in an SQLite URI
// filename.
func uriPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3F", "#", "%23").Replace(p)
}

// Quote implements sqltable.Dialect.
func (Dialect) Quote(ident string) string { return sqltable.QuoteDotted(ident, `"`) }

// Param implements sqltable.Dialect.
func (Dialect) Param(int) string { return "?" }

// Bind implements sqltable.Dialect. Parameters are bound as text; a
// comparison with a column applies the column's affinity to them, so "42"
// meets an INTEGER column as 42 and a date stays text.
func (Dialect) Bind(_ batch.Column, p string) string { return p }

// Select implements sqltable.Dialect. Date and time columns are read as
// text because the driver turns values of columns declared exactly DATE,
// DATETIME or TIMESTAMP into time.Time, which would lose the form (and
// fraction digits) the application wrote. The driver also reads an empty
// blob as nil, which would arrive as NULL, so it is read as empty text.
// Decimals are read by decimalSelect.
func (Dialect) Select(c batch.Column, ident string) string {
	switch c.Type {
	case batch.TypeDecimal:
		return decimalSelect(c, ident)
	case batch.TypeBinary, batch.TypeBlob:
		return "CASE WHEN " + ident + " = X'' THEN '' ELSE " + ident + " END"
	case batch.TypeDate, batch.TypeTime, batch.TypeDatetime, batch.TypeTimestamp, batch.TypeTimestampTZ:
		return "CAST(" + ident + " AS TEXT)"
	}
	return ident
}

// decimalSelect reads a decimal column as exact text. A column declared
// DECIMAL(p,s) has NUMERIC affinity, so SQLite stores what the application
// wrote as INTEGER or REAL (a REAL keeps about 15 significant digits); those
// come back with exactly s fraction digits, as a DECIMAL(p,s) column of
// another engine would give them, a REAL with more digits than declared
// being rounded to s (so such a column makes a poor key or watermark).
// Without a declared scale, a REAL comes back in the shortest form that
// reads back the same, written out without an exponent. Text (all a
// DECIMAL_TEXT column holds) is passed as stored.
func decimalSelect(c batch.Column, x string) string {
	asReal := "CASE WHEN CAST(" + x + " AS TEXT) LIKE '%e%' THEN rtrim(rtrim(printf('%.15f', " + x + "), '0'), '.') ELSE CAST(" + x + " AS TEXT) END"
	asInt := "CAST(" + x + " AS TEXT)"
	if c.Precision > 0 {
		asReal = "printf('%." + strconv.Itoa(c.Scale) + "f', " + x + ")"
		if c.Scale > 0 {
			asInt = "(" + x + " || '." + strings.Repeat("0", c.Scale) + "')"
		}
	}
	return "CASE typeof(" + x + ") WHEN 'real' THEN " + asReal + " WHEN 'integer' THEN " + asInt + " ELSE CAST(" + x + " AS TEXT) END"
}

// Limit implements sqltable.Dialect.
func (Dialect) Limit(q string, n int) string { return q + " LIMIT " + strconv.Itoa(n) }

// split separates an attached database's name ("main", "temp" or an
// ATTACH name) from the table's.
func split(table string) (schema, name string) {
	if i := strings.LastIndex(table, "."); i >= 0 {
		return table[:i], table[i+1:]
	}
	return "", table
}

// pragma is a table-valued pragma call for table (or index) name in
// schema, with its arguments.
func pragma(fn, schema, name string) (string, []any) {
	if schema == "" {
		return "pragma_" + fn + "(?)", []any{name}
	}
	return "pragma_" + fn + "(?, ?)", []any{name, schema}
}

// Describe implements sqltable.Dialect from PRAGMA table_xinfo (columns,
// declared types, NOT NULL, primary key order) and index_list/index_info
// (unique indexes and the columns indexes start with). A rowid table
// without a declared PRIMARY KEY has no key: its rowid is not a column and
// VACUUM may renumber it. Columns of the key count as NOT NULL, whatever
// SQLite's lenient rowid tables allow.
func (d Dialect) Describe(ctx context.Context, db *sql.DB, table string) (*sqltable.Table, error) {
	schema, name := split(table)
	from, args := pragma("table_xinfo", schema, name)
	rows, err := db.QueryContext(ctx, `SELECT name, type, "notnull", pk, hidden FROM `+from+` ORDER BY cid`, args...)
	if err != nil {
		return nil, err
	}
	t := &sqltable.Table{Name: table, Native: map[string]string{}, Leading: map[string]bool{}}
	type pkCol struct {
		name string
		pos  int
	}
	var pk []pkCol
	for rows.Next() {
		var col, decl string
		var notNull, pos, hidden int
		if err := rows.Scan(&col, &decl, &notNull, &pos, &hidden); err != nil {
			rows.Close()
			return nil, err
		}
		if hidden == 1 { // a virtual table's hidden column
			continue
		}
		c := logical(col, decl)
		c.Nullable = notNull == 0 && pos == 0
		t.Columns = append(t.Columns, c)
		t.Native[col] = decl
		if pos > 0 {
			pk = append(pk, pkCol{col, pos})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(t.Columns) == 0 {
		return nil, fmt.Errorf("%w: %s", sqltable.ErrNoTable, table)
	}
	slices.SortFunc(pk, func(a, b pkCol) int { return a.pos - b.pos })
	for _, p := range pk {
		t.Key = append(t.Key, p.name)
	}
	if len(t.Key) > 0 {
		t.Unique = append(t.Unique, t.Key)
		t.Leading[t.Key[0]] = true
	}
	type index struct {
		name    string
		unique  bool
		origin  string
		partial bool
	}
	var idx []index
	from, args = pragma("index_list", schema, name)
	rows, err = db.QueryContext(ctx, `SELECT name, "unique", origin, partial FROM `+from, args...)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var i index
		if err := rows.Scan(&i.name, &i.unique, &i.origin, &i.partial); err != nil {
			rows.Close()
			return nil, err
		}
		idx = append(idx, i)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, i := range idx {
		if i.partial {
			// Covers some rows only: neither a key nor a plan for all.
			continue
		}
		cols, complete, err := indexColumns(ctx, db, schema, i.name)
		if err != nil {
			return nil, err
		}
		if len(cols) > 0 {
			t.Leading[cols[0]] = true
		}
		if i.unique && complete && i.origin != "pk" {
			t.Unique = append(t.Unique, cols)
		}
	}
	return t, nil
}

// indexColumns lists an index's columns in order; complete is false when
// some are expressions.
func indexColumns(ctx context.Context, db *sql.DB, schema, index string) (cols []string, complete bool, err error) {
	from, args := pragma("index_info", schema, index)
	rows, err := db.QueryContext(ctx, "SELECT name FROM "+from+" ORDER BY seqno", args...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	complete = true
	for rows.Next() {
		var n sql.NullString
		if err := rows.Scan(&n); err != nil {
			return nil, false, err
		}
		if !n.Valid {
			complete = false
			if len(cols) == 0 {
				return nil, false, nil
			}
			continue
		}
		cols = append(cols, n.String)
	}
	return cols, complete, rows.Err()
}

// logical maps a declared type to the batch type it travels as. SQLite
// accepts any name (with any arguments) and derives only an affinity from
// it, so names are matched as applications write them, case-insensitively:
//
//	declared type                                   batch type
//	DECIMAL(p,s), NUMERIC(p,s), NUMBER(p,s),        decimal(p,s); no arguments: decimal(0,0),
//	  DECIMAL_TEXT(p,s)                               i.e. any precision and scale
//	BOOLEAN, BOOL                                   int
//	REAL, DOUBLE, DOUBLE PRECISION, FLOAT, FLOAT8   double (SQLite's REAL is 8 bytes)
//	FLOAT4                                          float
//	DATE                                            date
//	TIME(p)                                         time(p)
//	DATETIME(p)                                     datetime(p), p default 0
//	TIMESTAMP(p)                                    timestamp(p): CURRENT_TIMESTAMP writes UTC
//	TIMESTAMPTZ(p), TIMESTAMP WITH TIME ZONE         timestamptz(p)
//	BINARY(n), VARBINARY(n)                         binary(n); without n: blob
//	BYTEA                                           blob
//	otherwise, by SQLite's affinity rules:
//	  name contains INT                             int (INTEGER, BIGINT, UNSIGNED BIG INT, …)
//	  name contains CHAR                            string(n) (VARCHAR(n), NCHAR(n), …); without n: text
//	  name contains CLOB or TEXT                    text
//	  name contains BLOB                            blob
//	  name contains REAL, FLOA or DOUB              double
//	  no declared type, or any other name           text: whatever the application stored,
//	    (JSON, UUID, MONEY, …)                        text carries it
//
// Time values are passed as the application stored them: the precision
// is what the declared type says, not a promise about the text, and
// SQLite's own functions write "2006-01-02 15:04:05" and, with %f,
// three fraction digits.
func logical(name, decl string) batch.Column {
	c := batch.Column{Name: name, Nullable: true}
	base, args := parseDecl(decl)
	arg := func(i int) int {
		if i < len(args) {
			return args[i]
		}
		return 0
	}
	switch base {
	case "DECIMAL", "NUMERIC", "NUMBER", decimalText:
		c.Type, c.Precision, c.Scale = batch.TypeDecimal, arg(0), arg(1)
		return c
	case "BOOLEAN", "BOOL":
		c.Type = batch.TypeInt
		return c
	case "REAL", "DOUBLE", "DOUBLE PRECISION", "FLOAT", "FLOAT8":
		c.Type = batch.TypeDouble
		return c
	case "FLOAT4":
		c.Type = batch.TypeFloat
		return c
	case "DATE":
		c.Type = batch.TypeDate
		return c
	case "TIME":
		c.Type, c.Precision = batch.TypeTime, arg(0)
		return c
	case "DATETIME":
		c.Type, c.Precision = batch.TypeDatetime, arg(0)
		return c
	case "TIMESTAMP":
		c.Type, c.Precision = batch.TypeTimestamp, arg(0)
		return c
	case "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE":
		c.Type, c.Precision = batch.TypeTimestampTZ, arg(0)
		return c
	case "BINARY", "VARBINARY":
		c.Type, c.Length = batch.TypeBinary, int64(arg(0))
		if c.Length == 0 {
			c.Type = batch.TypeBlob
		}
		return c
	case "BYTEA":
		c.Type = batch.TypeBlob
		return c
	}
	switch {
	case strings.Contains(base, "INT"):
		c.Type = batch.TypeInt
	case strings.Contains(base, "CHAR"):
		c.Type, c.Length = batch.TypeString, int64(arg(0))
		if c.Length == 0 {
			c.Type = batch.TypeText
		}
	case strings.Contains(base, "CLOB"), strings.Contains(base, "TEXT"):
		c.Type = batch.TypeText
	case strings.Contains(base, "BLOB"):
		c.Type = batch.TypeBlob
	case strings.Contains(base, "REAL"), strings.Contains(base, "FLOA"), strings.Contains(base, "DOUB"):
		c.Type = batch.TypeDouble
	default:
		c.Type = batch.TypeText
	}
	return c
}

// decimalText is the declared type CreateTable gives decimals. A column
// declared DECIMAL(p,s) has NUMERIC affinity and SQLite would turn "12.50"
// into the REAL 12.5, losing the scale and, past 15 digits, digits. The
// name contains TEXT, so the column has TEXT affinity and keeps the text
// exactly; Describe reads it back as decimal(p,s).
const decimalText = "DECIMAL_TEXT"

// parseDecl splits a declared type such as "varchar (20)" or
// "NUMERIC(10, 2)" into its upper-case name and numeric arguments.
func parseDecl(decl string) (string, []int) {
	decl = strings.ToUpper(decl)
	name, rest, _ := strings.Cut(decl, "(")
	rest, _, _ = strings.Cut(rest, ")")
	var args []int
	for _, a := range strings.Split(rest, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(a)); err == nil && n >= 0 {
			args = append(args, n)
		}
	}
	return strings.Join(strings.Fields(name), " "), args
}

// DescribeQuery implements sqltable.Dialect: SQLite reports the declared
// type of every result column that is a table's column (also through
// subqueries); computed columns have none and travel as text.
func (Dialect) DescribeQuery(ctx context.Context, db *sql.DB, query string) ([]batch.Column, map[string]string, error) {
	rows, err := db.QueryContext(ctx, "SELECT * FROM ("+query+") LIMIT 0")
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		return nil, nil, err
	}
	var cols []batch.Column
	native := map[string]string{}
	for _, t := range types {
		cols = append(cols, logical(t.Name(), t.DatabaseTypeName()))
		native[t.Name()] = t.DatabaseTypeName()
	}
	return cols, native, rows.Err()
}

// Explain implements sqltable.Dialect with EXPLAIN QUERY PLAN.
func (Dialect) Explain(ctx context.Context, db *sql.DB, query string, args []any) (string, error) {
	rows, err := db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			return "", err
		}
		out = append(out, detail)
	}
	return strings.Join(out, "; "), rows.Err()
}

// Now implements sqltable.Dialect. SQLite has no server clock: 'now' is
// this machine's, in UTC, which is also what CURRENT_TIMESTAMP and
// datetime('now') write, so applications should keep watermarks in UTC. A
// DATETIME watermark written in local time needs time_zone (an offset such
// as +08:00, or a zone name); TIMESTAMP columns are UTC by definition.
//
// SQLite compares the watermark as text, so the application must write it
// in SQLite's form, "2006-01-02 15:04:05" with any number of fraction
// digits (an ISO "T" between date and time sorts after every bound of the
// same day, and such rows wait until the next day). The bound is given in
// whole seconds: CURRENT_TIMESTAMP has no fraction, and a row it stamped
// "…:05" may have been written at …:05.9. A fractional bound "…:05.3"
// would already pass it; the bound "…:05" holds back every row of that
// second, whatever number of fraction digits it has, until the second is
// over. Incremental reads thus trail by up to one second more than lag.
func (Dialect) Now(ctx context.Context, q sqltable.Querier, c batch.Column, lag time.Duration, zone string) (string, error) {
	format := "%Y-%m-%d %H:%M:%S"
	if c.Type == batch.TypeDate {
		format = "%Y-%m-%d"
	}
	shift := 0
	if zone != "" && c.Type != batch.TypeTimestamp {
		off, err := zoneOffset(zone, time.Now())
		if err != nil {
			return "", err
		}
		shift = off
	}
	var v sql.NullString
	err := q.QueryRowContext(ctx, "SELECT strftime(?, 'now', ?, ?)", format,
		fmt.Sprintf("-%.6f seconds", lag.Seconds()), fmt.Sprintf("%+d seconds", shift)).Scan(&v)
	if err != nil {
		return "", err
	}
	if !v.Valid {
		return "", fmt.Errorf("strftime returned NULL for lag %s, time_zone %q", lag, zone)
	}
	return v.String, nil
}

// zoneOffset is zone's offset from UTC in seconds at t: zone is Z, UTC, an
// offset (+08:00, +0800, +08) or an IANA name (Asia/Shanghai).
func zoneOffset(zone string, t time.Time) (int, error) {
	if strings.EqualFold(zone, "Z") || strings.EqualFold(zone, "UTC") {
		return 0, nil
	}
	for _, layout := range []string{"-07:00", "-0700", "-07"} {
		if p, err := time.Parse(layout, zone); err == nil {
			_, off := p.Zone()
			return off, nil
		}
	}
	loc, err := time.LoadLocation(zone)
	if err != nil {
		return 0, fmt.Errorf("time_zone %q: use an offset such as +08:00 or a zone name such as Asia/Shanghai", zone)
	}
	_, off := t.In(loc).Zone()
	return off, nil
}

// Snapshot implements sqltable.Dialect with a DEFERRED transaction on a
// connection of its own, pinned by a first read: in WAL mode it then sees
// the database as of that read, while the application goes on writing. It
// takes no write lock, but while it lasts SQLite cannot checkpoint the WAL
// past it, so the -wal file grows with the application's writes. It cannot
// outlive the connection, so a resumed snapshot is a new one.
func (Dialect) Snapshot(ctx context.Context, db *sql.DB, _ string) (sqltable.Snapshot, error) {
	sn, err := sqltable.BeginConnSnapshot(ctx, db, "BEGIN DEFERRED")
	if err != nil {
		return nil, err
	}
	var n int
	if err := sn.Conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master").Scan(&n); err != nil {
		sn.Close()
		return nil, err
	}
	return sn, nil
}

// CreateTable implements sqltable.Dialect, with declared types that
// Describe maps back to the same batch types and affinities that keep
// canonical text unchanged:
//
//	int          INTEGER (a sole key column becomes the rowid; an integer
//	             beyond 64 bits would turn REAL, or be refused as a key)
//	decimal      DECIMAL_TEXT(p,s) (TEXT affinity; see decimalText)
//	float        FLOAT4 (REAL affinity)
//	double       REAL
//	string(n)    VARCHAR(n) (SQLite does not enforce n)
//	text         TEXT
//	binary(n)    VARBINARY(n) (bytes are never converted)
//	blob         BLOB
//	date, time, datetime, timestamp, timestamptz
//	             DATE, TIME(p), DATETIME(p), TIMESTAMP(p), TIMESTAMPTZ(p):
//	             NUMERIC affinity, which leaves their text, never a
//	             number, as it is
func (d Dialect) CreateTable(table string, s *batch.Schema) (string, error) {
	return sqltable.CreateTableSQL(d, table, s, sqltable.NotNullUnlessNullable(nativeType), "")
}

func nativeType(c batch.Column) (string, error) {
	withArg := func(name string, n int64) string {
		if n <= 0 {
			return name
		}
		return name + "(" + strconv.FormatInt(n, 10) + ")"
	}
	switch c.Type {
	case batch.TypeInt:
		return "INTEGER", nil
	case batch.TypeDecimal:
		if c.Precision == 0 {
			return decimalText, nil
		}
		return fmt.Sprintf("%s(%d,%d)", decimalText, c.Precision, c.Scale), nil
	case batch.TypeFloat:
		return "FLOAT4", nil
	case batch.TypeDouble:
		return "REAL", nil
	case batch.TypeString:
		if c.Length == 0 {
			return "TEXT", nil
		}
		return withArg("VARCHAR", c.Length), nil
	case batch.TypeText:
		return "TEXT", nil
	case batch.TypeBinary:
		if c.Length == 0 {
			return "BLOB", nil
		}
		return withArg("VARBINARY", c.Length), nil
	case batch.TypeBlob:
		return "BLOB", nil
	case batch.TypeDate:
		return "DATE", nil
	case batch.TypeTime:
		return withArg("TIME", int64(c.Precision)), nil
	case batch.TypeDatetime:
		return withArg("DATETIME", int64(c.Precision)), nil
	case batch.TypeTimestamp:
		return withArg("TIMESTAMP", int64(c.Precision)), nil
	case batch.TypeTimestampTZ:
		return withArg("TIMESTAMPTZ", int64(c.Precision)), nil
	}
	return "", fmt.Errorf("column %s: no SQLite type for %q", c.Name, c.Type)
}

// UpsertRows implements sqltable.Dialect: SQLite allows 32766 parameters
// a statement.
func (Dialect) UpsertRows(ncols int) int { return max(1, min(500, 32000/max(ncols, 1))) }

// Upsert implements sqltable.Dialect with INSERT … ON CONFLICT (key) DO
// UPDATE (SQLite 3.24 and later).
func (d Dialect) Upsert(table string, cols []batch.Column, key []string, rows int) string {
	var b strings.Builder
	b.WriteString(sqltable.InsertValues(d, table, cols, rows))
	var k []string
	for _, n := range key {
		k = append(k, d.Quote(n))
	}
	b.WriteString(" ON CONFLICT (" + strings.Join(k, ", ") + ") DO ")
	var set []string
	for _, c := range cols {
		if slices.Contains(key, c.Name) {
			continue
		}
		q := d.Quote(c.Name)
		set = append(set, q+" = excluded."+q)
	}
	if len(set) == 0 {
		b.WriteString("NOTHING")
	} else {
		b.WriteString("UPDATE SET " + strings.Join(set, ", "))
	}
	return b.String()
}

// BeginApply implements sqltable.Dialect. Open makes BeginTx issue BEGIN
// IMMEDIATE, so the batch's transaction holds the write lock from its
// first statement (a read of the applied table) to its commit.
func (Dialect) BeginApply(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, nil)
}

var _ sqltable.Dialect = Dialect{}
