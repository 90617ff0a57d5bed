package file

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths below a published or target folder are resolved one element at a
// time from an open folder with O_NOFOLLOW, never by the kernel from a whole
// path: a local user who can write the folder could otherwise plant a
// symlink anywhere on the way, or swap one in between a check and a use, and
// so redirect a read (the agent's own keys), a write or a delete outside
// the folder.

// errLink means a symlink, or something else that is not a folder, stands
// where a folder of the path should be.
var errLink = errors.New("a symlink or a file stands where a folder should be; it is never followed")

// errNotRegular means a path that should name a regular file names a
// symlink, a folder, a device, a pipe or a socket.
var errNotRegular = errors.New("not a regular file")

// openDirAt opens the folder rel ("" for dir itself; slash-separated, clean,
// relative) below the open folder dir without following a symlink in any of
// its elements. With create, missing folders are made with mode perm, each
// fsynced in its parent so that the new entry survives a crash.
func openDirAt(dir int, rel string, create bool, perm fs.FileMode) (int, error) {
	fd, err := unix.Openat(dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: ".", Err: err}
	}
	if rel == "" || rel == "." {
		return fd, nil
	}
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	done := ""
	for _, el := range strings.Split(rel, "/") {
		done = path.Join(done, el)
		next, err := unix.Openat(fd, el, flags, 0)
		if err == unix.ENOENT && create {
			err = unix.Mkdirat(fd, el, uint32(perm.Perm()))
			switch {
			case err == nil:
				if err = unix.Fsync(fd); err == nil {
					if next, err = unix.Openat(fd, el, flags, 0); err == nil {
						err = unix.Fchmod(next, uint32(perm.Perm())) // whatever the umask
					}
				}
			case err == unix.EEXIST: // made meanwhile
				next, err = unix.Openat(fd, el, flags, 0)
			}
		}
		unix.Close(fd)
		switch {
		case err == unix.ELOOP || err == unix.ENOTDIR:
			return -1, fmt.Errorf("%s: %w", done, errLink)
		case err != nil:
			return -1, &fs.PathError{Op: "open", Path: done, Err: err}
		}
		fd = next
	}
	return fd, nil
}

// openFileAt opens the regular file rel below the open folder dir for
// reading, following no symlink on the way or at the end. O_NONBLOCK keeps
// a pipe swapped in from blocking the open; it does nothing to a regular
// file. st receives the open file's status.
func openFileAt(dir int, rel string, st *unix.Stat_t) (*os.File, error) {
	parent, err := openDirAt(dir, parentOf(rel), false, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(parent)
	fd, err := unix.Openat(parent, path.Base(rel), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err == unix.ELOOP {
		return nil, fmt.Errorf("%s: a symlink: %w", rel, errNotRegular)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: rel, Err: err}
	}
	if err := unix.Fstat(fd, st); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "stat", Path: rel, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", rel, errNotRegular)
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// parentOf is path.Dir with "" for a path in the folder itself.
func parentOf(rel string) string {
	if d := path.Dir(rel); d != "." {
		return d
	}
	return ""
}

// openRootDir opens a configured folder (which may itself be reached
// through symlinks: the operator chose it) as the start of no-follow paths.
func openRootDir(p string) (int, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	return fd, nil
}
