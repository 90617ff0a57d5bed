package batch

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Logical column types of a row batch. Every engine's types map onto these
// (docs/type-mapping.md); values travel as their canonical text (bytes for
// binary and blob), never as binary floats or engine-specific encodings.
const (
	TypeInt         = "int"         // decimal digits with optional sign
	TypeDecimal     = "decimal"     // exact decimal string, e.g. "-12.3400"; Precision, Scale
	TypeFloat       = "float"       // shortest text that round-trips a float32
	TypeDouble      = "double"      // shortest text that round-trips a float64
	TypeString      = "string"      // UTF-8 text up to Length characters
	TypeText        = "text"        // UTF-8 text without a declared bound (CLOB, TEXT)
	TypeBinary      = "binary"      // bytes up to Length
	TypeBlob        = "blob"        // bytes without a declared bound
	TypeDate        = "date"        // "2006-01-02"
	TypeTime        = "time"        // "15:04:05[.ffffff]" (MySQL TIME; may be negative or exceed 24h)
	TypeDatetime    = "datetime"    // wall clock "2006-01-02 15:04:05[.f…]" with exactly Precision fraction digits
	TypeTimestamp   = "timestamp"   // an instant, as UTC wall clock in the datetime form
	TypeTimestampTZ = "timestamptz" // wall clock with its offset: "2006-01-02 15:04:05[.f…] +08:00"
)

var logicalTypes = map[string]bool{
	TypeInt: true, TypeDecimal: true, TypeFloat: true, TypeDouble: true, TypeString: true, TypeText: true,
	TypeBinary: true, TypeBlob: true, TypeDate: true, TypeTime: true, TypeDatetime: true,
	TypeTimestamp: true, TypeTimestampTZ: true,
}

// Row operations in a row batch body.
const (
	RowUpsert byte = 'U' // every column, in Schema.Columns order
	RowDelete byte = 'D' // the key columns only, in Schema.Key order
)

// Schema describes the rows of a KindRows batch.
type Schema struct {
	// Table is the provider's table (or query) name, for messages only.
	Table string `json:"table,omitempty"`
	// Columns are in the order values appear in an upsert row.
	Columns []Column `json:"columns"`
	// Key names the columns that identify a row, in order.
	Key []string `json:"key"`
	// Fingerprint is SchemaFingerprint of Columns and Key.
	Fingerprint string `json:"fingerprint"`
	// Phase is "snapshot", "incremental" or "reconcile", for messages and
	// progress only.
	Phase string `json:"phase,omitempty"`
	// From and To are the watermark range the batch covers (canonical text,
	// To exclusive), when the phase has one.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Reconcile is set on the batches of a reconciliation (Phase
	// "digest" or "replace").
	Reconcile *Reconcile `json:"reconcile,omitempty"`
}

// Reconcile phases.
const (
	// PhaseDigest batches carry no rows, only the provider's count and sum
	// of every bucket; the consumer answers with the buckets that differ.
	PhaseDigest = "digest"
	// PhaseReplace batches carry every provider row of some buckets; the
	// consumer deletes its rows of those buckets that the batch lacks.
	PhaseReplace = "replace"
)

// Reconcile describes a reconciliation batch. Rows are put in buckets by a
// hash of their key (KeyBucket), so both sides agree on membership whatever
// their engines' collations and orders.
type Reconcile struct {
	// Buckets is the number of buckets.
	Buckets int `json:"buckets"`
	// Counts and Sums (digest phase) hold each bucket's row count and the
	// sum of its rows' RowSum, as 16 hex digits.
	Counts []int64  `json:"counts,omitempty"`
	Sums   []string `json:"sums,omitempty"`
	// Replace (replace phase) lists the buckets this batch carries whole.
	Replace []int `json:"replace,omitempty"`
	// Verify marks a digest sent only to compare (qz-agent verify): the
	// consumer answers as for any digest, and nothing is resent.
	Verify bool `json:"verify,omitempty"`
}

// Column is one column of a row schema.
type Column struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	Nullable  bool   `json:"nullable,omitempty"`
	Length    int64  `json:"length,omitempty"`    // characters (string) or bytes (binary)
	Precision int    `json:"precision,omitempty"` // digits (decimal) or fraction digits (time types)
	Scale     int    `json:"scale,omitempty"`     // decimal
}

// SchemaFingerprint is a short hash of what a consumer must agree with: the
// column names, types, sizes and nullability in order, and the key.
func SchemaFingerprint(cols []Column, key []string) string {
	h := sha256.New()
	for _, c := range cols {
		fmt.Fprintf(h, "%s\x00%s\x00%t\x00%d\x00%d\x00%d\n", c.Name, c.Type, c.Nullable, c.Length, c.Precision, c.Scale)
	}
	fmt.Fprintf(h, "key\x00%s", strings.Join(key, "\x00"))
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Column returns the index of the named column, or -1.
func (s *Schema) Column(name string) int {
	for i, c := range s.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// KeyIndex returns the column indexes of the key, in key order.
func (s *Schema) KeyIndex() []int {
	idx := make([]int, len(s.Key))
	for i, k := range s.Key {
		idx[i] = s.Column(k)
	}
	return idx
}

// Validate reports every problem with the schema.
func (s *Schema) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("schema: "+format, args...)) }
	if len(s.Columns) == 0 {
		add("no columns")
	}
	seen := map[string]bool{}
	for i, c := range s.Columns {
		if c.Name == "" || len(c.Name) > 128 || !utf8.ValidString(c.Name) || strings.ContainsAny(c.Name, "\x00`\".") {
			add("column %d: name %q is empty, too long or has forbidden characters", i, c.Name)
		}
		if seen[c.Name] {
			add("column %q appears twice", c.Name)
		}
		seen[c.Name] = true
		if !logicalTypes[c.Type] {
			add("column %q: unknown type %q", c.Name, c.Type)
		}
		if c.Length < 0 || c.Precision < 0 || c.Scale < 0 || c.Precision > 1000 || c.Scale > c.Precision && c.Type == TypeDecimal {
			add("column %q: impossible length, precision or scale", c.Name)
		}
	}
	if len(s.Key) == 0 {
		add("no key columns")
	}
	for _, k := range s.Key {
		if s.Column(k) < 0 {
			add("key column %q is not among the columns", k)
		}
	}
	if s.Fingerprint != SchemaFingerprint(s.Columns, s.Key) {
		add("fingerprint %q does not match the columns", s.Fingerprint)
	}
	if rc := s.Reconcile; rc != nil {
		if rc.Buckets < 1 || rc.Buckets > MaxBuckets {
			add("reconcile: %d buckets, want 1..%d", rc.Buckets, MaxBuckets)
		}
		switch s.Phase {
		case PhaseDigest:
			if len(rc.Counts) != rc.Buckets || len(rc.Sums) != rc.Buckets {
				add("reconcile: digest needs a count and a sum for each of %d buckets", rc.Buckets)
			}
		case PhaseReplace:
			for _, b := range rc.Replace {
				if b < 0 || b >= rc.Buckets {
					add("reconcile: bucket %d out of range", b)
				}
			}
		default:
			add("reconcile: phase %q, want %q or %q", s.Phase, PhaseDigest, PhaseReplace)
		}
	}
	return errs
}

// MaxBuckets bounds Reconcile.Buckets.
const MaxBuckets = 1 << 16

// Normalize returns the form of a canonical value that two engines agree
// on even when their types differ in scale: decimals and fractions of
// seconds without trailing zeros ("12.50" and "12.500" are one number), and
// a date-time at midnight as its date (an Oracle DATE holds what a MySQL
// DATE held).
func Normalize(c *Column, v []byte) []byte {
	switch c.Type {
	case TypeDecimal:
		if i := bytes.IndexByte(v, '.'); i >= 0 {
			v = bytes.TrimRight(v, "0")
			v = bytes.TrimSuffix(v, []byte("."))
		}
		if string(v) == "-0" {
			return []byte("0")
		}
	case TypeDatetime, TypeTimestamp, TypeTime:
		if i := bytes.IndexByte(v, '.'); i >= 0 {
			v = bytes.TrimRight(v, "0")
			v = bytes.TrimSuffix(v, []byte("."))
		}
		if c.Type != TypeTime {
			v = bytes.TrimSuffix(v, []byte(" 00:00:00"))
		}
	case TypeTimestampTZ:
		if i := bytes.IndexByte(v, '.'); i >= 0 {
			if j := bytes.IndexByte(v[i:], ' '); j > 0 {
				frac := bytes.TrimSuffix(bytes.TrimRight(v[i:i+j], "0"), []byte("."))
				v = append(append(append([]byte{}, v[:i]...), frac...), v[i+j:]...)
			}
		}
	}
	return v
}

// KeyBucket puts a row in a bucket by its key values (in Schema.Key
// order).
func KeyBucket(key [][]byte, keyCols []Column, buckets int) int {
	h := sha256.New()
	for i, v := range key {
		writeValue(h, Normalize(&keyCols[i], v))
	}
	var sum [32]byte
	return int(binary.BigEndian.Uint64(h.Sum(sum[:0])[:8]) % uint64(buckets))
}

// RowSum is a row's contribution to its bucket's sum: a hash of every
// value, normalised. An empty string or byte string counts as NULL here,
// because Oracle stores one as the other: a reconciliation between MySQL
// and Oracle would otherwise never agree.
func RowSum(vals [][]byte, cols []Column) uint64 {
	h := sha256.New()
	for i, v := range vals {
		n := Normalize(&cols[i], v)
		if len(n) == 0 {
			n = nil
		}
		writeValue(h, n)
	}
	var sum [32]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0])[:8])
}

func writeValue(w io.Writer, v []byte) {
	var n [binary.MaxVarintLen64]byte
	if v == nil {
		w.Write([]byte{0})
		return
	}
	w.Write(n[:binary.PutUvarint(n[:], uint64(len(v))+1)])
	w.Write(v)
}

// Row is one decoded row. Values alias the reader's buffer and are valid
// until the next call to Next; a nil value is SQL NULL (an empty non-nil
// slice is the empty string).
type Row struct {
	Op     byte
	Values [][]byte
}

// RowWriter appends rows to a batch body.
//
// Each row is its op byte followed by its values, each a uvarint n and then
// n-1 bytes, where n = 0 stands for NULL.
type RowWriter struct {
	buf []byte
	n   int64
}

// Upsert appends a row with every column's value.
func (w *RowWriter) Upsert(vals [][]byte) { w.row(RowUpsert, vals) }

// Delete appends a delete with the key columns' values.
func (w *RowWriter) Delete(key [][]byte) { w.row(RowDelete, key) }

func (w *RowWriter) row(op byte, vals [][]byte) {
	w.buf = append(w.buf, op)
	for _, v := range vals {
		if v == nil {
			w.buf = append(w.buf, 0)
			continue
		}
		w.buf = binary.AppendUvarint(w.buf, uint64(len(v))+1)
		w.buf = append(w.buf, v...)
	}
	w.n++
}

// Len is the body size so far; Rows the rows written.
func (w *RowWriter) Len() int    { return len(w.buf) }
func (w *RowWriter) Rows() int64 { return w.n }

// Bytes returns the body.
func (w *RowWriter) Bytes() []byte { return w.buf }

// RowReader decodes a row batch body from a stream, one row at a time.
type RowReader struct {
	r      *bufio.Reader
	ncols  int
	nkey   int
	row    Row
	buf    []byte
	maxRow int64
}

// NewRowReader reads rows of schema s from body. A row whose values add up
// to more than DefaultLimits.MaxRowLen is refused with an error wrapping
// ErrLimit (a rejection) before it is read: the reader holds a row whole.
func NewRowReader(body io.Reader, s *Schema) *RowReader {
	return &RowReader{r: bufio.NewReaderSize(body, 256<<10), ncols: len(s.Columns), nkey: len(s.Key), maxRow: DefaultLimits.MaxRowLen}
}

// ErrRowFormat means the body does not hold the rows the header describes.
var ErrRowFormat = errors.New("malformed row body")

// Next returns the next row, or io.EOF after the last.
func (rr *RowReader) Next() (*Row, error) {
	op, err := rr.r.ReadByte()
	if err == io.EOF {
		return nil, io.EOF
	}
	if err != nil {
		return nil, err
	}
	n := rr.ncols
	switch op {
	case RowUpsert:
	case RowDelete:
		n = rr.nkey
	default:
		return nil, fmt.Errorf("%w: op byte %#x", ErrRowFormat, op)
	}
	rr.row.Op = op
	rr.row.Values = rr.row.Values[:0]
	rr.buf = rr.buf[:0]
	type span struct{ off, n int }
	var spans [64]span
	sp := spans[:0]
	for range n {
		l, err := binary.ReadUvarint(rr.r)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrRowFormat, noEOF(err))
		}
		if l == 0 {
			sp = append(sp, span{-1, 0})
			continue
		}
		l--
		if l > uint64(rr.maxRow-int64(len(rr.buf))) {
			return nil, Reject(ErrLimit, fmt.Sprintf("a row holds a value of %d bytes after %d bytes of other values, more than the %s this agent accepts in one row",
				l, len(rr.buf), sizeText(rr.maxRow)))
		}
		off := len(rr.buf)
		// Grow a megabyte at a time, so that a length claiming more
		// than the body holds cannot make the reader allocate it.
		for left := int(l); left > 0; {
			n := min(left, 1<<20)
			at := len(rr.buf)
			rr.buf = append(rr.buf, make([]byte, n)...)
			if _, err := io.ReadFull(rr.r, rr.buf[at:]); err != nil {
				return nil, fmt.Errorf("%w: %v", ErrRowFormat, noEOF(err))
			}
			left -= n
		}
		sp = append(sp, span{off, int(l)})
	}
	for _, s := range sp {
		if s.off < 0 {
			rr.row.Values = append(rr.row.Values, nil)
		} else {
			rr.row.Values = append(rr.row.Values, rr.buf[s.off:s.off+s.n:s.off+s.n])
		}
	}
	return &rr.row, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
