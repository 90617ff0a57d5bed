package batch

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Inspect prints info for people, as `qz-agent batch inspect FILE` shows
// it: the header, the file table and a last line "seal: OK" or
// "seal: FAILED: <reason>" from verifyErr. Write errors are ignored, as
// with fmt.Print. info may be nil when the file
// could not even be parsed; then only the verdict is printed.
func Inspect(w io.Writer, info *Info, verifyErr error) {
	ew := w
	if info != nil {
		h := &info.Header
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, fmt.Sprintf(format, args...)) }
		row("format", "version %d, kind %s", h.Version, h.Kind)
		row("resource", "%s", h.Resource)
		row("grant", "%s", h.Grant)
		row("route", "%s → %s", h.Provider, h.Consumer)
		row("sequence", "%d", h.Sequence)
		row("created", "%s", h.Created.Format(time.RFC3339Nano))
		if h.Compression == CompressionZstd {
			row("compression", "%s level %d", h.Compression, h.Level)
		} else {
			row("compression", "%s", h.Compression)
		}
		row("body", "%d bytes, stored %d bytes", h.BodyLen, info.StoredLen)
		row("file size", "%d bytes", info.Size)
		row("digest", "%s:%x", h.DigestAlg, info.Digest)
		row("seal", "%s key %s", h.SealAlg, h.SealKeyID)
		if sc := h.Schema; sc != nil {
			row("rows", "%d (%s of %s, schema %s)", h.Rows, sc.Phase, sc.Table, sc.Fingerprint)
			if sc.From != "" || sc.To != "" {
				row("watermark", "from %s to %s", sc.From, sc.To)
			}
			if rc := sc.Reconcile; rc != nil {
				row("reconcile", "%d buckets, %d carried whole", rc.Buckets, len(rc.Replace))
			}
		}
		tw.Flush()
		if sc := h.Schema; sc != nil {
			fmt.Fprintf(ew, "columns: %d, key (%s)\n", len(sc.Columns), strings.Join(sc.Key, ", "))
			for _, c := range sc.Columns {
				t := c.Type
				switch {
				case c.Type == TypeDecimal:
					t = fmt.Sprintf("%s(%d,%d)", t, c.Precision, c.Scale)
				case c.Length > 0:
					t = fmt.Sprintf("%s(%d)", t, c.Length)
				case c.Precision > 0:
					t = fmt.Sprintf("%s(%d)", t, c.Precision)
				}
				null := ""
				if c.Nullable {
					null = " null"
				}
				fmt.Fprintf(ew, "  %-16s%s  %s\n", t+null, "", c.Name)
			}
		}

		if len(h.Files) > 0 {
			fmt.Fprintf(ew, "files: %d entries\n", len(h.Files))
			// Path last: tabwriter cannot align wide (CJK) characters.
			tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprint(tw, "  OP\tCHUNK\tOFFSET\tLENGTH\tSIZE\t  PATH\n")
			for _, e := range h.Files {
				if e.Op == OpDelete {
					fmt.Fprintf(tw, "  %s\t-\t-\t-\t-\t  %s\n", e.Op, e.Path)
					continue
				}
				fmt.Fprintf(tw, "  %s\t%d/%d\t%d\t%d\t%d\t  %s\n",
					e.Op, e.Chunk+1, e.Chunks, e.Offset, e.Length, e.Size, e.Path)
			}
			tw.Flush()
		}
	}
	if verifyErr != nil {
		fmt.Fprintf(ew, "seal: FAILED: %v\n", verifyErr)
	} else {
		fmt.Fprintln(ew, "seal: OK")
	}
}
