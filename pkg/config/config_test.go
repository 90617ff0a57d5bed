package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type inner struct {
	Quota Size   `yaml:"quota"`
	Dir   string `yaml:"dir"`
}

type sample struct {
	Hub     string        `yaml:"hub"`
	Poll    time.Duration `yaml:"poll"`
	Spool   inner         `yaml:"spool"`
	Entries []inner       `yaml:"entries"`
}

func TestParse(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string // substrings of the error; empty: no error
	}{
		{"valid", "hub: a:1\npoll: 2s\nspool:\n  quota: 2GiB\n", nil},
		{"unknown top key", "hubb: a:1\n", []string{"f.yaml:1:", `unknown key "hubb"`, `did you mean "hub"`}},
		{"unknown nested key", "spool:\n  qouta: 1GiB\n", []string{"f.yaml:2:", `"qouta"`, `"quota"`}},
		{"unknown key in list", "entries:\n  - dir: x\n  - dri: y\n", []string{"f.yaml:3:", `"dri"`}},
		{"far-off key has no suggestion", "zzzzzzzz: 1\n", []string{`unknown key "zzzzzzzz"`}},
		{"bad size", "spool:\n  quota: lots\n", []string{"f.yaml:2:", "bad size"}},
		{"bad duration", "poll: soon\n", []string{"f.yaml:1:"}},
		{"syntax", "hub: [a\n", []string{"f.yaml"}},
		{"empty", "", []string{"empty"}},
		{"every problem reported", "a: 1\nb: 2\n", []string{`"a"`, `"b"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s sample
			err := Parse("f.yaml", []byte(c.in), &s)
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if c.name == "far-off key has no suggestion" && strings.Contains(err.Error(), "did you mean") {
				t.Errorf("suggested a key for nonsense: %v", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Errorf("error is not a *config.Error: %T", err)
			}
		})
	}
	var s sample
	if err := Parse("f.yaml", []byte("hub: a:1\npoll: 2s\nspool:\n  quota: 2GiB\n"), &s); err != nil || s.Spool.Quota != 2<<30 || s.Poll != 2*time.Second {
		t.Errorf("decoded %+v, %v", s, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"0": 0, "512": 512, "4MiB": 4 << 20, "1GiB": 1 << 30, "1gb": 1e9, "64k": 64 << 10, "1.5MiB": 3 << 19} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1 parsec"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}
