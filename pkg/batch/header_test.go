package batch

import (
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

func TestCheckPath(t *testing.T) {
	tests := []struct {
		path string
		ok   bool
	}{
		{"a.txt", true},
		{"报表/二〇二六年.xlsx", true},
		{"a/b/c", true},
		{"..a/b..", true},
		{".hidden", true},
		{"", false},
		{"../x", false},
		{"a/../b", false},
		{"a/..", false},
		{"..", false},
		{".", false},
		{"./a", false},
		{"a/./b", false},
		{"/abs", false},
		{"a\\b", false},
		{"a//b", false},
		{"a/", false},
		{"a\x00b", false},
		{"a\nb", false},
		{"a\x7fb", false},
		{"bad\xffutf8", false},
		{strings.Repeat("a", MaxNameLen), true},
		{strings.Repeat("a", MaxNameLen+1), false},
		{strings.Repeat("a/", MaxPathLen/2) + "a", false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			err := CheckPath(tc.path)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckPath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
			}
		})
	}
}

// validHeader returns a header that passes Validate, as NewWriter would
// complete it.
func validHeader(t *testing.T) Header {
	t.Helper()
	entries, body := filesBody(4, []string{"old.txt"},
		tfile{"报表/二〇二六年.xlsx", []byte("0123456789")},
		tfile{"empty", nil})
	h := testHeader(entries, body, CompressionZstd)
	h.Version = FormatVersion
	h.Level = LevelDefault
	h.DigestAlg = DigestSHA256
	h.SealAlg = seal.AlgEd25519
	h.SealKeyID = strings.Repeat("0f", 16)
	if err := h.Validate(); err != nil {
		t.Fatalf("valid header rejected: %v", err)
	}
	return h
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(h *Header)
		wantErr string // substring of the error; "" means valid
	}{
		{"valid", func(h *Header) {}, ""},
		{"version 0", func(h *Header) { h.Version = 0 }, "version 0"},
		{"version 2", func(h *Header) { h.Version = 2 }, "version 2"},
		{"kind empty", func(h *Header) { h.Kind = "" }, "kind"},
		{"rows without schema", func(h *Header) { h.Kind = KindRows }, "schema missing"},
		{"rows with files", func(h *Header) { h.Kind = KindRows }, "files must be empty"},
		{"rows with bad fingerprint", func(h *Header) {
			h.Kind, h.Files, h.BodyLen = KindRows, nil, 0
			h.Schema = &Schema{Columns: []Column{{Name: "id", Type: TypeInt}}, Key: []string{"id"}, Fingerprint: "00"}
		}, "fingerprint"},
		{"rows with unknown type", func(h *Header) {
			h.Kind, h.Files, h.BodyLen = KindRows, nil, 0
			cols := []Column{{Name: "id", Type: "uuid"}}
			h.Schema = &Schema{Columns: cols, Key: []string{"id"}, Fingerprint: SchemaFingerprint(cols, []string{"id"})}
		}, "unknown type"},
		{"rows with key not a column", func(h *Header) {
			h.Kind, h.Files, h.BodyLen = KindRows, nil, 0
			cols := []Column{{Name: "id", Type: TypeInt}}
			h.Schema = &Schema{Columns: cols, Key: []string{"pk"}, Fingerprint: SchemaFingerprint(cols, []string{"pk"})}
		}, "key column"},
		{"valid rows", func(h *Header) {
			h.Kind, h.Files, h.BodyLen, h.Rows = KindRows, nil, 0, 0
			cols := []Column{{Name: "id", Type: TypeInt}, {Name: "名称", Type: TypeString, Length: 20, Nullable: true}}
			h.Schema = &Schema{Columns: cols, Key: []string{"id"}, Fingerprint: SchemaFingerprint(cols, []string{"id"})}
		}, ""},
		{"no resource", func(h *Header) { h.Resource = "" }, "resource: empty"},
		{"no grant", func(h *Header) { h.Grant = "" }, "grant: empty"},
		{"no provider", func(h *Header) { h.Provider = "" }, "provider: empty"},
		{"consumer with newline", func(h *Header) { h.Consumer = "a\nb" }, "consumer: contains control"},
		{"sequence 0", func(h *Header) { h.Sequence = 0 }, "sequence"},
		{"no created", func(h *Header) { h.Created = time.Time{} }, "created"},
		{"unknown compression", func(h *Header) { h.Compression = "gzip" }, "compression"},
		{"zstd level 5", func(h *Header) { h.Level = 5 }, "zstd level 5"},
		{"none with level", func(h *Header) { h.Compression = CompressionNone }, "level 2 given without compression"},
		{"digest sm3", func(h *Header) { h.DigestAlg = "sm3" }, "digest_alg"},
		{"seal sm2", func(h *Header) { h.SealAlg = "sm2" }, "seal_alg"},
		{"key id uppercase", func(h *Header) { h.SealKeyID = strings.ToUpper(h.SealKeyID) }, "seal_key_id"},
		{"body_len off", func(h *Header) { h.BodyLen++ }, "add up to"},
		{"rows in files batch", func(h *Header) { h.Rows = 3 }, "schema and rows"},
		{"path ../x", func(h *Header) { h.Files[0].Path = "../x" }, `".."`},
		{"path /abs", func(h *Header) { h.Files[0].Path = "/abs" }, "absolute"},
		{"path a\\b", func(h *Header) { h.Files[3].Path = "a\\b" }, "backslash"},
		{"path empty", func(h *Header) { h.Files[3].Path = "" }, "empty"},
		{"path NUL", func(h *Header) { h.Files[3].Path = "a\x00" }, "control"},
		{"unknown op", func(h *Header) { h.Files[3].Op = "rename" }, "op"},
		{"delete with size", func(h *Header) { h.Files[4].Size = 1 }, "delete carries"},
		{"put without sha256", func(h *Header) { h.Files[0].SHA256 = "" }, "sha256"},
		{"put bad chunk sha256", func(h *Header) { h.Files[0].ChunkSHA256 = "xyz" }, "chunk_sha256"},
		{"put mode setuid", func(h *Header) { h.Files[0].Mode = 0o4755 }, "mode"},
		{"put chunk size 0", func(h *Header) { h.Files[0].ChunkSize = 0 }, "chunk_size"},
		{"put wrong chunks", func(h *Header) { h.Files[0].Chunks = 2 }, "chunks 2, want 3"},
		{"put chunk out of range", func(h *Header) { h.Files[2].Chunk = 3 }, "chunk 3 out of range"},
		{"put wrong offset", func(h *Header) { h.Files[1].Offset = 3 }, "offset 3, want 4"},
		{"put wrong length", func(h *Header) { h.Files[2].Length = 4; h.BodyLen += 2 }, "length 4, want 2"},
		{"empty file without chunk", func(h *Header) { h.Files[3].Chunks = 0 }, "chunks 0, want 1"},
		{"negative size", func(h *Header) { h.Files[0].Size = -1 }, "size -1"},
		{"duplicate chunk", func(h *Header) { h.Files[1] = h.Files[0]; h.Files[1].Length = 4 }, "duplicate"},
		{"chunks disagree", func(h *Header) { h.Files[1].Mode = 0o600 }, "disagrees"},
		{"put and delete same path", func(h *Header) { h.Files[4].Path = "empty" }, "disagrees"},
		{"file is also a folder", func(h *Header) { h.Files[3].Path = "报表" }, "which is a file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := validHeader(t)
			tc.edit(&h)
			err := h.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestValidateGathersAll(t *testing.T) {
	h := validHeader(t)
	h.Resource = ""
	h.Sequence = 0
	h.Files[0].Path = "/abs"
	err := h.Validate()
	if err == nil {
		t.Fatal("valid")
	}
	for _, want := range []string{"resource", "sequence", "absolute"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

func TestNewWriterRejectsInvalidHeader(t *testing.T) {
	key := newKey(t)
	h := validHeader(t)
	h.Files[0].Path = "../etc/passwd"
	if _, err := NewWriter(&strings.Builder{}, h, key); err == nil || !strings.Contains(err.Error(), "..") {
		t.Fatalf("NewWriter = %v", err)
	}
}
