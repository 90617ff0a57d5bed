package central

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/fsutil"
	"github.com/qianzhi/qianzhi/pkg/version"
)

// hubFiles are the state files a backup carries beside the database and
// the payloads: the CA (losing its key orphans every node), the server's
// certificate, and the QUIC reset key.
func (c *Config) hubFiles() []string {
	return []string{c.caCert(), c.caKey(), c.serverCert(), c.serverKey(), filepath.Join(c.StateDir, "quic-reset.key")}
}

// backup writes a copy of the hub's state to dir, which must not exist or
// be empty. It runs while the hub serves: the database is copied as one
// consistent snapshot (VACUUM INTO), then the stored payloads. A payload
// purged by retention between the two is missing from the copy, which the
// hub reports as purged when asked for it.
func backup(ctx context.Context, cfg Config, dir string, stdout io.Writer) error {
	if _, err := os.Stat(cfg.caCert()); err != nil {
		return fmt.Errorf("no hub in %s to back up (%w)", cfg.StateDir, err)
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("backup folder %s is not empty: name a new folder", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create backup folder: %w", err)
	}
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	sq, ok := st.(*store.SQLite)
	if !ok {
		return errors.New("backup: this store is backed up with its database's own tools")
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	// Recorded first, so that the backup holds the record of its making.
	if err := st.Audit(ctx, localActor(), "hub.backup", dir, ""); err != nil {
		return err
	}
	// When the snapshot was taken: certificates the CA issues after it are
	// ones a hub restored from it has not seen (see Hub.adopt).
	meta, _ := json.Marshal(backupMeta{Taken: time.Now().UTC(), Version: version.Version})
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, backupMetaFile), meta, 0o600); err != nil {
		return err
	}
	db := filepath.Join(dir, "central.db")
	if err := sq.Backup(ctx, db); err != nil {
		return fmt.Errorf("back up the database: %w", err)
	}
	if err := os.Chmod(db, 0o600); err != nil {
		return err
	}
	for _, p := range cfg.hubFiles() {
		if err := copyFile(p, filepath.Join(dir, filepath.Base(p))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	n, size, err := copyTree(cfg.payloadDir(), filepath.Join(dir, "payload"), "partial")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("back up payloads: %w", err)
	}
	if err := fsutil.SyncDir(dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "hub backed up to %s: database, CA and server keys, %d payloads (%d bytes)\nkeep it as safe as the hub: it holds the CA key\n", dir, n, size)
	return nil
}

// restore puts a backup in place of a hub's state. The state folder must
// not hold a hub (move it away first) and the hub must be stopped.
func restore(ctx context.Context, cfg Config, dir string, stdout io.Writer) error {
	if _, err := os.Stat(filepath.Join(dir, "central.db")); err != nil {
		return fmt.Errorf("%s is not a hub backup (no central.db): %w", dir, err)
	}
	if _, err := os.Stat(cfg.caCert()); err == nil {
		return fmt.Errorf("%s already holds a hub: stop qz-central and move that folder away before restoring", cfg.StateDir)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return err
	}
	// The CA certificate last: its presence marks a hub (see init).
	var files []string
	for _, p := range cfg.hubFiles() {
		if p != cfg.caCert() {
			files = append(files, p)
		}
	}
	if err := copyFile(filepath.Join(dir, "central.db"), cfg.dbPath()); err != nil {
		return err
	}
	n, _, err := copyTree(filepath.Join(dir, "payload"), cfg.payloadDir(), "")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, p := range append(files, cfg.caCert()) {
		if err := copyFile(filepath.Join(dir, filepath.Base(p)), p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	var meta backupMeta
	if b, err := os.ReadFile(filepath.Join(dir, backupMetaFile)); err == nil {
		if err := json.Unmarshal(b, &meta); err != nil {
			return fmt.Errorf("%s: %w", backupMetaFile, err)
		}
	}
	if !meta.Taken.IsZero() {
		if err := st.SetRestoredFrom(ctx, meta.Taken); err != nil {
			return err
		}
	}
	if err := st.Audit(ctx, localActor(), "hub.restore", dir, fmt.Sprintf("payloads=%d taken=%s", n, meta.Taken.Format(time.RFC3339))); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "hub restored from %s into %s (%d payloads); start qz-central, then check with 'qz-central audit verify'\n", dir, cfg.StateDir, n)
	return nil
}

const backupMetaFile = "backup.json"

// backupMeta describes a backup.
type backupMeta struct {
	Taken   time.Time `json:"taken"`
	Version string    `json:"version"` // of the qz-central that took it
}

// copyFile copies a file durably, keeping its permission bits.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// copyTree copies a folder's files, skipping the top-level folder named
// skip, and returns how many files and bytes it copied.
func copyTree(src, dst, skip string) (int, int64, error) {
	var n int
	var size int64
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != src && errors.Is(err, fs.ErrNotExist) {
				return nil // purged by retention meanwhile
			}
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if skip != "" && (rel == skip || strings.HasPrefix(rel, skip+string(filepath.Separator))) {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o750)
		}
		if err := copyFile(p, target); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // purged by retention meanwhile
			}
			return err
		}
		fi, _ := d.Info()
		n++
		size += fi.Size()
		return nil
	})
	return n, size, err
}
