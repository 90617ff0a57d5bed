package batch

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"hash"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/zstd"
)

// SealDomain is the signing domain of batch seals (see seal.PrivateKey.Sign).
const SealDomain = "qianzhi-batch-v1"

const (
	magic    = "QZBATCH1"
	endMagic = "QZEND001"
	// zstdWindow keeps the encoder's and decoder's history small; batches are
	// bulk data where a larger window buys little.
	zstdWindow = 1 << 20
	// maxDecoderWindow is the largest zstd window a reader accepts, a bound on
	// the memory a hostile body can make the decoder take.
	maxDecoderWindow = 8 << 20
	copyBufSize      = 64 << 10
)

// Signer seals batches. *seal.PrivateKey satisfies it.
type Signer interface {
	Algorithm() string
	KeyID() string
	Sign(domain string, msg []byte) []byte
}

// Writer streams one batch to an io.Writer: NewWriter writes the magic and
// header, Write takes uncompressed body bytes, Close flushes the compressor
// and writes the trailer with digest and seal. Memory use does not grow
// with the body. A Writer is not safe for concurrent use.
type Writer struct {
	h         Header
	s         Signer
	out       *hashCounter // everything before the trailer goes through here
	enc       *zstd.Encoder
	body      io.Writer // enc, or out for CompressionNone
	n         int64     // uncompressed body bytes accepted
	bodyStart int64     // offset of the stored body
	err       error     // sticky
	closed    bool
	digest    []byte
}

// NewWriter starts a batch on w. It fills in defaults (Version, Compression
// "none", zstd Level LevelDefault, Created now) and the algorithm fields
// (DigestAlg, SealAlg, SealKeyID from s), validates the header and writes
// the magic and header. The body written must be exactly h.BodyLen bytes.
func NewWriter(w io.Writer, h Header, s Signer) (*Writer, error) {
	if h.Version == 0 {
		h.Version = FormatVersion
	}
	if h.Compression == "" {
		h.Compression = CompressionNone
	}
	if h.Compression == CompressionZstd && h.Level == 0 {
		h.Level = LevelDefault
	}
	if h.Created.IsZero() {
		h.Created = time.Now().UTC()
	}
	h.DigestAlg = DigestSHA256
	h.SealAlg = s.Algorithm()
	h.SealKeyID = s.KeyID()
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("batch: invalid header: %w", err)
	}
	hj, err := json.Marshal(&h)
	if err != nil {
		return nil, fmt.Errorf("batch: encode header: %w", err)
	}
	if len(hj) > MaxHeaderLen {
		return nil, fmt.Errorf("batch: header is %d bytes, more than %d; split the batch", len(hj), MaxHeaderLen)
	}

	bw := &Writer{h: h, s: s, out: &hashCounter{w: w, h: sha256.New()}}
	pre := make([]byte, 0, len(magic)+4+len(hj))
	pre = append(pre, magic...)
	pre = binary.BigEndian.AppendUint32(pre, uint32(len(hj)))
	pre = append(pre, hj...)
	if _, err := bw.out.Write(pre); err != nil {
		return nil, fmt.Errorf("batch: write header: %w", err)
	}
	bw.bodyStart = bw.out.n
	bw.body = bw.out
	if h.Compression == CompressionZstd {
		bw.enc, err = zstd.NewWriter(bw.out,
			zstd.WithEncoderConcurrency(1),
			zstd.WithEncoderLevel(zstd.EncoderLevel(h.Level)),
			zstd.WithWindowSize(zstdWindow),
			zstd.WithLowerEncoderMem(true))
		if err != nil {
			return nil, fmt.Errorf("batch: zstd encoder: %w", err)
		}
		bw.body = bw.enc
	}
	return bw, nil
}

// Header returns the header as written, with defaults and algorithm fields
// filled in.
func (w *Writer) Header() Header { return w.h }

// Write adds uncompressed body bytes. Writing more than Header.BodyLen bytes
// in total is an error.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("batch: write after close")
	}
	if w.err != nil {
		return 0, w.err
	}
	if int64(len(p)) > w.h.BodyLen-w.n {
		w.err = fmt.Errorf("batch: body longer than body_len %d", w.h.BodyLen)
		return 0, w.err
	}
	n, err := w.body.Write(p)
	w.n += int64(n)
	if err != nil {
		w.err = fmt.Errorf("batch: write body: %w", err)
		return n, w.err
	}
	return n, nil
}

// Close finishes the body and writes the trailer. It fails if fewer than
// Header.BodyLen body bytes were written. It does not close the underlying
// writer. Calling Close again returns the first result.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.enc != nil {
		// Release the encoder's buffers whatever happens below.
		err := w.enc.Close()
		if w.err == nil && err != nil {
			w.err = fmt.Errorf("batch: finish zstd: %w", err)
		}
	}
	if w.err != nil {
		return w.err
	}
	if w.n != w.h.BodyLen {
		w.err = fmt.Errorf("batch: body is %d bytes, body_len says %d", w.n, w.h.BodyLen)
		return w.err
	}
	stored := w.out.n - w.bodyStart
	digest := w.out.h.Sum(nil)
	sig := w.s.Sign(SealDomain, digest)
	t, err := appendTrailer(nil, stored, digest, sig)
	if err != nil {
		w.err = err
		return err
	}
	if _, err := w.out.w.Write(t); err != nil {
		w.err = fmt.Errorf("batch: write trailer: %w", err)
		return w.err
	}
	w.out.n += int64(len(t))
	w.digest = digest
	return nil
}

// Digest returns the batch digest after a successful Close, else nil.
func (w *Writer) Digest() []byte {
	if !w.closed || w.err != nil {
		return nil
	}
	return append([]byte(nil), w.digest...)
}

// Size returns the bytes written to the underlying writer so far; after a
// successful Close it is the size of the batch file.
func (w *Writer) Size() int64 { return w.out.n }

// appendTrailer lays out the trailer; see docs/batch-format.md.
func appendTrailer(b []byte, stored int64, digest, sig []byte) ([]byte, error) {
	if len(digest) > 0xffff || len(sig) > 0xffff {
		return nil, errors.New("batch: digest or seal longer than 65535 bytes")
	}
	tlen := trailerFixed + len(digest) + len(sig)
	b = binary.BigEndian.AppendUint64(b, uint64(stored))
	b = binary.BigEndian.AppendUint16(b, uint16(len(digest)))
	b = append(b, digest...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(sig)))
	b = append(b, sig...)
	b = binary.BigEndian.AppendUint32(b, uint32(tlen))
	return append(b, endMagic...), nil
}

// trailerFixed is the trailer size without digest and seal bytes:
// u64 stored length, u16 digest length, u16 seal length, u32 trailer length,
// end magic.
const trailerFixed = 8 + 2 + 2 + 4 + len(endMagic)

// maxTrailerLen is the largest trailer the format can lay out (digest and
// seal of 65535 bytes each), so that a reader never allocates more for one.
const maxTrailerLen = trailerFixed + 2*0xffff

// hashCounter writes to w, hashes and counts what it writes.
type hashCounter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *hashCounter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}

// Create writes a whole batch to path atomically: it streams body into a
// temporary file in the same folder, fsyncs it, renames it to path and
// fsyncs the folder, so path holds either nothing (or its old content) or
// the complete batch. The file gets mode 0600: batches carry the data
// being exchanged. Create returns the size of the file.
func Create(path string, h Header, body io.Reader, s Signer) (size int64, err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("batch: create: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bufw := bufio.NewWriterSize(f, 256<<10)
	w, err := NewWriter(bufw, h, s)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, copyBufSize)
	if _, err := io.CopyBuffer(w, body, buf); err != nil {
		w.Close()
		return 0, fmt.Errorf("batch: copy body: %w", err)
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	if err := bufw.Flush(); err != nil {
		return 0, fmt.Errorf("batch: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("batch: sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("batch: close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, fmt.Errorf("batch: rename into place: %w", err)
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return 0, fmt.Errorf("batch: sync folder %s: %w", dir, err)
	}
	return w.Size(), nil
}
