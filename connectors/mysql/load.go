package mysql

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"

	driver "github.com/go-sql-driver/mysql"

	"github.com/qianzhi/qianzhi/connectors/sqltable"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

var loads atomic.Uint64

// BulkUpsert implements sqltable.BulkLoader with LOAD DATA LOCAL INFILE …
// REPLACE, the rows streamed from memory through the driver's reader
// handler: tab-separated, backslash-escaped, NULL as \N, and binary
// columns in hex (UNHEX on the server) so no character set touches them.
func (d Dialect) BulkUpsert(ctx context.Context, tx *sql.Tx, table string, cols []batch.Column, next func() ([][]byte, error)) error {
	name := "qz-" + strconv.FormatUint(loads.Add(1), 10)
	r := &loadReader{next: next, cols: cols}
	driver.RegisterReaderHandler(name, func() io.Reader { return r })
	defer driver.DeregisterReaderHandler(name)
	var list, set []string
	for i, c := range cols {
		q := d.Quote(c.Name)
		if isBinary(c) {
			v := "@v" + strconv.Itoa(i)
			list = append(list, v)
			set = append(set, q+" = UNHEX("+v+")")
			continue
		}
		list = append(list, q)
	}
	stmt := "LOAD DATA LOCAL INFILE 'Reader::" + name + "' REPLACE INTO TABLE " + d.Quote(table) +
		" CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' (" + strings.Join(list, ", ") + ")"
	if len(set) > 0 {
		stmt += " SET " + strings.Join(set, ", ")
	}
	_, err := tx.ExecContext(ctx, stmt)
	if r.err != nil {
		return r.err // the rows could not be read: that, not what the server made of it
	}
	var me *driver.MySQLError
	if errors.As(err, &me) && (me.Number == 1148 || me.Number == 3948 || me.Number == 4166) {
		return fmt.Errorf("%w: %v", sqltable.ErrBulkRefused, err)
	}
	if err != nil {
		return err
	}
	// LOCAL turns what INSERT refuses in strict mode (a value too long, out
	// of range, not a date) into warnings and stores something else. Any
	// warning undoes the load; the batch is applied again with INSERT,
	// which names the problem.
	var level, msg string
	var code int
	switch err := tx.QueryRowContext(ctx, "SHOW WARNINGS LIMIT 1").Scan(&level, &code, &msg); {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: it warned %s %d: %s", sqltable.ErrBulkRefused, level, code, msg)
}

func isBinary(c batch.Column) bool { return c.Type == batch.TypeBinary || c.Type == batch.TypeBlob }

// loadReader encodes rows into LOAD DATA's text format as the driver reads.
type loadReader struct {
	next func() ([][]byte, error)
	cols []batch.Column
	buf  bytes.Buffer
	err  error
	done bool
}

func (r *loadReader) Read(p []byte) (int, error) {
	for r.buf.Len() < len(p) && !r.done {
		vals, err := r.next()
		if err == io.EOF {
			r.done = true
			break
		}
		if err != nil {
			r.err, r.done = err, true
			return 0, err
		}
		for i, v := range vals {
			if i > 0 {
				r.buf.WriteByte('\t')
			}
			switch {
			case v == nil:
				r.buf.WriteString(`\N`)
			case isBinary(r.cols[i]):
				n := r.buf.Len()
				r.buf.Grow(2 * len(v))
				r.buf.Write(make([]byte, 2*len(v)))
				hex.Encode(r.buf.Bytes()[n:], v)
			default:
				writeEscaped(&r.buf, v)
			}
		}
		r.buf.WriteByte('\n')
	}
	if r.buf.Len() == 0 && r.done {
		return 0, io.EOF
	}
	return r.buf.Read(p)
}

// writeEscaped writes v with LOAD DATA's escapes: backslash, tab, newline,
// carriage return and NUL.
func writeEscaped(b *bytes.Buffer, v []byte) {
	start := 0
	for i, c := range v {
		var esc string
		switch c {
		case '\\':
			esc = `\\`
		case '\t':
			esc = `\t`
		case '\n':
			esc = `\n`
		case '\r':
			esc = `\r`
		case 0:
			esc = `\0`
		default:
			continue
		}
		b.Write(v[start:i])
		b.WriteString(esc)
		start = i + 1
	}
	b.Write(v[start:])
}

// BulkSafe implements sqltable.BulkLoader: REPLACE deletes and inserts a
// row where INSERT … ON DUPLICATE KEY UPDATE changes it in place, so a
// trigger on the table or a foreign key pointing at it (ON DELETE CASCADE)
// would see deletes. Bulk loads are used only where there is neither.
func (d Dialect) BulkSafe(ctx context.Context, db *sql.DB, table string) (bool, error) {
	schema, name := split(table)
	var n int
	err := db.QueryRowContext(ctx, `SELECT
		(SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND EVENT_OBJECT_TABLE = ?) +
		(SELECT COUNT(*) FROM information_schema.KEY_COLUMN_USAGE WHERE REFERENCED_TABLE_SCHEMA = COALESCE(NULLIF(?, ''), DATABASE()) AND REFERENCED_TABLE_NAME = ?)`,
		schema, name, schema, name).Scan(&n)
	return n == 0, err
}
