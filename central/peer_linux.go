//go:build linux

package central

import (
	"errors"
	"net"
	"syscall"
)

// peerUser names the user at the other end of a Unix socket connection,
// from its peer credentials.
func peerUser(c net.Conn) (string, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "", errors.New("not a Unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "", err
	}
	var who string
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
		if err != nil {
			credErr = err
			return
		}
		who = userName(int(cred.Uid))
	}); err != nil {
		return "", err
	}
	return who, credErr
}
