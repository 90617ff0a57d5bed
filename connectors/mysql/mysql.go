// Package mysql is the connector kind for MySQL and the engines that speak
// its protocol (MariaDB, TiDB, OceanBase in MySQL mode), through
// go-sql-driver/mysql. See docs/type-mapping.md for how its types travel.
package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	driver "github.com/go-sql-driver/mysql"
	"github.com/jmoiron/sqlx"

	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// Kind is the registry name of this connector.
const Kind = "mysql"

func init() { sqltable.Register(Dialect{}) }

// Dialect is MySQL's SQL.
type Dialect struct{}

// Name implements sqltable.Dialect.
func (Dialect) Name() string { return Kind }

// Open connects with the settings exact transfer needs: no time parsing
// (values stay text), UTC sessions (TIMESTAMP values read as UTC),
// client-side interpolation (one round trip a statement).
func (Dialect) Open(ctx context.Context, dsn string) (*sql.DB, error) {
	cfg, err := driver.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("dsn is malformed: %v (want user:password@tcp(host:3306)/database)", err)
	}
	// Values are interpolated into statements on this side, which is
	// safe only in a character set where a quote is never the tail of a
	// multi-byte character: utf8mb4, whatever the tables' own (the server
	// converts).
	if _, q, ok := strings.Cut(dsn, "?"); ok {
		if v, err := url.ParseQuery(q); err == nil {
			for _, cs := range append(v["charset"], v["collation"]...) {
				if !strings.HasPrefix(cs, "utf8mb4") && cs != "utf8" && cs != "utf8mb3" {
					return nil, fmt.Errorf("dsn: %s is not supported: the agent always speaks utf8mb4 with the server (which converts to the tables' own character set); remove it", cs)
				}
			}
		}
	}
	if cfg.DBName == "" {
		return nil, errors.New("dsn names no database (want user:password@tcp(host:3306)/database)")
	}
	if cfg.Params == nil {
		cfg.Params = map[string]string{}
	}
	cfg.Params["time_zone"] = "'+00:00'"
	cfg.ParseTime = false
	cfg.InterpolateParams = true
	cfg.MultiStatements = false
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.MaxAllowedPacket == 0 || cfg.MaxAllowedPacket == driver.NewConfig().MaxAllowedPacket {
		cfg.MaxAllowedPacket = 0 // ask the server
	}
	c, err := driver.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	return sqltable.ReadyPool(ctx, sql.OpenDB(c))
}

// Quote implements sqltable.Dialect.
func (Dialect) Quote(ident string) string { return sqltable.QuoteDotted(ident, "`") }

// Param implements sqltable.Dialect.
func (Dialect) Param(int) string { return "?" }

// Bind implements sqltable.Dialect: MySQL converts text to every type
// exactly.
func (Dialect) Bind(_ batch.Column, p string) string { return p }

// Select implements sqltable.Dialect. FLOAT is widened to DOUBLE: the
// text protocol prints a FLOAT with six significant digits only.
func (Dialect) Select(c batch.Column, ident string) string {
	if c.Type == batch.TypeFloat {
		return "CAST(" + ident + " AS DOUBLE)"
	}
	return ident
}

// Limit implements sqltable.Dialect.
func (Dialect) Limit(q string, n int) string { return q + " LIMIT " + strconv.Itoa(n) }

type columnRow struct {
	Name      string         `db:"COLUMN_NAME"`
	DataType  string         `db:"DATA_TYPE"`
	Type      string         `db:"COLUMN_TYPE"`
	Nullable  string         `db:"IS_NULLABLE"`
	CharLen   sql.NullInt64  `db:"CHARACTER_MAXIMUM_LENGTH"`
	Precision sql.NullInt64  `db:"NUMERIC_PRECISION"`
	Scale     sql.NullInt64  `db:"NUMERIC_SCALE"`
	TimePrec  sql.NullInt64  `db:"DATETIME_PRECISION"`
	Charset   sql.NullString `db:"CHARACTER_SET_NAME"`
}

type indexRow struct {
	Name      string `db:"INDEX_NAME"`
	NonUnique int    `db:"NON_UNIQUE"`
	Seq       int    `db:"SEQ_IN_INDEX"`
	Column    string `db:"COLUMN_NAME"`
}

func split(table string) (schema, name string) {
	if i := strings.LastIndex(table, "."); i >= 0 {
		return table[:i], table[i+1:]
	}
	return "", table
}

// Describe implements sqltable.Dialect from information_schema.
func (d Dialect) Describe(ctx context.Context, db *sql.DB, table string) (*sqltable.Table, error) {
	x := sqlx.NewDb(db, "mysql")
	schema, name := split(table)
	where := "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
	args := []any{name}
	if schema != "" {
		where = "TABLE_SCHEMA = ? AND TABLE_NAME = ?"
		args = []any{schema, name}
	}
	var cols []columnRow
	err := x.SelectContext(ctx, &cols, `SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, CHARACTER_MAXIMUM_LENGTH,
		NUMERIC_PRECISION, NUMERIC_SCALE, DATETIME_PRECISION, CHARACTER_SET_NAME
		FROM information_schema.COLUMNS WHERE `+where+` ORDER BY ORDINAL_POSITION`, args...)
	if err != nil {
		return nil, err
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("%w: %s", sqltable.ErrNoTable, table)
	}
	t := &sqltable.Table{Name: table, Native: map[string]string{}, Leading: map[string]bool{}}
	for _, c := range cols {
		t.Columns = append(t.Columns, logical(c))
		t.Native[c.Name] = c.Type
	}
	var idx []indexRow
	err = x.SelectContext(ctx, &idx, `SELECT INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME
		FROM information_schema.STATISTICS WHERE `+where+` ORDER BY INDEX_NAME, SEQ_IN_INDEX`, args...)
	if err != nil {
		return nil, err
	}
	unique := map[string][]string{}
	var order []string
	for _, i := range idx {
		if i.Seq == 1 {
			t.Leading[i.Column] = true
		}
		if i.NonUnique == 0 {
			if _, ok := unique[i.Name]; !ok {
				order = append(order, i.Name)
			}
			unique[i.Name] = append(unique[i.Name], i.Column)
		}
	}
	for _, n := range order {
		t.Unique = append(t.Unique, unique[n])
		if n == "PRIMARY" {
			t.Key = unique[n]
		}
	}
	return t, nil
}

// logical maps a MySQL column to its batch type; "" means unsupported.
func logical(c columnRow) batch.Column {
	col := batch.Column{Name: c.Name, Nullable: c.Nullable == "YES"}
	switch c.DataType {
	case "tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year":
		col.Type = batch.TypeInt
	case "decimal", "numeric":
		col.Type, col.Precision, col.Scale = batch.TypeDecimal, int(c.Precision.Int64), int(c.Scale.Int64)
	case "float":
		col.Type = batch.TypeFloat
	case "double", "real":
		col.Type = batch.TypeDouble
	case "char", "varchar", "enum", "set":
		col.Type, col.Length = batch.TypeString, c.CharLen.Int64
		if c.Charset.Valid && c.Charset.String == "binary" {
			col.Type = batch.TypeBinary
		}
	case "tinytext", "text", "mediumtext", "longtext", "json":
		col.Type = batch.TypeText
	case "binary", "varbinary":
		col.Type, col.Length = batch.TypeBinary, c.CharLen.Int64
	case "bit":
		col.Type, col.Length = batch.TypeBinary, (c.Precision.Int64+7)/8
	case "tinyblob", "blob", "mediumblob", "longblob":
		col.Type = batch.TypeBlob
	case "date":
		col.Type = batch.TypeDate
	case "time":
		col.Type, col.Precision = batch.TypeTime, int(c.TimePrec.Int64)
	case "datetime":
		col.Type, col.Precision = batch.TypeDatetime, int(c.TimePrec.Int64)
	case "timestamp":
		col.Type, col.Precision = batch.TypeTimestamp, int(c.TimePrec.Int64)
	}
	return col
}

// DescribeQuery implements sqltable.Dialect: the query's result shape is
// materialised as an empty temporary table and described like a table.
func (d Dialect) DescribeQuery(ctx context.Context, db *sql.DB, query string) ([]batch.Column, map[string]string, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "CREATE TEMPORARY TABLE qz_probe AS SELECT * FROM ("+query+") qz_q LIMIT 0"); err != nil {
		return nil, nil, err
	}
	defer conn.ExecContext(context.Background(), "DROP TEMPORARY TABLE IF EXISTS qz_probe")
	rows, err := conn.QueryContext(ctx, "SHOW COLUMNS FROM qz_probe")
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var cols []batch.Column
	native := map[string]string{}
	for rows.Next() {
		var field, typ, null string
		var key, extra, def sql.NullString
		if err := rows.Scan(&field, &typ, &null, &key, &def, &extra); err != nil {
			return nil, nil, err
		}
		cols = append(cols, logical(parseType(field, typ, null == "YES")))
		native[field] = typ
	}
	return cols, native, rows.Err()
}

// parseType reads a COLUMN_TYPE such as "decimal(12,2) unsigned".
func parseType(name, typ string, nullable bool) columnRow {
	c := columnRow{Name: name, Type: typ}
	if nullable {
		c.Nullable = "YES"
	}
	base, args, _ := strings.Cut(typ, "(")
	base = strings.Fields(base + " ")[0]
	c.DataType = base
	args, _, _ = strings.Cut(args, ")")
	var nums []int64
	for _, a := range strings.Split(args, ",") {
		if n, err := strconv.ParseInt(strings.TrimSpace(a), 10, 64); err == nil {
			nums = append(nums, n)
		}
	}
	at := func(i int) sql.NullInt64 {
		if i < len(nums) {
			return sql.NullInt64{Int64: nums[i], Valid: true}
		}
		return sql.NullInt64{}
	}
	switch base {
	case "decimal", "numeric":
		c.Precision, c.Scale = at(0), at(1)
	case "char", "varchar", "binary", "varbinary":
		c.CharLen = at(0)
	case "bit":
		c.Precision = at(0)
	case "time", "datetime", "timestamp":
		c.TimePrec = at(0)
	}
	return c
}

// Explain implements sqltable.Dialect.
func (Dialect) Explain(ctx context.Context, db *sql.DB, query string, args []any) (string, error) {
	rows, err := db.QueryContext(ctx, "EXPLAIN "+query, args...)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return "", err
		}
		var parts []string
		for i, c := range cols {
			if vals[i].Valid && c != "id" && c != "select_type" {
				parts = append(parts, c+"="+vals[i].String)
			}
		}
		out = append(out, strings.Join(parts, " "))
	}
	return strings.Join(out, "; "), rows.Err()
}

// Now implements sqltable.Dialect. Sessions run in UTC, so TIMESTAMP
// watermarks compare with UTC_TIMESTAMP; DATETIME columns hold wall clock
// in the zone the writers used, the server's unless told otherwise.
func (Dialect) Now(ctx context.Context, q sqltable.Querier, c batch.Column, lag time.Duration, zone string) (string, error) {
	now := "UTC_TIMESTAMP(6)"
	if c.Type != batch.TypeTimestamp {
		if zone == "" {
			// The server's zone as an offset: works without the time
			// zone tables, and for SYSTEM.
			now = "TIMESTAMPADD(SECOND, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), CONVERT_TZ(UTC_TIMESTAMP(), '+00:00', @@global.time_zone)), UTC_TIMESTAMP(6))"
			now = "IFNULL(" + now + ", " + "TIMESTAMPADD(SECOND, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), SYSDATE()), UTC_TIMESTAMP(6)))"
		} else {
			now = "CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', ?)"
		}
	}
	format := "'%Y-%m-%d %H:%i:%s.%f'"
	if c.Type == batch.TypeDate {
		format = "'%Y-%m-%d'"
	}
	query := "SELECT DATE_FORMAT(" + now + " - INTERVAL ? MICROSECOND, " + format + ")"
	args := []any{lag.Microseconds()}
	if zone != "" && c.Type != batch.TypeTimestamp {
		args = append([]any{zone}, args...)
	}
	var v sql.NullString
	if err := q.QueryRowContext(ctx, query, args...).Scan(&v); err != nil {
		return "", err
	}
	if !v.Valid {
		return "", fmt.Errorf("time_zone %q is unknown to the server: use an offset such as +08:00", zone)
	}
	return v.String, nil
}

// Snapshot implements sqltable.Dialect with a consistent-snapshot
// transaction (InnoDB).
func (Dialect) Snapshot(ctx context.Context, db *sql.DB, _ string) (sqltable.Snapshot, error) {
	return sqltable.BeginConnSnapshot(ctx, db,
		"SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
		"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
}

// CreateTable implements sqltable.Dialect. Text keys are compared
// byte-wise (utf8mb4_bin), as Oracle and most sources do, so keys that
// differ only in case stay distinct.
func (d Dialect) CreateTable(table string, s *batch.Schema) (string, error) {
	return sqltable.CreateTableSQL(d, table, s, sqltable.NotNullUnlessNullable(nativeType), " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin")
}

func nativeType(c batch.Column) (string, error) {
	switch c.Type {
	case batch.TypeInt:
		return "BIGINT", nil
	case batch.TypeDecimal:
		if c.Precision == 0 || c.Precision > 65 {
			// Oracle NUMBER without precision: 38 significant digits at
			// any scale; DECIMAL(65,30) holds the common range exactly.
			return "DECIMAL(65,30)", nil
		}
		return fmt.Sprintf("DECIMAL(%d,%d)", c.Precision, min(c.Scale, 30)), nil
	case batch.TypeFloat:
		return "FLOAT", nil
	case batch.TypeDouble:
		return "DOUBLE", nil
	case batch.TypeString:
		if c.Length > 0 && c.Length <= 16383 {
			return fmt.Sprintf("VARCHAR(%d)", c.Length), nil
		}
		return "LONGTEXT", nil
	case batch.TypeText:
		return "LONGTEXT", nil
	case batch.TypeBinary:
		if c.Length > 0 && c.Length <= 65535 {
			return fmt.Sprintf("VARBINARY(%d)", c.Length), nil
		}
		return "LONGBLOB", nil
	case batch.TypeBlob:
		return "LONGBLOB", nil
	case batch.TypeDate:
		return "DATE", nil
	case batch.TypeTime:
		return fmt.Sprintf("TIME(%d)", min(c.Precision, 6)), nil
	case batch.TypeDatetime:
		if c.Precision > 6 {
			// DATETIME keeps 6 fraction digits; text keeps all 9.
			return "VARCHAR(29)", nil
		}
		return fmt.Sprintf("DATETIME(%d)", c.Precision), nil
	case batch.TypeTimestamp:
		if c.Precision > 6 {
			return "VARCHAR(29)", nil
		}
		return fmt.Sprintf("TIMESTAMP(%d)", c.Precision), nil
	case batch.TypeTimestampTZ:
		// MySQL has no type keeping an offset: keep the canonical text.
		return "VARCHAR(40)", nil
	}
	return "", fmt.Errorf("column %s: no MySQL type for %q", c.Name, c.Type)
}

// UpsertRows implements sqltable.Dialect.
func (Dialect) UpsertRows(ncols int) int { return max(1, min(1000, 60000/max(ncols, 1))) }

// Upsert implements sqltable.Dialect with a multi-row INSERT … ON
// DUPLICATE KEY UPDATE (VALUES() works on MySQL, MariaDB, TiDB and
// OceanBase alike).
func (d Dialect) Upsert(table string, cols []batch.Column, key []string, rows int) string {
	var b strings.Builder
	b.WriteString(sqltable.InsertValues(d, table, cols, rows))
	b.WriteString(" ON DUPLICATE KEY UPDATE ")
	n := 0
	for _, c := range cols {
		if slices.Contains(key, c.Name) {
			continue
		}
		if n > 0 {
			b.WriteString(", ")
		}
		q := d.Quote(c.Name)
		b.WriteString(q + " = VALUES(" + q + ")")
		n++
	}
	if n == 0 {
		q := d.Quote(key[0])
		b.WriteString(q + " = " + q)
	}
	return b.String()
}

// BeginApply implements sqltable.Dialect.
func (Dialect) BeginApply(ctx context.Context, db *sql.DB) (*sql.Tx, error) {
	return db.BeginTx(ctx, nil)
}
