//go:build !linux

package central

import (
	"errors"
	"net"
)

// peerUser cannot read peer credentials here: the admin socket refuses
// every caller, and commands on this host open the database directly.
func peerUser(net.Conn) (string, error) {
	return "", errors.New("peer credentials are read on Linux only")
}
