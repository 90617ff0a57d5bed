package sqltable

import (
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

// ErrNoTable is wrapped by Describe when the table does not exist.
var ErrNoTable = errors.New("table not found")

// ErrSnapshotTooOld is wrapped by a dialect's reads when a snapshot can no
// longer be read (Oracle: the undo for its SCN is gone); the source then
// goes on from its checkpoint in a new snapshot.
var ErrSnapshotTooOld = errors.New("snapshot too old")

// Classifier is implemented by dialects that recognise some of their
// engine's errors (e.g. as ErrSnapshotTooOld) wherever they are met.
type Classifier interface {
	Classify(err error) error
}

// ToText turns a scanned value into the canonical text of column c (nil
// for NULL). Drivers hand back []byte, string, int64, float64 or time.Time
// depending on engine and protocol; all become the one form the batch
// format documents.
func ToText(c *batch.Column, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case []byte:
		switch c.Type {
		case batch.TypeDecimal:
			return normDecimal(x), nil
		case batch.TypeFloat, batch.TypeDouble:
			// Engines print floats their own way (MySQL: six digits for
			// FLOAT); the canonical form is the shortest that reads back.
			bits := 64
			if c.Type == batch.TypeFloat {
				bits = 32
			}
			f, err := strconv.ParseFloat(string(x), 64)
			if err != nil {
				return nil, fmt.Errorf("column %s: %q is not a number", c.Name, x)
			}
			return strconv.AppendFloat(nil, f, 'g', -1, bits), nil
		}
		return x, nil
	case string:
		return ToText(c, []byte(x))
	case int64:
		return strconv.AppendInt(nil, x, 10), nil
	case uint64:
		return strconv.AppendUint(nil, x, 10), nil
	case float64:
		if c.Type == batch.TypeFloat {
			return strconv.AppendFloat(nil, x, 'g', -1, 32), nil
		}
		if c.Type == batch.TypeDecimal || c.Type == batch.TypeInt {
			return nil, fmt.Errorf("column %s: the driver returned a binary float for an exact number; select it as text", c.Name)
		}
		return strconv.AppendFloat(nil, x, 'g', -1, 64), nil
	case float32:
		return strconv.AppendFloat(nil, float64(x), 'g', -1, 32), nil
	case bool:
		if x {
			return []byte("1"), nil
		}
		return []byte("0"), nil
	case time.Time:
		return []byte(FormatTime(c, x)), nil
	case *big.Int:
		return []byte(x.String()), nil
	}
	return nil, fmt.Errorf("column %s: cannot encode a %T", c.Name, v)
}

// FormatTime writes t in the canonical form of column c's type.
func FormatTime(c *batch.Column, t time.Time) string {
	switch c.Type {
	case batch.TypeDate:
		return t.Format("2006-01-02")
	case batch.TypeTimestamp:
		t = t.UTC()
	case batch.TypeTimestampTZ:
		return t.Format("2006-01-02 15:04:05"+fraction(c.Precision)) + " " + t.Format("-07:00")
	}
	return t.Format("2006-01-02 15:04:05" + fraction(c.Precision))
}

func fraction(p int) string {
	if p <= 0 {
		return ""
	}
	return "." + strings.Repeat("0", min(p, 9))
}

// normDecimal turns engine spellings such as ".5", "-.5" and "5." into
// "0.5", "-0.5" and "5".
func normDecimal(b []byte) []byte {
	s := string(b)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	if strings.HasPrefix(s, ".") {
		s = "0" + s
	}
	s = strings.TrimSuffix(s, ".")
	if neg {
		s = "-" + s
	}
	if s == string(b) {
		return b
	}
	return []byte(s)
}

// keyAfter is the condition "key > last" spelled so that engines plan it
// as an index range on the first key column:
//
//	k1 >= ? AND (k1 > ? OR (k2 >= ? AND (k2 > ? OR k3 > ?)))
//
// It returns the condition and how many parameters each key value takes,
// in order.
func keyAfter(d Dialect, key []batch.Column, last [][]byte, next func() string) (string, []any) {
	var b strings.Builder
	var args []any
	var rec func(i int)
	rec = func(i int) {
		c := key[i]
		q := d.Quote(c.Name)
		if i == len(key)-1 {
			b.WriteString(q + " > " + d.Bind(c, next()))
			args = append(args, bindValue(&c, last[i]))
			return
		}
		b.WriteString(q + " >= " + d.Bind(c, next()) + " AND (" + q + " > " + d.Bind(c, next()) + " OR (")
		args = append(args, bindValue(&c, last[i]), bindValue(&c, last[i]))
		rec(i + 1)
		b.WriteString("))")
	}
	rec(0)
	return b.String(), args
}

// params numbers placeholders from 1.
type params struct {
	d Dialect
	n int
}

func (p *params) next() string { p.n++; return p.d.Param(p.n) }
