package anchor

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qianzhi/qianzhi/pkg/pki"
)

// TestVerify: a checkpoint verifies under the CA that signed it, and any
// change to what it states, or another CA, makes it fail.
func TestVerify(t *testing.T) {
	ca, err := pki.NewCA("hub", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("hub", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	head := strings.Repeat("ab", 32)
	c, err := Sign(ca, 42, head, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Verify(ca.Cert); err != nil {
		t.Fatalf("signed checkpoint refused: %v", err)
	}
	forgedBy, err := Sign(other, 42, head, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	forgedBy.Hub = c.Hub // claims to be this hub's
	for name, tc := range map[string]struct {
		c    Checkpoint
		want error
	}{
		"seq changed":     {with(c, func(c *Checkpoint) { c.Seq = 60 }), ErrForged},
		"head changed":    {with(c, func(c *Checkpoint) { c.Head = strings.Repeat("cd", 32) }), ErrForged},
		"time changed":    {with(c, func(c *Checkpoint) { c.At = c.At.Add(time.Hour) }), ErrForged},
		"signature flip":  {with(c, func(c *Checkpoint) { c.Signature = append([]byte{c.Signature[0] ^ 1}, c.Signature[1:]...) }), ErrForged},
		"no signature":    {with(c, func(c *Checkpoint) { c.Signature = nil }), ErrForged},
		"other CA's key":  {forgedBy, ErrForged},
		"other hub named": {with(c, func(c *Checkpoint) { c.Hub = strings.Repeat("0", 64) }), ErrOtherHub},
	} {
		if err := tc.c.Verify(ca.Cert); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func with(c Checkpoint, f func(*Checkpoint)) Checkpoint {
	c.Signature = append([]byte(nil), c.Signature...)
	f(&c)
	return c
}

// TestFileRoundTrip: an export read back verifies, and a folder without
// exports is an error rather than a pass.
func TestFileRoundTrip(t *testing.T) {
	ca, _ := pki.NewCA("hub", time.Hour)
	c, err := Sign(ca, 7, strings.Repeat("ef", 32), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := ReadDir(dir); err == nil {
		t.Fatal("an empty folder was accepted")
	}
	if _, err := Write(dir, File{Holder: "../x", Checkpoints: []Checkpoint{c}}); err == nil {
		t.Fatal("a holder with a path in it was accepted")
	}
	if _, err := Write(dir, File{Holder: "gaj", Exported: time.Now(), Checkpoints: []Checkpoint{c}}); err != nil {
		t.Fatal(err)
	}
	fs, err := ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 1 || fs[0].Holder != "gaj" || len(fs[0].Checkpoints) != 1 {
		t.Fatalf("read back %+v", fs)
	}
	if err := fs[0].Checkpoints[0].Verify(ca.Cert); err != nil {
		t.Fatalf("checkpoint read back does not verify: %v", err)
	}
}
