package batch

import (
	"errors"
	"fmt"
)

var (
	// ErrRejected is wrapped by every error that means the batch must be
	// rejected, as opposed to an I/O failure that may pass on retry.
	ErrRejected = errors.New("batch rejected")

	// ErrCorrupt means the batch is malformed or its digest does not match:
	// bad magic, impossible lengths, invalid header, changed bytes.
	ErrCorrupt = errors.New("batch corrupt")

	// ErrUnsupported means the batch is well-formed as far as this reader can
	// tell but uses a format version or algorithm it does not implement.
	ErrUnsupported = errors.New("batch format not supported")

	// ErrUnknownKey is for lookup functions passed to Verify to return (or
	// wrap) when no trusted key has the requested ID.
	ErrUnknownKey = errors.New("unknown seal key")
)

// rejectError carries a reason sentinel (ErrCorrupt, seal.ErrBadSignature, …)
// together with ErrRejected, so callers can test for either.
type rejectError struct {
	reason error
	detail string
}

func (e *rejectError) Error() string { return e.reason.Error() + ": " + e.detail }

func (e *rejectError) Unwrap() []error { return []error{e.reason, ErrRejected} }

// Reject returns an error that wraps both reason and ErrRejected, with detail
// saying what exactly is wrong. Packages that check batches or receipts use it
// so that their callers can tell rejections from I/O errors with errors.Is.
func Reject(reason error, detail string) error {
	return &rejectError{reason: reason, detail: detail}
}

func corruptf(format string, args ...any) error {
	return Reject(ErrCorrupt, fmt.Sprintf(format, args...))
}
