package anchor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qianzhi/qianzhi/pkg/fsutil"
)

// File is an export of checkpoints, as qz-agent audit checkpoints --export
// and qz-central audit checkpoints --export write it: one file per holder,
// named FilePrefix + holder + ".json", so the exports of many agents can be
// gathered in one folder. Holder and Exported are not signed: they only
// say where a checkpoint was found.
type File struct {
	Holder      string       `json:"holder"` // the agent's node ID, or "hub"
	Exported    time.Time    `json:"exported"`
	Checkpoints []Checkpoint `json:"checkpoints"`
}

// FilePrefix begins the name of every export file.
const FilePrefix = "audit-checkpoints-"

// maxFile bounds an export file read back: an agent keeps a few thousand
// checkpoints (one an hour, see agent/checkpoints.go), well under this.
const maxFile = 64 << 20

// Write writes f into dir (created if needed) and returns the file's path.
func Write(dir string, f File) (string, error) {
	if f.Holder == "" || strings.ContainsAny(f.Holder, `/\`) || strings.HasPrefix(f.Holder, ".") {
		return "", fmt.Errorf("export checkpoints: holder %q cannot name a file", f.Holder)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("export checkpoints: %w", err)
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, FilePrefix+f.Holder+".json")
	if err := fsutil.WriteFileAtomic(path, append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("export checkpoints: %w", err)
	}
	return path, nil
}

// ReadDir reads every export file in dir, in name order. A folder without
// any is an error: verifying against nothing would prove nothing.
func ReadDir(dir string) ([]File, error) {
	names, err := filepath.Glob(filepath.Join(dir, FilePrefix+"*.json"))
	if err != nil {
		return nil, err
	}
	if len(names) == 0 {
		if _, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("read checkpoints: %w", err)
		}
		return nil, fmt.Errorf("no %s*.json files in %s: gather them with 'qz-agent audit checkpoints --export DIR' on the agents", FilePrefix, dir)
	}
	sort.Strings(names)
	var out []File
	for _, n := range names {
		f, err := readFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func readFile(path string) (File, error) {
	fh, err := os.Open(path)
	if err != nil {
		return File{}, fmt.Errorf("read checkpoints: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxFile+1))
	if err != nil {
		return File{}, fmt.Errorf("read checkpoints %s: %w", path, err)
	}
	if len(b) > maxFile {
		return File{}, fmt.Errorf("read checkpoints %s: larger than %d MiB, not an export of checkpoints", path, maxFile>>20)
	}
	var f File
	if err := json.Unmarshal(b, &f); err != nil {
		return File{}, fmt.Errorf("read checkpoints %s: %w (export it again)", path, err)
	}
	if f.Holder == "" {
		return File{}, errors.New("read checkpoints " + path + ": no holder named (export it again)")
	}
	return f, nil
}
