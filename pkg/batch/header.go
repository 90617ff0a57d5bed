package batch

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

// FormatVersion is the major version of the batch format this package reads
// and writes. A reader rejects any other version with ErrUnsupported.
const FormatVersion = 1

// Header values. See docs/batch-format.md for their meaning.
const (
	KindFiles = "files" // body is a sequence of file chunks described by Header.Files
	KindRows  = "rows"  // body is rows (RowWriter) described by Header.Schema

	CompressionNone = "none"
	CompressionZstd = "zstd"

	// Zstd levels as klauspost/compress EncoderLevel values.
	LevelFastest = 1
	LevelDefault = 2
	LevelBetter  = 3
	LevelBest    = 4

	DigestSHA256 = "sha256"

	OpPut    = "put"
	OpDelete = "delete"
	// OpVerify carries a folder's manifest for the consumer to compare its
	// copy with (qz-agent verify): JSON lines of path, size and sha256;
	// Size is the number of files.
	OpVerify = "verify"
)

// Limits a v1 reader enforces so that a hostile file cannot make it allocate
// without bound before the seal has been checked.
const (
	// MaxHeaderLen bounds the JSON header. At a few hundred bytes per file
	// entry this allows tens of thousands of entries; batch builders split
	// larger change sets over several batches.
	MaxHeaderLen = 16 << 20
	// MaxChunkSize bounds FileEntry.ChunkSize.
	MaxChunkSize = 1 << 32
	// MaxFileSize bounds FileEntry.Size (it keeps chunk arithmetic in range).
	MaxFileSize = 1 << 52
	// MaxPathLen bounds FileEntry.Path in bytes, and MaxNameLen each of its
	// slash-separated elements (the common file-system limits).
	MaxPathLen = 4096
	MaxNameLen = 255
	// maxIDLen bounds the resource, grant and node IDs.
	maxIDLen = 256
)

// Header is the JSON header of a batch. It is covered by the digest and thus
// by the seal.
type Header struct {
	Version     int         `json:"version"`          // FormatVersion
	Kind        string      `json:"kind"`             // KindFiles or KindRows
	Resource    string      `json:"resource"`         // resource ID
	Grant       string      `json:"grant"`            // grant ID
	Provider    string      `json:"provider"`         // provider node ID
	Consumer    string      `json:"consumer"`         // consumer node ID
	Sequence    uint64      `json:"sequence"`         // starts at 1 per grant
	Created     time.Time   `json:"created"`          // when the provider sealed the batch
	Compression string      `json:"compression"`      // CompressionNone or CompressionZstd
	Level       int         `json:"level,omitempty"`  // zstd level LevelFastest..LevelBest; 0 for none
	DigestAlg   string      `json:"digest_alg"`       // DigestSHA256
	SealAlg     string      `json:"seal_alg"`         // seal.AlgEd25519
	SealKeyID   string      `json:"seal_key_id"`      // seal.PublicKey.KeyID of the provider's key
	BodyLen     int64       `json:"body_len"`         // uncompressed body bytes
	Files       []FileEntry `json:"files,omitempty"`  // for KindFiles, in body order
	Schema      *Schema     `json:"schema,omitempty"` // for KindRows
	Rows        int64       `json:"rows,omitempty"`   // for KindRows: rows in the body
}

// FileEntry describes one piece of the body for Kind "files": either a chunk
// of a file, or a delete. Pieces appear in the body in the order of
// Header.Files, each Length bytes long; deletes carry no bytes.
type FileEntry struct {
	Op          string    `json:"op"`                     // OpPut or OpDelete
	Path        string    `json:"path"`                   // slash-separated, relative to the resource folder, UTF-8; see CheckPath
	Size        int64     `json:"size,omitempty"`         // whole file size
	Mode        uint32    `json:"mode,omitempty"`         // permission bits (0o777 at most)
	ModTime     time.Time `json:"mtime,omitzero"`         // whole file modification time
	SHA256      string    `json:"sha256,omitempty"`       // whole-file lowercase hex digest
	ChunkSize   int64     `json:"chunk_size,omitempty"`   // size of every chunk but the last
	Chunks      int       `json:"chunks,omitempty"`       // total chunks of the file (an empty file has 1 chunk of length 0)
	Chunk       int       `json:"chunk"`                  // index of the chunk carried here, from 0
	Offset      int64     `json:"offset,omitempty"`       // Chunk * ChunkSize
	Length      int64     `json:"length,omitempty"`       // bytes of this chunk in the (uncompressed) body
	ChunkSHA256 string    `json:"chunk_sha256,omitempty"` // lowercase hex digest of this chunk
}

// Validate reports every problem with h, joined with errors.Join, or nil.
// It checks what a v1 reader relies on: version, kind, IDs, sequence,
// compression and algorithms, and for KindFiles that each entry is sane and
// that the entry lengths add up to BodyLen.
func (h *Header) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if h.Version != FormatVersion {
		add("version %d, want %d", h.Version, FormatVersion)
	}
	for _, f := range []struct{ name, v string }{
		{"resource", h.Resource}, {"grant", h.Grant}, {"provider", h.Provider}, {"consumer", h.Consumer},
	} {
		if err := checkID(f.v); err != nil {
			add("%s: %v", f.name, err)
		}
	}
	if h.Sequence < 1 {
		add("sequence must be at least 1")
	}
	if h.Created.IsZero() {
		add("created time missing")
	}
	switch h.Compression {
	case CompressionNone:
		if h.Level != 0 {
			add("level %d given without compression", h.Level)
		}
	case CompressionZstd:
		if h.Level < LevelFastest || h.Level > LevelBest {
			add("zstd level %d, want %d..%d", h.Level, LevelFastest, LevelBest)
		}
	default:
		add("compression %q, want %q or %q", h.Compression, CompressionNone, CompressionZstd)
	}
	if h.DigestAlg != DigestSHA256 {
		add("digest_alg %q not supported, want %q", h.DigestAlg, DigestSHA256)
	}
	if h.SealAlg != seal.AlgEd25519 {
		add("seal_alg %q not supported, want %q", h.SealAlg, seal.AlgEd25519)
	}
	if !isLowerHex(h.SealKeyID, 32) {
		add("seal_key_id %q is not 32 lowercase hex digits", h.SealKeyID)
	}
	if h.BodyLen < 0 {
		add("body_len %d is negative", h.BodyLen)
	}

	switch h.Kind {
	case KindFiles:
		if h.Schema != nil || h.Rows != 0 {
			add("schema and rows must be empty for kind %q", KindFiles)
		}
		errs = append(errs, validateFiles(h.Files, h.BodyLen)...)
	case KindRows:
		if len(h.Files) != 0 {
			add("files must be empty for kind %q", KindRows)
		}
		if h.Rows < 0 {
			add("rows %d is negative", h.Rows)
		}
		if h.Schema == nil {
			add("schema missing for kind %q", KindRows)
		} else {
			errs = append(errs, h.Schema.Validate()...)
		}
	default:
		add("kind %q, want %q or %q", h.Kind, KindFiles, KindRows)
	}
	return errors.Join(errs...)
}

func validateFiles(files []FileEntry, bodyLen int64) []error {
	var errs []error
	type chunkKey struct {
		path  string
		chunk int
	}
	seen := make(map[chunkKey]bool)
	first := make(map[string]int) // path -> index of its first entry
	var sum int64
	for i := range files {
		e := &files[i]
		add := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("files[%d] %q: %s", i, e.Path, fmt.Sprintf(format, args...)))
		}
		if e.Op == OpVerify {
			// The manifest of a folder for the consumer to compare with
			// (qz-agent verify): alone in its batch, no path.
			if len(files) != 1 || e.Path != "" || e.Size < 0 || e.Length < 0 || len(e.ChunkSHA256) != 64 {
				add("a verify entry stands alone, without a path, with its manifest's length and SHA-256")
			}
			sum += max(e.Length, 0)
			continue
		}
		if err := CheckPath(e.Path); err != nil {
			add("%v", err)
		}
		switch e.Op {
		case OpPut:
			for _, err := range checkPut(e) {
				add("%v", err)
			}
		case OpDelete:
			if e.Size != 0 || e.Mode != 0 || !e.ModTime.IsZero() || e.SHA256 != "" || e.ChunkSize != 0 ||
				e.Chunks != 0 || e.Chunk != 0 || e.Offset != 0 || e.Length != 0 || e.ChunkSHA256 != "" {
				add("delete carries file fields")
			}
		default:
			add("op %q, want %q or %q", e.Op, OpPut, OpDelete)
		}
		k := chunkKey{e.Path, e.Chunk}
		if seen[k] {
			add("duplicate entry for chunk %d", e.Chunk)
		}
		seen[k] = true
		if j, ok := first[e.Path]; ok {
			if !sameFile(&files[j], e) {
				add("disagrees with files[%d] about the whole file (op, size, mode, mtime, sha256 or chunking)", j)
			}
		} else {
			first[e.Path] = i
		}
		if e.Length > 0 {
			sum += e.Length
		}
	}
	// A path cannot be both a file and a folder in the same batch.
	for i := range files {
		p := files[i].Path
		if first[p] != i || files[i].Op != OpPut || CheckPath(p) != nil {
			continue
		}
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if j, ok := first[dir]; ok && files[j].Op == OpPut {
				errs = append(errs, fmt.Errorf("files[%d] %q: is inside files[%d] %q, which is a file", i, p, j, dir))
			}
		}
	}
	if sum != bodyLen {
		errs = append(errs, fmt.Errorf("file entry lengths add up to %d, body_len is %d", sum, bodyLen))
	}
	return errs
}

func checkPut(e *FileEntry) []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if e.Size < 0 || e.Size > MaxFileSize {
		add("size %d out of range", e.Size)
		return errs // the chunk arithmetic below would be meaningless
	}
	if e.ChunkSize < 1 || e.ChunkSize > MaxChunkSize {
		add("chunk_size %d out of range 1..%d", e.ChunkSize, int64(MaxChunkSize))
		return errs
	}
	if e.Mode&^0o777 != 0 {
		add("mode %#o has bits beyond 0777", e.Mode)
	}
	if !isLowerHex(e.SHA256, 64) {
		add("sha256 %q is not 64 lowercase hex digits", e.SHA256)
	}
	if !isLowerHex(e.ChunkSHA256, 64) {
		add("chunk_sha256 %q is not 64 lowercase hex digits", e.ChunkSHA256)
	}
	wantChunks := max(1, (e.Size+e.ChunkSize-1)/e.ChunkSize)
	if int64(e.Chunks) != wantChunks {
		add("chunks %d, want %d for size %d and chunk_size %d", e.Chunks, wantChunks, e.Size, e.ChunkSize)
		return errs
	}
	if e.Chunk < 0 || e.Chunk >= e.Chunks {
		add("chunk %d out of range 0..%d", e.Chunk, e.Chunks-1)
		return errs
	}
	wantOff := int64(e.Chunk) * e.ChunkSize
	if e.Offset != wantOff {
		add("offset %d, want %d", e.Offset, wantOff)
	}
	if wantLen := min(e.ChunkSize, e.Size-wantOff); e.Length != wantLen {
		add("length %d, want %d", e.Length, wantLen)
	}
	return errs
}

func sameFile(a, b *FileEntry) bool {
	return a.Op == b.Op && a.Size == b.Size && a.Mode == b.Mode && a.ModTime.Equal(b.ModTime) &&
		a.SHA256 == b.SHA256 && a.ChunkSize == b.ChunkSize && a.Chunks == b.Chunks
}

// CheckPath reports whether p is acceptable as FileEntry.Path: non-empty
// valid UTF-8, slash-separated, relative, already clean (no "." or empty
// elements, no trailing slash), with no ".." element, no backslash and no
// control character, at most MaxPathLen bytes with elements of at most
// MaxNameLen bytes. Consumers may join such a path to their resource folder
// without escaping it. Non-ASCII names such as "报表/二〇二六年.xlsx" are valid.
func CheckPath(p string) error {
	switch {
	case p == "":
		return errors.New("path is empty")
	case len(p) > MaxPathLen:
		return fmt.Errorf("path is %d bytes, longer than %d", len(p), MaxPathLen)
	case !utf8.ValidString(p):
		return errors.New("path is not valid UTF-8")
	case strings.ContainsRune(p, '\\'):
		return errors.New("path contains a backslash")
	case strings.HasPrefix(p, "/"):
		return errors.New("path is absolute")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("path contains control character %U", r)
		}
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return errors.New("path contains a \"..\" element")
		}
		if len(el) > MaxNameLen {
			return fmt.Errorf("path element is %d bytes, longer than %d", len(el), MaxNameLen)
		}
	}
	if path.Clean(p) != p || p == "." {
		return errors.New("path is not clean (empty or \".\" element, or trailing slash)")
	}
	return nil
}

func checkID(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > maxIDLen:
		return fmt.Errorf("longer than %d bytes", maxIDLen)
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("contains control character %U", r)
		}
	}
	return nil
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
