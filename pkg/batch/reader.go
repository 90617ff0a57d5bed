package batch

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"

	"github.com/klauspost/compress/zstd"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

// Info is what ReadInfo and Verify learn about a batch file.
type Info struct {
	Header    Header
	Digest    []byte // from the trailer; Verify has checked it
	Seal      []byte // signature over Digest under SealDomain
	Size      int64  // file size
	StoredLen int64  // bytes of the stored (possibly compressed) body
	bodyOff   int64
}

// DigestHex returns the lowercase hex of the digest, as receipts quote it.
func (i *Info) DigestHex() string { return hex.EncodeToString(i.Digest) }

// ReadInfo parses the framing, header and trailer of the batch in r, which
// is size bytes long. It checks magic numbers, lengths and the header
// (Header.Validate) but not the digest or seal: use Verify for that before
// trusting anything in the batch. Format problems wrap ErrCorrupt or
// ErrUnsupported, and ErrRejected.
func ReadInfo(r io.ReaderAt, size int64) (*Info, error) {
	const minSize = len(magic) + 4 + 2 + trailerFixed // "{}" as header, empty body, no digest or seal
	if size < int64(minSize) {
		return nil, corruptf("file is %d bytes, shorter than any batch", size)
	}

	// The end: trailer length and end magic.
	var end [4 + len(endMagic)]byte
	if err := readAt(r, end[:], size-int64(len(end))); err != nil {
		return nil, err
	}
	if string(end[4:]) != endMagic {
		return nil, corruptf("bad end magic %q (truncated file?)", end[4:])
	}
	tlen := int64(binary.BigEndian.Uint32(end[:4]))
	if tlen < int64(trailerFixed) || tlen > int64(maxTrailerLen) || tlen > size-int64(len(magic)+4+2) {
		return nil, corruptf("trailer length %d impossible in a %d byte file", tlen, size)
	}
	tr := make([]byte, tlen)
	if err := readAt(r, tr, size-tlen); err != nil {
		return nil, err
	}
	stored, digest, sig, err := parseTrailer(tr)
	if err != nil {
		return nil, err
	}

	// The start: magic and header length.
	var pre [len(magic) + 4]byte
	if err := readAt(r, pre[:], 0); err != nil {
		return nil, err
	}
	if string(pre[:len(magic)-1]) != magic[:len(magic)-1] {
		return nil, corruptf("bad magic %q: not a batch file", pre[:len(magic)])
	}
	if pre[len(magic)-1] != magic[len(magic)-1] {
		return nil, Reject(ErrUnsupported, fmt.Sprintf("magic %q: format version is not %d", pre[:len(magic)], FormatVersion))
	}
	hlen := int64(binary.BigEndian.Uint32(pre[len(magic):]))
	if hlen > MaxHeaderLen {
		return nil, corruptf("header length %d exceeds %d", hlen, MaxHeaderLen)
	}
	bodyOff := int64(len(pre)) + hlen
	if stored < 0 || bodyOff+stored+tlen != size {
		return nil, corruptf("lengths do not add up: %d byte header, %d byte body, %d byte trailer, %d byte file",
			hlen, stored, tlen, size)
	}

	hj := make([]byte, hlen)
	if err := readAt(r, hj, int64(len(pre))); err != nil {
		return nil, err
	}
	h, err := parseHeader(hj)
	if err != nil {
		return nil, err
	}
	if h.Compression == CompressionNone && stored != h.BodyLen {
		return nil, corruptf("uncompressed body is %d bytes, body_len says %d", stored, h.BodyLen)
	}
	if len(digest) != sha256.Size {
		return nil, corruptf("digest is %d bytes, want %d for %s", len(digest), sha256.Size, h.DigestAlg)
	}
	if len(sig) != 64 {
		return nil, corruptf("seal is %d bytes, want 64 for %s", len(sig), h.SealAlg)
	}
	return &Info{
		Header:    *h,
		Digest:    digest,
		Seal:      sig,
		Size:      size,
		StoredLen: stored,
		bodyOff:   bodyOff,
	}, nil
}

func parseTrailer(tr []byte) (stored int64, digest, sig []byte, err error) {
	bad := func(what string) error { return corruptf("trailer: %s", what) }
	body := tr[:len(tr)-4-len(endMagic)] // drop the trailer length and end magic
	if len(body) < 8+2 {
		return 0, nil, nil, bad("too short")
	}
	s := binary.BigEndian.Uint64(body)
	if s > math.MaxInt64 {
		return 0, nil, nil, bad("stored body length out of range")
	}
	body = body[8:]
	dlen := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) < dlen+2 {
		return 0, nil, nil, bad("digest length runs past the trailer")
	}
	digest, body = bytes.Clone(body[:dlen]), body[dlen:]
	slen := int(binary.BigEndian.Uint16(body))
	body = body[2:]
	if len(body) != slen {
		return 0, nil, nil, bad("seal length does not match the trailer length")
	}
	return int64(s), digest, bytes.Clone(body), nil
}

func parseHeader(hj []byte) (*Header, error) {
	// Look at the version alone first so that a later major version gets a
	// clear "unsupported" even if its fields no longer decode as v1 fields.
	var v struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(hj, &v); err != nil {
		return nil, corruptf("header: %v", err)
	}
	if v.Version == nil {
		return nil, corruptf("header: no version")
	}
	if *v.Version != FormatVersion {
		return nil, Reject(ErrUnsupported, fmt.Sprintf("header version %d, this reader knows %d", *v.Version, FormatVersion))
	}
	var h Header
	if err := json.Unmarshal(hj, &h); err != nil {
		return nil, corruptf("header: %v", err)
	}
	if h.DigestAlg != DigestSHA256 || h.SealAlg != seal.AlgEd25519 {
		return nil, Reject(ErrUnsupported, fmt.Sprintf("digest_alg %q, seal_alg %q", h.DigestAlg, h.SealAlg))
	}
	if err := h.Validate(); err != nil {
		return nil, corruptf("invalid header: %v", err)
	}
	return &h, nil
}

// readAt reads exactly len(b) bytes at off. A short read here means the
// file shrank under us or the size passed in was wrong: an I/O error, not a
// verdict on the batch.
func readAt(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("batch: read %d bytes at %d: %w", len(b), off, err)
}

// Verify reads the batch in r (size bytes long), recomputes its digest and
// checks its seal with the key lookup returns for Header.SealKeyID.
//
// Errors meaning the batch must be rejected wrap ErrRejected and one of
// ErrCorrupt (format or digest), ErrUnsupported, ErrUnknownKey (lookup said
// so) or seal.ErrBadSignature (wrong key or bad seal). Other errors, such as
// I/O errors or a lookup failure that is not ErrUnknownKey, are returned
// wrapped as they are.
func Verify(r io.ReaderAt, size int64, lookup func(keyID string) (seal.PublicKey, error)) (*Info, error) {
	info, err := ReadInfo(r, size)
	if err != nil {
		return nil, err
	}
	id := info.Header.SealKeyID
	pub, err := lookup(id)
	switch {
	case err == nil:
	case errors.Is(err, ErrRejected):
		return nil, err
	case errors.Is(err, ErrUnknownKey):
		return nil, Reject(ErrUnknownKey, fmt.Sprintf("seal key %s: %v", id, err))
	default:
		return nil, fmt.Errorf("batch: look up seal key %s: %w", id, err)
	}
	if pub.KeyID() != id || pub.Algorithm() != info.Header.SealAlg {
		return nil, Reject(seal.ErrBadSignature, fmt.Sprintf("key lookup for %s %s returned %s key %s",
			info.Header.SealAlg, id, pub.Algorithm(), pub.KeyID()))
	}

	h := sha256.New()
	signedLen := info.bodyOff + info.StoredLen
	buf := make([]byte, copyBufSize)
	if _, err := io.CopyBuffer(h, io.NewSectionReader(r, 0, signedLen), buf); err != nil {
		return nil, fmt.Errorf("batch: read for digest: %w", err)
	}
	if sum := h.Sum(nil); subtle.ConstantTimeCompare(sum, info.Digest) != 1 {
		return nil, corruptf("digest mismatch: content hashes to %x, trailer says %x", sum, info.Digest)
	}
	if err := pub.Verify(SealDomain, info.Digest, info.Seal); err != nil {
		return nil, Reject(seal.ErrBadSignature, fmt.Sprintf("batch seal by key %s", id))
	}
	return info, nil
}

// VerifyFile is Verify on the file at path.
func VerifyFile(path string, lookup func(keyID string) (seal.PublicKey, error)) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	info, err := Verify(f, st.Size(), lookup)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// Body returns the uncompressed body of the batch in r, which must be the
// file i was read from; Verify it first. The stream yields exactly
// Header.BodyLen bytes, or an error wrapping ErrCorrupt. The zstd decoder
// runs synchronously with a bounded window; Close releases it.
func (i *Info) Body(r io.ReaderAt) (io.ReadCloser, error) {
	src := &ioErrReader{r: io.NewSectionReader(r, i.bodyOff, i.StoredLen)}
	switch i.Header.Compression {
	case CompressionNone:
		return &exactReader{r: src, left: i.Header.BodyLen, src: src}, nil
	case CompressionZstd:
		dec, err := zstd.NewReader(bufio.NewReaderSize(src, copyBufSize),
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(maxDecoderWindow),
			zstd.WithDecoderMaxMemory(maxDecoderWindow))
		if err != nil {
			return nil, fmt.Errorf("batch: zstd decoder: %w", err)
		}
		return &exactReader{r: dec, left: i.Header.BodyLen, close: dec.Close, src: src}, nil
	default:
		return nil, Reject(ErrUnsupported, fmt.Sprintf("compression %q", i.Header.Compression))
	}
}

// exactReader passes through exactly left bytes and turns a shorter or
// longer stream, or a decoding error, into ErrCorrupt.
type exactReader struct {
	r     io.Reader
	left  int64
	close func()
	src   *ioErrReader // when set, lets decoding errors caused by I/O be told apart
	err   error
}

// fail records a failure: corruption, unless reading the file itself failed.
func (e *exactReader) fail(err error) error {
	if e.src != nil && e.src.err != nil {
		e.err = fmt.Errorf("batch: read body: %w", e.src.err)
	} else {
		e.err = corruptf("body: %v", err)
	}
	return e.err
}

// ioErrReader remembers the first read error other than io.EOF.
type ioErrReader struct {
	r   io.Reader
	err error
}

func (r *ioErrReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left == 0 {
		// Make sure the stream really ends here.
		var one [1]byte
		n, err := io.ReadFull(e.r, one[:])
		switch {
		case n > 0:
			e.err = corruptf("body longer than body_len")
		case err == io.EOF:
			e.err = io.EOF
		default:
			e.fail(err)
		}
		return 0, e.err
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	switch {
	case err == io.EOF && e.left > 0:
		e.err = corruptf("body shorter than body_len by %d bytes", e.left)
		return n, e.err
	case err != nil && err != io.EOF:
		return n, e.fail(err)
	}
	return n, nil
}

func (e *exactReader) Close() error {
	if e.close != nil {
		e.close()
		e.close = nil
	}
	return nil
}
