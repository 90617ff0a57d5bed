package transport

import (
	"log"
	"log/slog"
)

// slogErrorLog routes net/http's internal error log (TLS handshake failures,
// mostly) to slog at debug level; refused handshakes are audited by the hub.
func slogErrorLog(l *slog.Logger) *log.Logger {
	if l == nil {
		l = slog.Default()
	}
	return slog.NewLogLogger(l.Handler(), slog.LevelDebug)
}
