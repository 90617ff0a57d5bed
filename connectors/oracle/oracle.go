// Package oracle is the connector kind for Oracle Database, through the
// pure-Go driver github.com/sijms/go-ora/v2: nothing of Oracle's client is
// installed, and the binary stays static. See docs/type-mapping.md for how
// its types travel.
//
// # Connecting
//
// The DSN is a go-ora URL, oracle://user:password@host:1521/service, with
// go-ora's options as query parameters (e.g. ?SSL=true). Characters such
// as @ or / in the password must be URL-escaped (go_ora.BuildUrl does it).
// A missing port means 1521.
//
// Every connection is set up the same way, whatever the client's NLS_LANG
// or the database's defaults: NLS_NUMERIC_CHARACTERS '.,', the Gregorian
// calendar, BINARY sorting and comparison (so that ORDER BY agrees with the
// > of keyset pagination on text keys), and the UTC session time zone. The
// SQL written here converts dates and times with explicit format masks
// anyway, so it does not depend on NLS_DATE_FORMAT and its kin.
//
// # Names
//
// Names are quoted exactly as written, so they are case-sensitive as in the
// data dictionary: a table created without quotes is stored as PEOPLE and
// must be written PEOPLE (or HR.PEOPLE: schema.table splits on the dot). A
// table is looked up under the session's current schema unless a schema is
// given; synonyms are not followed.
//
// # Values
//
// NUMBER travels exactly: go-ora (v2.8) decodes the NUMBER bytes into a
// decimal string, and the batch layer refuses a binary float for an exact
// column. Dates and times are read with TO_CHAR and written with
// TO_DATE/TO_TIMESTAMP/TO_TIMESTAMP_TZ and explicit masks; a DATE has a
// time of day, so it is a datetime with no fraction, never a date.
// BINARY_FLOAT is read widened to BINARY_DOUBLE, because go-ora's
// BINARY_FLOAT decoder truncates (0.7 arrives as 0.6); the widening is
// exact. A string longer than 4000 bytes or bytes longer than 2000 are
// bound as temporary NCLOB/BLOB, since Oracle takes larger VARCHAR2 and
// RAW binds only as LONG, which MERGE refuses (ORA-01461). Other strings
// are bound in the database character set, which keeps an index on a
// VARCHAR2 key usable (an NVARCHAR2 bind would convert the column); go-ora
// converts between UTF-8 and the database character set, ZHS16GBK or
// AL32UTF8 alike, so text the database character set can hold arrives
// intact, and other characters do not (use an AL32UTF8 database for
// text that ZHS16GBK cannot hold). Reading needs nothing: go-ora decodes
// each column by its own character set, NVARCHAR2 and NCLOB included.
//
// # Empty strings
//
// Oracle stores the empty string as NULL in VARCHAR2, NVARCHAR2, CHAR,
// CLOB and RAW columns, so an empty string from MySQL arrives in Oracle as
// NULL. Tables created here therefore never declare character or binary
// columns NOT NULL. A NOT NULL column of an existing target rejects such a row with
// ORA-01400, which names the column ("OWNER"."TABLE"."COLUMN"), and the
// batch fails with that message until the column allows NULL.
//
// # Snapshots
//
// A snapshot is a flashback read: every page reads "T AS OF SCN n", and n
// is kept as the snapshot's token, so a snapshot survives an agent
// restart. Reading the current SCN needs SELECT on V_$DATABASE or EXECUTE
// on DBMS_FLASHBACK; reading another schema's table AS OF an SCN needs the
// FLASHBACK privilege on it. Undo older than undo_retention may be gone:
// the read then fails with ErrSnapshotTooOld (ORA-01555, ORA-08181) and
// the snapshot must start again with a new SCN. A query resource (query:
// instead of table:) cannot be read AS OF an SCN, so its pages are read
// at the current time.
package oracle

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	go_ora "github.com/sijms/go-ora/v2"
	"github.com/sijms/go-ora/v2/network"

	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Kind is the registry name of this connector.
const Kind = "oracle"

func init() { sqltable.Register(Dialect{}) }

// ErrSnapshotTooOld is wrapped by reads of a snapshot whose SCN Oracle can
// no longer reconstruct from undo; the source then starts a new snapshot.
var ErrSnapshotTooOld = sqltable.ErrSnapshotTooOld

// AppliedTable is the default applied table: upper case, so that
// SELECT * FROM qz_applied finds it.
func (Dialect) AppliedTable() string { return "QZ_APPLIED" }

// Classify implements sqltable's error hook: errors met while fetching
// rows, not only when starting a query, name a snapshot that is too old.
func (Dialect) Classify(err error) error { return tooOld(err) }

// Dialect is Oracle's SQL.
type Dialect struct{}

// Name implements sqltable.Dialect.
func (Dialect) Name() string { return Kind }

// sessionSQL runs on every new connection. The masks below make the SQL
// here independent of it; it is there for what the masks cannot reach:
// TO_NUMBER's decimal character, the calendar, the sort order that ORDER BY
// uses on text keys, and the zone in which TIMESTAMP WITH LOCAL TIME ZONE
// values convert to plain TIMESTAMP.
const sessionSQL = "ALTER SESSION SET NLS_NUMERIC_CHARACTERS = '.,'" +
	" NLS_DATE_FORMAT = 'YYYY-MM-DD HH24:MI:SS'" +
	" NLS_TIMESTAMP_FORMAT = 'YYYY-MM-DD HH24:MI:SS.FF'" +
	" NLS_TIMESTAMP_TZ_FORMAT = 'YYYY-MM-DD HH24:MI:SS.FF TZH:TZM'" +
	" NLS_CALENDAR = 'GREGORIAN' NLS_SORT = 'BINARY' NLS_COMP = 'BINARY'" +
	" TIME_ZONE = '+00:00'"

// prefetchRows is how many rows go-ora fetches a round trip unless the DSN
// says otherwise; its default of 25 would make a 5000-row page 200 round
// trips.
const prefetchRows = "1000"

const dsnHelp = "want oracle://user:password@host:1521/service, with special characters in the password URL-escaped, e.g. @ as %40"

// normalizeDSN checks a go-ora URL and fills in the port and the prefetch
// size. Its errors never repeat the DSN, which holds the password.
func normalizeDSN(dsn string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", errors.New("dsn is malformed (" + dsnHelp + ")")
	}
	if u.Scheme != "oracle" {
		return "", fmt.Errorf("dsn scheme is %q, not oracle (%s)", u.Scheme, dsnHelp)
	}
	q := u.Query()
	has := func(key string) bool {
		for k := range q {
			if strings.EqualFold(k, key) {
				return true
			}
		}
		return false
	}
	if u.User == nil || u.User.Username() == "" {
		return "", errors.New("dsn names no user (" + dsnHelp + ")")
	}
	if u.Hostname() == "" && !has("connStr") {
		return "", errors.New("dsn names no host (" + dsnHelp + ")")
	}
	if strings.Trim(u.Path, "/") == "" && !has("SID") && !has("SERVICE NAME") && !has("connStr") {
		return "", errors.New("dsn names no service (" + dsnHelp + ")")
	}
	if u.Hostname() != "" && u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "1521")
	}
	if !has("PREFETCH_ROWS") {
		q.Set("PREFETCH_ROWS", prefetchRows)
		u.RawQuery = q.Encode()
	}
	return u.String(), nil
}

// Open implements sqltable.Dialect.
func (Dialect) Open(ctx context.Context, dsn string) (*sql.DB, error) {
	norm, err := normalizeDSN(dsn)
	if err != nil {
		return nil, err
	}
	return sqltable.ReadyPool(ctx, sql.OpenDB(&connector{inner: go_ora.NewConnector(norm)}))
}

// connector sets every connection's session up before database/sql uses
// it, so that pooled connections opened later behave like the first.
type connector struct{ inner driver.Connector }

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.inner.Connect(ctx)
	if err != nil {
		return nil, err
	}
	oc, ok := dc.(*go_ora.Connection)
	if !ok {
		dc.Close()
		return nil, fmt.Errorf("go-ora returned a %T connection", dc)
	}
	if _, err := oc.ExecContext(ctx, sessionSQL, nil); err != nil {
		oc.Close()
		return nil, fmt.Errorf("set session parameters: %w", err)
	}
	return &conn{oc}, nil
}

func (c *connector) Driver() driver.Driver { return c.inner.Driver() }

// conn is a go-ora connection that binds oversized values as LOBs. It
// embeds the concrete type so that every optional interface go-ora
// implements (contexts, transactions, session reset) stays visible to
// database/sql.
type conn struct{ *go_ora.Connection }

// CheckNamedValue implements driver.NamedValueChecker; database/sql calls
// it for every argument before the statement runs.
func (*conn) CheckNamedValue(nv *driver.NamedValue) error {
	nv.Value = bindArg(nv.Value)
	return nil
}

// Oracle takes a string bind over 4000 bytes (32767 with MAX_STRING_SIZE
// EXTENDED) or a RAW bind over 2000 bytes only as a LONG, which SQL
// accepts in INSERT … VALUES and nowhere else — not in the MERGE's USING
// (SELECT … FROM DUAL) (ORA-01461).
const maxStringBind, maxRawBind = 4000, 2000

// bindArg turns values too long for a VARCHAR2 or RAW bind into temporary
// LOBs, which convert implicitly into every character or binary column.
// Text goes as NCLOB, in the national character set, so that no character
// is lost on the way whatever the database character set is.
func bindArg(v any) any {
	switch x := v.(type) {
	case string:
		if len(x) > maxStringBind {
			return go_ora.NClob{String: x, Valid: true}
		}
	case []byte:
		if len(x) > maxRawBind {
			return go_ora.Blob{Data: x}
		}
	}
	return v
}

// Quote implements sqltable.Dialect. Names keep their case: see the
// package comment.
func (Dialect) Quote(ident string) string { return sqltable.QuoteDotted(ident, `"`) }

// Param implements sqltable.Dialect. go-ora binds numbered placeholders by
// position.
func (Dialect) Param(i int) string { return ":" + strconv.Itoa(i) }

// Format masks of the canonical forms.
const (
	dateMask    = "YYYY-MM-DD"
	secondsMask = "YYYY-MM-DD HH24:MI:SS"
	offsetMask  = " TZH:TZM"
)

// readMask reads canonical text with p fraction digits (FF reads 1 to 9).
func readMask(p int) string {
	if p > 0 {
		return secondsMask + ".FF"
	}
	return secondsMask
}

// writeMask writes exactly p fraction digits, as the canonical form has.
func writeMask(p int) string {
	if p > 0 {
		return secondsMask + ".FF" + strconv.Itoa(min(p, 9))
	}
	return secondsMask
}

func fractionDigits(p int) string { return strconv.Itoa(max(0, min(p, 9))) }

// Bind implements sqltable.Dialect. Numbers go through TO_NUMBER, which
// reads the canonical '.' because every session sets
// NLS_NUMERIC_CHARACTERS; the alternative, TO_NUMBER with a format and an
// NLS argument, needs a format wide enough for 38 digits at any scale.
// The wrapped value has the column's own type, so a comparison with the
// column keeps its index. A datetime without fraction is read as a DATE:
// compared with a DATE column a TIMESTAMP would convert the column, and a
// TIMESTAMP(0) column takes a DATE as it is.
func (Dialect) Bind(c batch.Column, p string) string {
	switch c.Type {
	case batch.TypeInt, batch.TypeDecimal:
		return "TO_NUMBER(" + p + ")"
	case batch.TypeFloat:
		return "TO_BINARY_FLOAT(" + p + ")"
	case batch.TypeDouble:
		return "TO_BINARY_DOUBLE(" + p + ")"
	case batch.TypeDate:
		return "TO_DATE(" + p + ", '" + dateMask + "')"
	case batch.TypeDatetime:
		if c.Precision <= 0 {
			return "TO_DATE(" + p + ", '" + secondsMask + "')"
		}
		return "TO_TIMESTAMP(" + p + ", '" + readMask(c.Precision) + "')"
	case batch.TypeTimestamp:
		// UTC wall clock, made an instant whatever the session's zone.
		return "CAST(FROM_TZ(TO_TIMESTAMP(" + p + ", '" + readMask(c.Precision) + "'), '+00:00') AS TIMESTAMP(" +
			fractionDigits(c.Precision) + ") WITH LOCAL TIME ZONE)"
	case batch.TypeTimestampTZ:
		return "TO_TIMESTAMP_TZ(" + p + ", '" + readMask(c.Precision) + offsetMask + "')"
	}
	return p
}

// Select implements sqltable.Dialect. A converted column gets an alias,
// because Limit wraps the query in an inline view, which needs plain
// column names; the alias is not the column's own name, so that ORDER BY
// still means the column (and its index) rather than the text.
func (Dialect) Select(c batch.Column, ident string) string {
	var e string
	switch c.Type {
	case batch.TypeFloat:
		// go-ora truncates BINARY_FLOAT while decoding; widening is exact.
		e = "CAST(" + ident + " AS BINARY_DOUBLE)"
	case batch.TypeDate:
		e = "TO_CHAR(" + ident + ", '" + dateMask + "')"
	case batch.TypeDatetime:
		e = "TO_CHAR(" + ident + ", '" + writeMask(c.Precision) + "')"
	case batch.TypeTimestamp:
		e = "TO_CHAR(SYS_EXTRACT_UTC(" + ident + "), '" + writeMask(c.Precision) + "')"
	case batch.TypeTimestampTZ:
		e = "TO_CHAR(" + ident + ", '" + writeMask(c.Precision) + offsetMask + "')"
	default:
		return ident
	}
	return e + " " + alias(ident)
}

// alias names a converted column: short enough for Oracle 11g's 30
// characters, and unlikely to meet a real column.
func alias(ident string) string {
	h := fnv.New32a()
	h.Write([]byte(ident))
	return fmt.Sprintf(`"QZ_%08X"`, h.Sum32())
}

// Limit implements sqltable.Dialect with ROWNUM over an inline view. It
// works on every Oracle version still in service (FETCH FIRST needs 12c,
// and 11g is common), and the optimizer turns it into a COUNT STOPKEY
// over an index range scan: the classic top-N form.
func (Dialect) Limit(q string, n int) string {
	return "SELECT * FROM (" + q + ") WHERE ROWNUM <= " + strconv.Itoa(n)
}

// columnRow is one row of ALL_TAB_COLUMNS.
type columnRow struct {
	Name       string
	DataType   string
	DataLength sql.NullInt64
	CharLength sql.NullInt64
	Precision  sql.NullInt64
	Scale      sql.NullInt64
	Nullable   string // Y or N
}

func split(table string) (schema, name string) {
	if i := strings.LastIndex(table, "."); i >= 0 {
		return table[:i], table[i+1:]
	}
	return "", table
}

// describeSQL is the dictionary queries for a table: its columns, its
// enabled primary and unique constraints, and its usable indexes.
func describeSQL(table string) (cols, cons, idx string, args []any) {
	schema, name := split(table)
	owner := "SYS_CONTEXT('USERENV', 'CURRENT_SCHEMA')"
	tbl := ":1"
	args = []any{name}
	if schema != "" {
		owner, tbl = ":1", ":2"
		args = []any{schema, name}
	}
	cols = "SELECT COLUMN_NAME, DATA_TYPE, DATA_LENGTH, CHAR_LENGTH, DATA_PRECISION, DATA_SCALE, NULLABLE" +
		" FROM ALL_TAB_COLUMNS WHERE OWNER = " + owner + " AND TABLE_NAME = " + tbl + " ORDER BY COLUMN_ID"
	cons = "SELECT c.CONSTRAINT_NAME, c.CONSTRAINT_TYPE, cc.COLUMN_NAME" +
		" FROM ALL_CONSTRAINTS c JOIN ALL_CONS_COLUMNS cc ON cc.OWNER = c.OWNER AND cc.CONSTRAINT_NAME = c.CONSTRAINT_NAME AND cc.TABLE_NAME = c.TABLE_NAME" +
		" WHERE c.OWNER = " + owner + " AND c.TABLE_NAME = " + tbl + " AND c.CONSTRAINT_TYPE IN ('P', 'U') AND c.STATUS = 'ENABLED'" +
		" ORDER BY c.CONSTRAINT_NAME, cc.POSITION"
	idx = "SELECT i.INDEX_NAME, i.UNIQUENESS, ic.COLUMN_NAME, ic.COLUMN_POSITION" +
		" FROM ALL_INDEXES i JOIN ALL_IND_COLUMNS ic ON ic.INDEX_OWNER = i.OWNER AND ic.INDEX_NAME = i.INDEX_NAME" +
		" WHERE i.TABLE_OWNER = " + owner + " AND i.TABLE_NAME = " + tbl + " AND i.STATUS <> 'UNUSABLE'" +
		" ORDER BY i.INDEX_NAME, ic.COLUMN_POSITION"
	return cols, cons, idx, args
}

// Describe implements sqltable.Dialect from the ALL_ dictionary views.
func (Dialect) Describe(ctx context.Context, db *sql.DB, table string) (*sqltable.Table, error) {
	colSQL, consSQL, idxSQL, args := describeSQL(table)
	rows, err := db.QueryContext(ctx, colSQL, args...)
	if err != nil {
		return nil, err
	}
	var cols []columnRow
	for rows.Next() {
		var r columnRow
		if err := rows.Scan(&r.Name, &r.DataType, &r.DataLength, &r.CharLength, &r.Precision, &r.Scale, &r.Nullable); err != nil {
			rows.Close()
			return nil, err
		}
		cols = append(cols, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		_, name := split(table)
		if name != strings.ToUpper(name) {
			return nil, fmt.Errorf("%w: %s (Oracle names are case-sensitive here, and unquoted names are stored in upper case: try %s)", sqltable.ErrNoTable, table, strings.ToUpper(table))
		}
		return nil, fmt.Errorf("%w: %s", sqltable.ErrNoTable, table)
	}
	t := &sqltable.Table{Name: table, Native: map[string]string{}, Leading: map[string]bool{}}
	for _, c := range cols {
		t.Columns = append(t.Columns, logical(c))
		t.Native[c.Name] = native(c)
	}
	addUnique := func(set []string) {
		for _, u := range t.Unique {
			if slicesEqual(u, set) {
				return
			}
		}
		t.Unique = append(t.Unique, set)
	}

	type part struct{ name, kind, column string }
	var cons []part
	rows, err = db.QueryContext(ctx, consSQL, args...)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var p part
		if err := rows.Scan(&p.name, &p.kind, &p.column); err != nil {
			rows.Close()
			return nil, err
		}
		cons = append(cons, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, set := range groups(cons, func(p part) string { return p.name }) {
		var names []string
		for _, p := range set {
			names = append(names, p.column)
		}
		if set[0].kind == "P" {
			t.Key = names
		}
		addUnique(names)
	}

	var idx []part
	rows, err = db.QueryContext(ctx, idxSQL, args...)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var p part
		var pos int64
		if err := rows.Scan(&p.name, &p.kind, &p.column, &pos); err != nil {
			rows.Close()
			return nil, err
		}
		if pos == 1 {
			t.Leading[p.column] = true
		}
		idx = append(idx, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, set := range groups(idx, func(p part) string { return p.name }) {
		if set[0].kind != "UNIQUE" {
			continue
		}
		var names []string
		for _, p := range set {
			names = append(names, p.column)
		}
		addUnique(names)
	}
	return t, nil
}

// groups splits rows ordered by name into runs of one name.
func groups[T any](rows []T, name func(T) string) [][]T {
	var out [][]T
	for i, r := range rows {
		if i == 0 || name(rows[i-1]) != name(r) {
			out = append(out, nil)
		}
		out[len(out)-1] = append(out[len(out)-1], r)
	}
	return out
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// number maps NUMBER(p,s) to int or decimal. A NUMBER without precision
// holds 38 significant digits at any scale: decimal with Precision 0.
func number(prec, scale sql.NullInt64) (typ string, p, s int) {
	if !prec.Valid && !scale.Valid {
		return batch.TypeDecimal, 0, 0
	}
	p, s = 38, 0 // NUMBER(*,s), e.g. INTEGER: NUMBER(*,0)
	if prec.Valid {
		p = int(prec.Int64)
	}
	if scale.Valid {
		s = int(scale.Int64)
	}
	if s < 0 {
		// NUMBER(5,-2) rounds to hundreds: integers of up to 7 digits.
		p, s = p-s, 0
	}
	if s > p {
		// NUMBER(3,5) holds 0.00123: five digits, all after the point.
		p = s
	}
	if s == 0 && p <= 18 {
		return batch.TypeInt, 0, 0
	}
	return batch.TypeDecimal, p, s
}

// fraction reads the fractional-second precision of a TIMESTAMP(p)… type
// name, or the dictionary's DATA_SCALE, which holds the same.
func fraction(dataType string, scale sql.NullInt64) int {
	if i := strings.Index(dataType, "("); i >= 0 {
		if j := strings.Index(dataType[i:], ")"); j > 0 {
			if n, err := strconv.Atoi(dataType[i+1 : i+j]); err == nil {
				return n
			}
		}
	}
	if scale.Valid {
		return int(scale.Int64)
	}
	return 6
}

// logical maps an Oracle column to its batch type; "" means unsupported
// (XMLTYPE, ROWID, INTERVAL, BFILE, JSON, …), which the source reports by
// the native name.
func logical(r columnRow) batch.Column {
	col := batch.Column{Name: r.Name, Nullable: r.Nullable != "N"}
	t := r.DataType
	switch t {
	case "NUMBER":
		col.Type, col.Precision, col.Scale = number(r.Precision, r.Scale)
	case "FLOAT":
		// ANSI FLOAT(b) is a NUMBER with binary precision b: a decimal.
		col.Type = batch.TypeDecimal
	case "BINARY_FLOAT":
		col.Type = batch.TypeFloat
	case "BINARY_DOUBLE":
		col.Type = batch.TypeDouble
	case "VARCHAR2", "NVARCHAR2", "CHAR", "NCHAR", "VARCHAR":
		col.Type, col.Length = batch.TypeString, r.CharLength.Int64
	case "CLOB", "NCLOB", "LONG":
		col.Type = batch.TypeText
	case "RAW":
		col.Type, col.Length = batch.TypeBinary, r.DataLength.Int64
	case "BLOB", "LONG RAW":
		col.Type = batch.TypeBlob
	case "DATE":
		col.Type = batch.TypeDatetime
	default:
		if !strings.HasPrefix(t, "TIMESTAMP") {
			break
		}
		col.Precision = fraction(t, r.Scale)
		switch {
		case strings.HasSuffix(t, "WITH LOCAL TIME ZONE"):
			col.Type = batch.TypeTimestamp
		case strings.HasSuffix(t, "WITH TIME ZONE"):
			col.Type = batch.TypeTimestampTZ
		default:
			col.Type = batch.TypeDatetime
		}
	}
	return col
}

// native spells a dictionary row's type as DDL would, for messages.
func native(r columnRow) string {
	switch r.DataType {
	case "NUMBER":
		switch {
		case !r.Precision.Valid && !r.Scale.Valid:
			return "NUMBER"
		case !r.Precision.Valid:
			return fmt.Sprintf("NUMBER(*,%d)", r.Scale.Int64)
		case r.Scale.Int64 == 0:
			return fmt.Sprintf("NUMBER(%d)", r.Precision.Int64)
		}
		return fmt.Sprintf("NUMBER(%d,%d)", r.Precision.Int64, r.Scale.Int64)
	case "FLOAT":
		return fmt.Sprintf("FLOAT(%d)", r.Precision.Int64)
	case "VARCHAR2", "NVARCHAR2", "CHAR", "NCHAR", "VARCHAR":
		return fmt.Sprintf("%s(%d)", r.DataType, r.CharLength.Int64)
	case "RAW":
		return fmt.Sprintf("RAW(%d)", r.DataLength.Int64)
	}
	return r.DataType
}

// queryColumn is what go-ora tells of a result column.
type queryColumn struct {
	Name string
	// Type is go-ora's name: NCHAR (VARCHAR2 and NVARCHAR2), CHAR,
	// NUMBER, IBFloat, TimeStampDTY, OCIClobLocator, …
	Type      string
	Length    int64 // characters, for NCHAR and CHAR
	Precision int64 // for NUMBER
	Scale     int64 // for NUMBER; 255 when the NUMBER has no scale
	Nullable  bool
}

// fromQuery maps a result column to its batch type. go-ora does not report
// a timestamp's fraction digits, so such columns are read with all 9.
func fromQuery(q queryColumn) batch.Column {
	col := batch.Column{Name: q.Name, Nullable: q.Nullable}
	switch strings.ToUpper(q.Type) {
	case "NCHAR", "CHAR":
		col.Type, col.Length = batch.TypeString, q.Length
	case "NUMBER":
		if q.Scale == 255 {
			// A NUMBER without precision, FLOAT(b), or an expression.
			col.Type = batch.TypeDecimal
			break
		}
		col.Type, col.Precision, col.Scale = number(sql.NullInt64{Int64: q.Precision, Valid: true}, sql.NullInt64{Int64: q.Scale, Valid: true})
	case "IBFLOAT":
		col.Type = batch.TypeFloat
	case "IBDOUBLE":
		col.Type = batch.TypeDouble
	case "DATE":
		col.Type = batch.TypeDatetime
	case "TIMESTAMPDTY", "TIMESTAMP":
		col.Type, col.Precision = batch.TypeDatetime, 9
	case "TIMESTAMPTZ_DTY", "TIMESTAMPTZ":
		col.Type, col.Precision = batch.TypeTimestampTZ, 9
	case "TIMESTAMPLTZ_DTY", "TIMESTAMPELTZ":
		col.Type, col.Precision = batch.TypeTimestamp, 9
	case "OCICLOBLOCATOR", "LONG":
		col.Type = batch.TypeText
	case "RAW":
		// The length is not reported; 2000 is RAW's usual maximum, and
		// keeps the column usable as a key at a target.
		col.Type, col.Length = batch.TypeBinary, 2000
	case "OCIBLOBLOCATOR", "LONGRAW":
		col.Type = batch.TypeBlob
	}
	return col
}

// DescribeQuery implements sqltable.Dialect from the driver's description
// of the query's result, read without fetching a row.
func (Dialect) DescribeQuery(ctx context.Context, db *sql.DB, query string) ([]batch.Column, map[string]string, error) {
	rows, err := db.QueryContext(ctx, "SELECT * FROM ("+query+") qz_q WHERE 1 = 0")
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	cts, err := rows.ColumnTypes()
	if err != nil {
		return nil, nil, err
	}
	var cols []batch.Column
	nat := map[string]string{}
	for _, ct := range cts {
		q := queryColumn{Name: ct.Name(), Type: ct.DatabaseTypeName(), Nullable: true}
		if n, ok := ct.Length(); ok {
			q.Length = n
		}
		if p, s, ok := ct.DecimalSize(); ok {
			q.Precision, q.Scale = p, s
		}
		if n, ok := ct.Nullable(); ok {
			q.Nullable = n
		}
		cols = append(cols, fromQuery(q))
		nat[q.Name] = q.Type
	}
	return cols, nat, rows.Err()
}

// Explain implements sqltable.Dialect with EXPLAIN PLAN and DBMS_XPLAN.
// EXPLAIN PLAN takes no bind values (it plans the placeholders as unknown
// text, which the TO_NUMBER/TO_TIMESTAMP wrappers type), so args are not
// sent. PLAN_TABLE is a session's own temporary table: everything runs on
// one connection.
func (Dialect) Explain(ctx context.Context, db *sql.DB, query string, _ []any) (string, error) {
	c, err := db.Conn(ctx)
	if err != nil {
		return "", err
	}
	defer c.Close()
	id := "qz" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := c.ExecContext(ctx, "EXPLAIN PLAN SET STATEMENT_ID = '"+id+"' FOR "+query); err != nil {
		return "", err
	}
	defer c.ExecContext(context.Background(), "DELETE FROM PLAN_TABLE WHERE STATEMENT_ID = :1", id)
	rows, err := c.QueryContext(ctx, "SELECT PLAN_TABLE_OUTPUT FROM TABLE(DBMS_XPLAN.DISPLAY(NULL, :1, 'BASIC'))", id)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var l sql.NullString
		if err := rows.Scan(&l); err != nil {
			return "", err
		}
		if s := strings.TrimRight(l.String, " "); s != "" {
			lines = append(lines, s)
		}
	}
	return strings.Join(lines, "\n"), rows.Err()
}

// nowSQL is the query for Now. SYSTIMESTAMP is the database server's
// clock in the server's zone, the one SYSDATE — and so most writers of
// DATE columns — use; zone names the writers' zone when it differs. The
// lag goes as whole microseconds, a NUMBER, so no decimal character is
// involved.
func nowSQL(c batch.Column, lag time.Duration, zone string) (string, []any) {
	var args []any
	param := func(v any) string {
		args = append(args, v)
		return ":" + strconv.Itoa(len(args))
	}
	now := "CAST(SYSTIMESTAMP AS TIMESTAMP(9))"
	switch {
	case c.Type == batch.TypeTimestamp:
		now = "SYS_EXTRACT_UTC(SYSTIMESTAMP)"
	case c.Type == batch.TypeTimestampTZ && zone != "":
		now = "(SYSTIMESTAMP AT TIME ZONE " + param(zone) + ")"
	case c.Type == batch.TypeTimestampTZ:
		now = "SYSTIMESTAMP"
	case zone != "":
		now = "CAST(SYSTIMESTAMP AT TIME ZONE " + param(zone) + " AS TIMESTAMP(9))"
	}
	mask := writeMask(c.Precision)
	switch c.Type {
	case batch.TypeDate:
		mask = dateMask
	case batch.TypeTimestampTZ:
		mask += offsetMask
	}
	return "SELECT TO_CHAR(" + now + " - NUMTODSINTERVAL(" + param(lag.Microseconds()) + " / 1000000, 'SECOND'), '" + mask + "') FROM DUAL", args
}

// Now implements sqltable.Dialect. The text has c's own number of fraction
// digits, so that Bind reads it back with c's mask.
func (Dialect) Now(ctx context.Context, q sqltable.Querier, c batch.Column, lag time.Duration, zone string) (string, error) {
	query, args := nowSQL(c, lag, zone)
	var v string
	if err := q.QueryRowContext(ctx, query, args...).Scan(&v); err != nil {
		return "", err
	}
	return v, nil
}

// snapshot is a flashback read at one SCN.
type snapshot struct {
	db  *sql.DB
	scn string
}

func (s snapshot) Q() sqltable.Querier { return flashbackQuerier{s.db} }

// From reads a table as of the SCN. A query resource's "(…) alias" cannot
// take AS OF, so it reads the current data.
func (s snapshot) From(table string) string {
	if strings.HasPrefix(table, "(") {
		return table
	}
	return table + " AS OF SCN " + s.scn
}

func (s snapshot) Token() string { return s.scn }

// Close releases nothing: a flashback read holds no session state.
func (s snapshot) Close() error { return nil }

// flashbackQuerier names the undo problem when a read fails on it.
type flashbackQuerier struct{ db *sql.DB }

func (f flashbackQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	rows, err := f.db.QueryContext(ctx, query, args...)
	return rows, tooOld(err)
}

func (f flashbackQuerier) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return f.db.QueryRowContext(ctx, query, args...)
}

func (f flashbackQuerier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return f.db.ExecContext(ctx, query, args...)
}

// tooOld wraps ORA-01555 (snapshot too old) and ORA-08181 (SCN out of
// range) in ErrSnapshotTooOld.
func tooOld(err error) error {
	var oe *network.OracleError
	if errors.As(err, &oe) && (oe.ErrCode == 1555 || oe.ErrCode == 8181) {
		return fmt.Errorf("%w: Oracle no longer keeps the undo to read as of this SCN (raise undo_retention, or let pages be read faster); start the snapshot again with a new SCN: %w", ErrSnapshotTooOld, err)
	}
	return err
}

// isSCN reports whether a token is an SCN: it goes into SQL text.
func isSCN(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// Snapshot implements sqltable.Dialect with a flashback read; a token
// resumes the same SCN.
func (Dialect) Snapshot(ctx context.Context, db *sql.DB, token string) (sqltable.Snapshot, error) {
	if token != "" {
		if !isSCN(token) {
			return nil, fmt.Errorf("snapshot token %q is not an SCN", token)
		}
		return snapshot{db: db, scn: token}, nil
	}
	var scn string
	err := db.QueryRowContext(ctx, "SELECT TO_CHAR(CURRENT_SCN) FROM V$DATABASE").Scan(&scn)
	if err != nil {
		err2 := db.QueryRowContext(ctx, "SELECT TO_CHAR(DBMS_FLASHBACK.GET_SYSTEM_CHANGE_NUMBER) FROM DUAL").Scan(&scn)
		if err2 != nil {
			return nil, fmt.Errorf("read the current SCN (grant SELECT ON V_$DATABASE or EXECUTE ON DBMS_FLASHBACK to the user): %w", errors.Join(err, err2))
		}
	}
	if !isSCN(scn) {
		return nil, fmt.Errorf("the database returned SCN %q", scn)
	}
	return snapshot{db: db, scn: scn}, nil
}

// CreateTable implements sqltable.Dialect. Character and binary columns
// are never NOT NULL, because Oracle stores the empty string as NULL (see
// the package comment).
func (d Dialect) CreateTable(table string, s *batch.Schema) (string, error) {
	return sqltable.CreateTableSQL(d, table, s, func(c batch.Column, key bool) (string, error) {
		t, err := nativeType(c, key)
		if err == nil && !c.Nullable && !emptyIsNull(c.Type) {
			t += " NOT NULL"
		}
		return t, err
	}, "")
}

func emptyIsNull(t string) bool {
	switch t {
	case batch.TypeString, batch.TypeText, batch.TypeBinary, batch.TypeBlob, batch.TypeTime:
		return true
	}
	return false
}

// nativeType is the Oracle type holding a logical one.
//
// Text goes into NVARCHAR2 and NCLOB: their length counts characters, and
// they store any character whatever the database character set is (a
// WE8 database's VARCHAR2 holds no Chinese at all, a ZHS16GBK one not every
// character). On a non-Unicode database a string of up to 4000 bytes is
// still bound in the database character set (see the package comment), so
// characters outside it do not survive the trip; an AL32UTF8 database
// keeps everything. NVARCHAR2 holds 2000 characters at most, beyond which
// text becomes NCLOB — except in a key, which cannot be a LOB.
//
// A datetime without fraction becomes DATE, so an Oracle DATE arrives as
// a DATE again. A timestamp (an instant) becomes TIMESTAMP WITH LOCAL
// TIME ZONE, which stores instants and which Describe maps back to
// timestamp; a plain TIMESTAMP holding UTC would come back as a wall
// clock. Decimals beyond NUMBER's 38 digits become NUMBER, which keeps
// 38 significant digits.
func nativeType(c batch.Column, key bool) (string, error) {
	switch c.Type {
	case batch.TypeInt:
		return "NUMBER(19)", nil
	case batch.TypeDecimal:
		if c.Precision <= 0 || c.Precision > 38 {
			return "NUMBER", nil
		}
		return fmt.Sprintf("NUMBER(%d,%d)", c.Precision, c.Scale), nil
	case batch.TypeFloat:
		return "BINARY_FLOAT", nil
	case batch.TypeDouble:
		return "BINARY_DOUBLE", nil
	case batch.TypeString:
		if c.Length > 0 && c.Length <= 2000 {
			return fmt.Sprintf("NVARCHAR2(%d)", c.Length), nil
		}
		if key {
			return "NVARCHAR2(2000)", nil
		}
		return "NCLOB", nil
	case batch.TypeText:
		if key {
			return "NVARCHAR2(2000)", nil
		}
		return "NCLOB", nil
	case batch.TypeBinary:
		if c.Length > 0 && c.Length <= 2000 {
			return fmt.Sprintf("RAW(%d)", c.Length), nil
		}
		if key {
			return "RAW(2000)", nil
		}
		return "BLOB", nil
	case batch.TypeBlob:
		if key {
			return "RAW(2000)", nil
		}
		return "BLOB", nil
	case batch.TypeDate:
		return "DATE", nil
	case batch.TypeTime:
		// MySQL TIME may be negative or exceed 24 hours: keep the text.
		return "VARCHAR2(20)", nil
	case batch.TypeDatetime:
		if c.Precision <= 0 {
			return "DATE", nil
		}
		return "TIMESTAMP(" + fractionDigits(c.Precision) + ")", nil
	case batch.TypeTimestamp:
		return "TIMESTAMP(" + fractionDigits(c.Precision) + ") WITH LOCAL TIME ZONE", nil
	case batch.TypeTimestampTZ:
		return "TIMESTAMP(" + fractionDigits(c.Precision) + ") WITH TIME ZONE", nil
	}
	return "", fmt.Errorf("column %s: no Oracle type for %q", c.Name, c.Type)
}

// UpsertRows implements sqltable.Dialect: one MERGE a row. A MERGE of
// several rows fails (ORA-30926) when a key appears twice in it, which a
// batch allows. go-ora can bind arrays, running one statement once per
// element in a round trip, which would batch this if sqltable passed
// columns of values.
func (Dialect) UpsertRows(int) int { return 1 }

// Upsert implements sqltable.Dialect with MERGE. The values come in
// through a SELECT from DUAL, each converted by Bind, so the ON clause
// compares the key columns with values of their own types and keeps the
// key's index. Key columns are not updated (ORA-38104), and with nothing
// else to update the WHEN MATCHED branch is left out.
func (d Dialect) Upsert(table string, cols []batch.Column, key []string, rows int) string {
	var b strings.Builder
	b.WriteString("MERGE INTO " + d.Quote(table) + " t USING (")
	n := 0
	for r := range rows {
		if r > 0 {
			b.WriteString(" UNION ALL ")
		}
		b.WriteString("SELECT ")
		for i, c := range cols {
			if i > 0 {
				b.WriteString(", ")
			}
			n++
			b.WriteString(d.Bind(c, d.Param(n)) + " AS " + d.Quote(c.Name))
		}
		b.WriteString(" FROM DUAL")
	}
	b.WriteString(") s ON (")
	for i, k := range key {
		if i > 0 {
			b.WriteString(" AND ")
		}
		q := d.Quote(k)
		b.WriteString("t." + q + " = s." + q)
	}
	b.WriteString(")")
	var set []string
	for _, c := range cols {
		if !slices.Contains(key, c.Name) {
			q := d.Quote(c.Name)
			set = append(set, "t."+q+" = s."+q)
		}
	}
	if len(set) > 0 {
		b.WriteString(" WHEN MATCHED THEN UPDATE SET " + strings.Join(set, ", "))
	}
	var names, vals []string
	for _, c := range cols {
		q := d.Quote(c.Name)
		names = append(names, q)
		vals = append(vals, "s."+q)
	}
	b.WriteString(" WHEN NOT MATCHED THEN INSERT (" + strings.Join(names, ", ") + ") VALUES (" + strings.Join(vals, ", ") + ")")
	return b.String()
}

// BeginApply implements sqltable.Dialect.
func (Dialect) BeginApply(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, nil)
}

var (
	_ sqltable.Dialect          = Dialect{}
	_ sqltable.Snapshot         = snapshot{}
	_ sqltable.Querier          = flashbackQuerier{}
	_ driver.Connector          = (*connector)(nil)
	_ driver.Conn               = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
)
