package batch

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestRowsRoundTrip(t *testing.T) {
	s := &Schema{Columns: []Column{{Name: "id", Type: TypeInt}, {Name: "name", Type: TypeString, Nullable: true}, {Name: "photo", Type: TypeBlob, Nullable: true}}, Key: []string{"id"}}
	var w, first RowWriter
	first.Upsert([][]byte{[]byte("1"), []byte("张三"), nil})
	big := bytes.Repeat([]byte{0, 1, 2, 255}, 100000)
	w.Upsert([][]byte{[]byte("1"), []byte("张三"), nil})
	w.Upsert([][]byte{[]byte("2"), []byte{}, big})
	w.Delete([][]byte{[]byte("3")})
	if w.Rows() != 3 {
		t.Fatalf("rows %d", w.Rows())
	}
	rr := NewRowReader(bytes.NewReader(w.Bytes()), s)
	r, err := rr.Next()
	if err != nil || r.Op != RowUpsert || string(r.Values[1]) != "张三" || r.Values[2] != nil {
		t.Fatalf("row 1: %v %+v", err, r)
	}
	r, err = rr.Next()
	if err != nil || r.Values[1] == nil || len(r.Values[1]) != 0 || !bytes.Equal(r.Values[2], big) {
		t.Fatalf("row 2: empty string must stay empty, not NULL; blob must round-trip: %v", err)
	}
	r, err = rr.Next()
	if err != nil || r.Op != RowDelete || len(r.Values) != 1 || string(r.Values[0]) != "3" {
		t.Fatalf("row 3: %v %+v", err, r)
	}
	if _, err := rr.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
	// Every truncation is an error, never a short row taken as whole.
	body := w.Bytes()
	for n := 1; n < 40; n++ {
		rr := NewRowReader(bytes.NewReader(body[:n]), s)
		_, err := rr.Next()
		if err == nil {
			_, err = rr.Next()
		}
		if !errors.Is(err, ErrRowFormat) && err != io.EOF {
			t.Fatalf("cut at %d: %v", n, err)
		}
		if err == io.EOF && n != first.Len() {
			// a clean EOF is only possible on a row boundary
			t.Fatalf("cut at %d read as complete", n)
		}
	}
}

func TestSchemaFingerprintChanges(t *testing.T) {
	cols := []Column{{Name: "id", Type: TypeInt}, {Name: "amount", Type: TypeDecimal, Precision: 12, Scale: 2}}
	a := SchemaFingerprint(cols, []string{"id"})
	cols2 := append(cols[:2:2], Column{Name: "note", Type: TypeText, Nullable: true})
	if SchemaFingerprint(cols2, []string{"id"}) == a {
		t.Fatal("an added column must change the fingerprint")
	}
	cols[1].Scale = 3
	if SchemaFingerprint(cols, []string{"id"}) == a {
		t.Fatal("a changed scale must change the fingerprint")
	}
}

// TestRowBatchSealedAndInspected writes a sealed row batch, reads it back
// through Verify, and prints it.
func TestRowBatchSealedAndInspected(t *testing.T) {
	key := newKey(t)
	cols := []Column{{Name: "id", Type: TypeInt}, {Name: "金额", Type: TypeDecimal, Precision: 18, Scale: 4, Nullable: true}}
	s := &Schema{Table: "people", Columns: cols, Key: []string{"id"}, Fingerprint: SchemaFingerprint(cols, []string{"id"}), Phase: "incremental", From: "2026-01-01 00:00:00", To: "2026-01-02 00:00:00"}
	var w RowWriter
	w.Upsert([][]byte{[]byte("1"), []byte("12.3400")})
	w.Delete([][]byte{[]byte("2")})
	h := testHeader(nil, w.Bytes(), CompressionZstd)
	h.Kind, h.Files, h.Schema, h.Rows = KindRows, nil, s, w.Rows()
	b := writeBatch(t, h, w.Bytes(), key)
	info, err := Verify(bytes.NewReader(b), int64(len(b)), lookupFor(key))
	if err != nil {
		t.Fatal(err)
	}
	if info.Header.Schema.Fingerprint != s.Fingerprint || info.Header.Rows != 2 {
		t.Fatalf("header read back: %+v", info.Header.Schema)
	}
	var out strings.Builder
	Inspect(&out, info, nil)
	for _, want := range []string{"kind rows", "2 (incremental of people", "from 2026-01-01 00:00:00", "decimal(18,4) null", "金额", "key (id)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("inspect lacks %q:\n%s", want, out.String())
		}
	}
}

// TestNormalizeAcrossEngines: values two engines spell differently sum
// alike; values that differ do not.
func TestNormalizeAcrossEngines(t *testing.T) {
	dec := []Column{{Name: "a", Type: TypeDecimal}}
	dt := []Column{{Name: "a", Type: TypeDatetime}}
	date := []Column{{Name: "a", Type: TypeDate}}
	str := []Column{{Name: "a", Type: TypeString}}
	tz := []Column{{Name: "a", Type: TypeTimestampTZ}}
	sum := func(cols []Column, v string) uint64 { return RowSum([][]byte{[]byte(v)}, cols) }
	same := [][2]uint64{
		{sum(dec, "12.5"), sum(dec, "12.500000000000000000000000000000")},
		{sum(dec, "-0.000"), sum(dec, "0")},
		{sum(dt, "2026-01-02 03:04:05.120"), sum(dt, "2026-01-02 03:04:05.12")},
		{sum(dt, "2024-01-02 00:00:00"), sum(date, "2024-01-02")},
		{sum(tz, "2026-01-02 03:04:05.500 +08:00"), sum(tz, "2026-01-02 03:04:05.5 +08:00")},
		{RowSum([][]byte{{}}, str), RowSum([][]byte{nil}, str)},
	}
	for i, p := range same {
		if p[0] != p[1] {
			t.Errorf("pair %d should sum alike", i)
		}
	}
	differ := [][2]uint64{
		{sum(dec, "12.5"), sum(dec, "125")},
		{sum(dt, "2026-01-02 03:04:05.1"), sum(dt, "2026-01-02 03:04:05.01")},
		{sum(dt, "2024-01-02 00:00:01"), sum(date, "2024-01-02")},
		{sum(tz, "2026-01-02 03:04:05 +08:00"), sum(tz, "2026-01-02 03:04:05 +09:00")},
		{sum(str, "a"), sum(str, "A")},
	}
	for i, p := range differ {
		if p[0] == p[1] {
			t.Errorf("pair %d should differ", i)
		}
	}
}

// FuzzRowReader feeds arbitrary bodies to the row reader: it must end in
// rows, io.EOF, ErrRowFormat or ErrLimit, never panic, and never hold much more
// memory than the body it was given.
func FuzzRowReader(f *testing.F) {
	s := &Schema{Columns: []Column{{Name: "id", Type: TypeInt}, {Name: "v", Type: TypeBlob}}, Key: []string{"id"}}
	var w RowWriter
	w.Upsert([][]byte{[]byte("1"), []byte("x")})
	w.Delete([][]byte{[]byte("2")})
	f.Add(w.Bytes())
	f.Add([]byte{'U', 0xff, 0xff, 0xff, 0xff, 0x07}) // a 2 GiB value claimed, no bytes
	f.Add([]byte{'X'})
	f.Fuzz(func(t *testing.T, body []byte) {
		rr := NewRowReader(bytes.NewReader(body), s)
		for range 1000 {
			r, err := rr.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				if !errors.Is(err, ErrRowFormat) && !errors.Is(err, ErrLimit) {
					t.Fatalf("error %v is neither ErrRowFormat nor ErrLimit", err)
				}
				return
			}
			if cap(rr.buf) > 2*len(body)+(2<<20) {
				t.Fatalf("reader holds %d bytes for a %d-byte body", cap(rr.buf), len(body))
			}
			if r.Op != RowUpsert && r.Op != RowDelete {
				t.Fatalf("op %q", r.Op)
			}
		}
	})
}
