package batch

import (
	"bytes"
	"crypto/rand"
	"testing"
)

// benchBody is 4 MiB, the default batch size: half random, half CSV-like.
func benchBody(b *testing.B) []byte {
	body := make([]byte, 4<<20)
	rand.Read(body[:len(body)/2])
	row := []byte("110101199003078515,张三,北京市东城区某街道1号,1990-03-07,2026-11-23 10:00:00\n")
	for i := len(body) / 2; i < len(body); i += copy(body[i:], row) {
	}
	return body
}

// BenchmarkSeal measures writing a sealed 4 MiB batch at each compression
// setting: the provider's CPU cost per batch.
func BenchmarkSeal(b *testing.B) {
	key := newKey(b)
	body := benchBody(b)
	for _, c := range []struct {
		name, comp string
		level      int
	}{{"none", CompressionNone, 0}, {"fastest", CompressionZstd, LevelFastest}, {"default", CompressionZstd, LevelDefault}} {
		b.Run(c.name, func(b *testing.B) {
			h := Header{Version: FormatVersion, Kind: KindFiles, Resource: "r", Grant: "g", Provider: "p", Consumer: "c", Sequence: 1,
				Compression: c.comp, Level: c.level, BodyLen: int64(len(body)), Files: benchEntries(body)}
			var out bytes.Buffer
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				out.Reset()
				w, err := NewWriter(&out, h, key)
				if err != nil {
					b.Fatal(err)
				}
				w.Write(body)
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(out.Len())/float64(len(body)), "stored/raw")
		})
	}
}

// BenchmarkVerify measures checking digest and seal of a 4 MiB batch: the
// hub's and the consumer's cost per batch.
func BenchmarkVerify(b *testing.B) {
	key := newKey(b)
	body := benchBody(b)
	h := Header{Version: FormatVersion, Kind: KindFiles, Resource: "r", Grant: "g", Provider: "p", Consumer: "c", Sequence: 1,
		Compression: CompressionZstd, Level: LevelFastest, BodyLen: int64(len(body)), Files: benchEntries(body)}
	data := writeBatch(b, h, body, key)
	lookup := lookupFor(key)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Verify(bytes.NewReader(data), int64(len(data)), lookup); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEntries(body []byte) []FileEntry {
	entries, _ := filesBody(int64(len(body)), nil, tfile{"bench.bin", body})
	return entries
}
