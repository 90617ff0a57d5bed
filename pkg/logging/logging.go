// Package logging builds the slog loggers of both binaries: JSON on stdout
// for journald when run as a service, text on a terminal.
package logging

import (
	"io"
	"log/slog"
	"os"
	"strings"
)

// New returns a logger at the named level ("debug", "info", "warn", "error").
// format is "json" or "text"; "" picks text on a terminal, JSON otherwise.
func New(w io.Writer, level, format string) *slog.Logger {
	var l slog.Level
	l.UnmarshalText([]byte(strings.ToUpper(level)))
	opts := &slog.HandlerOptions{Level: l}
	if format == "" {
		format = "json"
		if IsTerminal(w) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
