package mysql

import (
	"io"
	"testing"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

// TestLoadReaderFormat pins the LOAD DATA text: escapes, NULL, binary in
// hex, and rows spread over reads of any size.
func TestLoadReaderFormat(t *testing.T) {
	cols := []batch.Column{{Name: "id", Type: batch.TypeInt}, {Name: "s", Type: batch.TypeString}, {Name: "b", Type: batch.TypeBlob}}
	rows := [][][]byte{
		{[]byte("1"), []byte("a\tb\nc\\d\re\x00f"), {0x00, 0xff}},
		{[]byte("2"), nil, nil},
		{[]byte("3"), []byte(""), []byte{}},
		{[]byte("4"), []byte(`\N 北京`), []byte("x")},
	}
	want := "1\ta\\tb\\nc\\\\d\\re\\0f\t00ff\n2\t\\N\t\\N\n3\t\t\n4\t\\\\N 北京\t78\n"
	for _, size := range []int{1, 3, 7, 4096} {
		i := 0
		r := &loadReader{cols: cols, next: func() ([][]byte, error) {
			if i == len(rows) {
				return nil, io.EOF
			}
			i++
			return rows[i-1], nil
		}}
		var got []byte
		buf := make([]byte, size)
		for {
			n, err := r.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if string(got) != want {
			t.Fatalf("reads of %d: got\n%q\nwant\n%q", size, got, want)
		}
	}
}
