package sqltable

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
)

// callConns is how many connections a source keeps idle once it answers
// calls: the agent runs up to this many calls at once, and a pool that
// kept fewer would close and reopen connections under load.
const callConns = 32

// compiledCall is a call's query in the engine's placeholders and the
// parameter names in the order they bind.
type compiledCall struct {
	query string
	order []string
}

// Call implements connectors.Caller. It runs c's query with the values
// bound, never written into the SQL, and reads at most max rows: the
// query itself is left as the provider wrote it (no LIMIT is added, so its
// ORDER BY decides which rows come first). Result columns are matched to
// c.Fields by name, ignoring case (Oracle upper-cases unquoted names), and
// read as canonical text the way batches are.
func (s *source) Call(ctx context.Context, c *connectors.CallDef, params map[string]string, max int) ([][][]byte, error) {
	cc, err := s.compiled(c)
	if err != nil {
		return nil, err
	}
	s.callInit.Do(func() { s.db.SetMaxIdleConns(callConns) })
	args := make([]any, len(cc.order))
	for i, name := range cc.order {
		v, ok := params[name]
		if !ok {
			return nil, fmt.Errorf("call %s: parameter %s has no value", c.Name, name)
		}
		args[i] = v
		if paramType(c, name) == api.ParamInt {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				args[i] = n
			}
		}
	}
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := s.db.QueryContext(qctx, cc.query, args...)
	if err != nil {
		return nil, fmt.Errorf("call %s: %w", c.Name, s.classify(err))
	}
	defer rows.Close()
	types, err := rows.ColumnTypes()
	if err != nil {
		return nil, fmt.Errorf("call %s: %w", c.Name, s.classify(err))
	}
	idx := make([]int, len(c.Fields))
	cols := make([]batch.Column, len(c.Fields))
	for i, f := range c.Fields {
		idx[i] = -1
		for j, t := range types {
			if strings.EqualFold(t.Name(), f) {
				idx[i] = j
				break
			}
		}
		if idx[i] < 0 {
			var names []string
			for _, t := range types {
				names = append(names, t.Name())
			}
			return nil, fmt.Errorf("call %s: its query returns no column %s (it returns: %s); name the column %s in the SELECT, or change fields", c.Name, f, strings.Join(names, ", "), f)
		}
		cols[i] = s.resultColumn(types[idx[i]])
	}
	vals := make([]any, len(types))
	ptrs := make([]any, len(types))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	var out [][][]byte
	for len(out) < max && rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("call %s: %w", c.Name, s.classify(err))
		}
		row := make([][]byte, len(c.Fields))
		for i, j := range idx {
			t, err := callText(&cols[i], vals[j])
			if err != nil {
				return nil, fmt.Errorf("call %s: %w", c.Name, err)
			}
			row[i] = t
		}
		out = append(out, row)
	}
	if len(out) == max && rows.Next() {
		// More rows than the answer takes: closing the rows would read
		// them all (the MySQL protocol has no other way to stop a result),
		// so the query is cancelled instead, at the cost of its connection.
		cancel()
		return out, nil
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("call %s: %w", c.Name, s.classify(err))
	}
	return out, nil
}

// compiled returns c's query in the dialect's placeholders, compiling it
// once per query text: a reload may change a call's query, and the old
// text then simply stops being asked for.
func (s *source) compiled(c *connectors.CallDef) (*compiledCall, error) {
	if v, ok := s.calls.Load(c.Query); ok {
		return v.(*compiledCall), nil
	}
	q, order, err := c.Compile(s.d.Param)
	if err != nil {
		return nil, err
	}
	cc := &compiledCall{query: q, order: order}
	s.calls.Store(c.Query, cc)
	return cc, nil
}

func paramType(c *connectors.CallDef, name string) string {
	for _, p := range c.Params {
		if p.Name == name {
			return p.Type
		}
	}
	return ""
}

// resultColumn is the logical type of a call's result column, from the
// type the driver reports. It is coarser than Describe (which reads the
// table's declared types): only what canonical text depends on matters
// here. An Oracle DATE holds a time of day, so there it is a datetime, as
// the oracle dialect describes it.
func (s *source) resultColumn(ct *sql.ColumnType) batch.Column {
	c := batch.Column{Name: ct.Name(), Nullable: true}
	name := strings.ToUpper(strings.TrimSpace(ct.DatabaseTypeName()))
	base, args, _ := strings.Cut(name, "(")
	base = strings.TrimSpace(strings.TrimPrefix(base, "UNSIGNED "))
	arg := func(i int) int {
		a := strings.Split(strings.TrimSuffix(strings.TrimSpace(args), ")"), ",")
		if i < len(a) {
			if n, err := strconv.Atoi(strings.TrimSpace(a[i])); err == nil && n >= 0 {
				return n
			}
		}
		return 0
	}
	switch base {
	case "DATE":
		c.Type = batch.TypeDate
		if s.d.Name() == "oracle" {
			c.Type = batch.TypeDatetime
		}
	case "DATETIME", "TIMESTAMP", "TIMESTAMPDTY":
		c.Type, c.Precision = batch.TypeDatetime, arg(0)
	case "TIMESTAMPLTZ_DTY", "TIMESTAMPELTZ":
		c.Type = batch.TypeTimestamp
	case "TIMESTAMPTZ", "TIMESTAMPTZ_DTY", "TIMESTAMP WITH TIME ZONE":
		c.Type, c.Precision = batch.TypeTimestampTZ, arg(0)
	case "TIME":
		c.Type, c.Precision = batch.TypeTime, arg(0)
	case "DECIMAL", "NUMERIC", "NUMBER", "DECIMAL_TEXT", "NEWDECIMAL":
		c.Type, c.Precision, c.Scale = batch.TypeDecimal, arg(0), arg(1)
		if p, sc, ok := ct.DecimalSize(); ok && p > 0 && p <= 65 && sc >= 0 && sc <= p {
			c.Precision, c.Scale = int(p), int(sc)
		}
	case "FLOAT4":
		c.Type = batch.TypeFloat
	case "FLOAT", "DOUBLE", "REAL", "DOUBLE PRECISION", "FLOAT8", "IBFLOAT", "IBDOUBLE", "BINARY_FLOAT", "BINARY_DOUBLE":
		// MySQL prints a FLOAT with at most six digits, which read back
		// as a double unchanged; SQLite's FLOAT is 8 bytes.
		c.Type = batch.TypeDouble
	case "BIT", "BINARY", "VARBINARY", "RAW", "LONGRAW", "BYTEA", "OCIBLOBLOCATOR":
		c.Type = batch.TypeBlob
	case "YEAR", "BOOL", "BOOLEAN":
		c.Type = batch.TypeInt
	default:
		switch {
		case strings.Contains(base, "INT"):
			c.Type = batch.TypeInt
		case strings.Contains(base, "BLOB"):
			c.Type = batch.TypeBlob
		default:
			c.Type = batch.TypeText
		}
	}
	return c
}

// callText is ToText for a call's result, with what a call's query cannot
// do for itself, where batches read each column through the dialect's
// Select: SQLite hands a DECIMAL(p,s) value back as the REAL or INTEGER it
// stored, written here with s fraction digits as the sqlite dialect does;
// and a time whose column reports no precision keeps the fraction digits
// it has (none for a whole second).
func callText(c *batch.Column, v any) ([]byte, error) {
	switch x := v.(type) {
	case float64:
		if c.Type == batch.TypeDecimal {
			if c.Precision > 0 {
				return strconv.AppendFloat(nil, x, 'f', c.Scale, 64), nil
			}
			return strconv.AppendFloat(nil, x, 'f', -1, 64), nil
		}
	case int64:
		if c.Type == batch.TypeDecimal && c.Precision > 0 && c.Scale > 0 {
			return append(strconv.AppendInt(nil, x, 10), "."+strings.Repeat("0", c.Scale)...), nil
		}
	case time.Time:
		if c.Type != batch.TypeDate && c.Precision == 0 && x.Nanosecond() != 0 {
			p := 9
			for n := x.Nanosecond(); n%10 == 0; n /= 10 {
				p--
			}
			cc := *c
			cc.Precision = p
			return ToText(&cc, x)
		}
	}
	return ToText(c, v)
}

var _ connectors.Caller = (*source)(nil)
