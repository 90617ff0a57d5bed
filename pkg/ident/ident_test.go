package ident

import (
	"errors"
	"strings"
	"testing"
)

func TestCitizenID(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{in: "11010519491231002X", want: "11010519491231002X"}, // the standard's example
		{in: "11010519491231002x", want: "11010519491231002X"},
		{in: " 110105194912310029 ", err: "check character is 9, but the first 17 digits make it X"},
		{in: "110105194912310021", err: "make it X"},
		{in: "11010519491331002X", err: "19491331 is not a birth date"},
		{in: "11010529991231002X", err: "not a birth date"}, // in the future
		{in: "01010519491231002X", err: "does not start with 0"},
		{in: "1101051949123100", err: "18 characters, this one 16"},
		{in: "1101051949A231002X", err: "character 11 of a citizen ID number must be a digit"},
		{in: "110105' OR '1'='1", err: "18 characters"},
		{in: "", err: "18 characters, this one 0"},
	} {
		got, err := CitizenID(c.in)
		if c.err != "" {
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("CitizenID(%q) = %q, %v; want an error with %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("CitizenID(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

// TestCitizenIDEveryCheckCharacter changes the check character of valid
// numbers to each other value: exactly one is accepted.
func TestCitizenIDEveryCheckCharacter(t *testing.T) {
	for _, base := range []string{"11010519491231002", "44030419851107361", "51010820000229123"} {
		ok := 0
		for _, c := range "0123456789X" {
			if _, err := CitizenID(base + string(c)); err == nil {
				ok++
			}
		}
		if ok != 1 {
			t.Errorf("%s?: %d check characters accepted, want exactly 1", base, ok)
		}
	}
}

func TestCreditCode(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
	}{
		{in: "91350100M000100Y43", want: "91350100M000100Y43"}, // the standard's example
		{in: "91350100m000100y43", want: "91350100M000100Y43"},
		{in: "91350100M000100Y44", err: "check character is 4, but the first 17 make it 3"},
		{in: "91350100M000100I43", err: "character 16 (I)"},
		{in: "913501A0M000100Y43", err: "region, in digits"},
		{in: "91350100M00010", err: "18 characters, this one 14"},
	} {
		got, err := CreditCode(c.in)
		if c.err != "" {
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("CreditCode(%q) = %q, %v; want an error with %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("CreditCode(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	ok := 0
	for _, c := range uscc {
		if _, err := CreditCode("91350100M000100Y4" + string(c)); err == nil {
			ok++
		}
	}
	if ok != 1 {
		t.Errorf("%d check characters accepted, want exactly 1", ok)
	}
}
