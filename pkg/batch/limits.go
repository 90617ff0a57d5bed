package batch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/qianzhi/qianzhi/pkg/seal"
)

// ErrLimit means a batch is well-formed and sealed but declares more than
// its receiver accepts: a body, file, chunk or row larger than any batch an
// honest provider produces. It is a rejection (it wraps ErrRejected too):
// sending the same batch again cannot help.
var ErrLimit = errors.New("batch exceeds a receiver limit")

// Limits bound what a receiver accepts from a sealed batch. The seal proves
// who sent a batch, not that it is harmless: a provider (or a stolen seal
// key) can declare a 2 GiB file in a 400 KB zstd body. A receiver checks
// every declared size against its own limits before it allocates or
// decompresses anything for it.
type Limits struct {
	// MaxHeaderLen bounds the JSON header, checked before it is read:
	// parsing costs tens of times its size when it holds many small file
	// entries. A provider's headers stay below 3 MiB (it cuts batches at
	// 5,000 entries or 1 MiB of paths; a reconcile digest of 65,536
	// buckets takes about 2.5 MiB).
	MaxHeaderLen int64
	// MaxBodyLen bounds Header.BodyLen, the uncompressed body. A provider
	// cuts a batch at batch.max_bytes (64 MiB at most) plus one entry it
	// cannot split (a chunk or a row), so honest batches stay below
	// 128 MiB.
	MaxBodyLen int64
	// MaxPieceLen bounds what one file entry carries (FileEntry.Length)
	// and its chunk size: a provider's chunk_size is 64 MiB at most, and
	// files larger than it travel in chunks.
	MaxPieceLen int64
	// MaxFileSize bounds FileEntry.Size, the whole file assembled from
	// chunks on disk.
	MaxFileSize int64
	// MaxRowLen bounds the values of one row together (and so any one
	// value), which a row reader holds whole.
	MaxRowLen int64
}

// DefaultLimits are the limits an agent applies to the batches delivered to
// it. docs/batch-format.md lists them.
var DefaultLimits = Limits{
	MaxHeaderLen: 4 << 20,
	MaxBodyLen:   256 << 20,
	MaxPieceLen:  64 << 20,
	MaxFileSize:  1 << 40,
	MaxRowLen:    64 << 20,
}

// Check reports the first size h declares beyond l, as a rejection wrapping
// ErrLimit and ErrRejected, or nil. It reads only the header: call it after
// Verify and before Info.Body, so that nothing is decompressed or allocated
// for a batch that breaks a limit (Limits.VerifyFile does both).
func (l Limits) Check(h *Header) error {
	// Entries first: they name the cause more exactly than the body does.
	for i := range h.Files {
		e := &h.Files[i]
		if e.Op != OpPut {
			continue // deletes carry nothing; a verify manifest is bounded by the body
		}
		switch {
		case e.Length > l.MaxPieceLen:
			return Reject(ErrLimit, fmt.Sprintf("files[%d] %q carries %d bytes in one piece, more than the %s this agent accepts; the provider must send it in chunks (chunk_size)",
				i, e.Path, e.Length, sizeText(l.MaxPieceLen)))
		case e.ChunkSize > l.MaxPieceLen:
			return Reject(ErrLimit, fmt.Sprintf("files[%d] %q has chunk_size %d, more than the %s this agent accepts; the provider's chunk_size must be smaller",
				i, e.Path, e.ChunkSize, sizeText(l.MaxPieceLen)))
		case e.Size > l.MaxFileSize:
			return Reject(ErrLimit, fmt.Sprintf("files[%d] %q is %d bytes, more than the %s this agent accepts for one file",
				i, e.Path, e.Size, sizeText(l.MaxFileSize)))
		}
	}
	if h.BodyLen > l.MaxBodyLen {
		return Reject(ErrLimit, fmt.Sprintf("body_len %d is more than the %s this agent accepts in one batch; the provider must send smaller batches (batch.max_bytes)",
			h.BodyLen, sizeText(l.MaxBodyLen)))
	}
	return nil
}

// VerifyFile is VerifyFile held to l: the header's length is checked
// before the header is read, and the verified header's sizes with Check.
// Errors for a broken limit wrap ErrLimit and ErrRejected.
func (l Limits) VerifyFile(path string, lookup func(keyID string) (seal.PublicKey, error)) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	defer f.Close()
	var pre [len(magic) + 4]byte
	if n, _ := f.ReadAt(pre[:], 0); n == len(pre) && string(pre[:len(magic)]) == magic {
		if hlen := int64(binary.BigEndian.Uint32(pre[len(magic):])); hlen > l.MaxHeaderLen {
			return nil, fmt.Errorf("%s: %w", path, Reject(ErrLimit, fmt.Sprintf(
				"header of %d bytes, more than the %s this agent accepts; the provider must send fewer files a batch",
				hlen, sizeText(l.MaxHeaderLen))))
		}
	} // else Verify says what is wrong
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	info, err := Verify(f, st.Size(), lookup)
	if err == nil {
		err = l.Check(&info.Header)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// sizeText prints a power-of-two limit the way configs write sizes.
func sizeText(n int64) string {
	for _, u := range []struct {
		unit  string
		shift uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.unit)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
