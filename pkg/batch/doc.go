// Package batch reads and writes Qianzhi batch files, format version 1.
//
// A batch is one signed, immutable unit of data for one resource and one
// grant, numbered in sequence from 1. A provider agent writes it with
// NewWriter or Create; the hub and the consumer agent check it with Verify
// before they trust a single byte of it, then read the body with Info.Body.
//
// A file is the magic "QZBATCH1", a length-prefixed JSON Header, the body
// (raw or zstd) and a trailer holding the SHA-256 digest of everything before
// it and the provider's seal over that digest. The exact byte layout is in
// docs/batch-format.md.
//
// Errors from ReadInfo and Verify that mean "this batch must be rejected"
// (corrupt, unsupported, unknown key, bad seal) satisfy
// errors.Is(err, ErrRejected); anything else is an I/O error worth retrying.
// So do the errors of Limits.Check and of RowReader for a batch that
// declares more than its receiver accepts (ErrLimit): a receiver checks a
// verified header with DefaultLimits.Check before it reads the body.
package batch
