// Package ident checks the identity numbers that calls name their subjects
// by: the citizen identity number (公民身份号码, GB 11643-1999) and the
// unified social credit code of organisations (统一社会信用代码,
// GB 32100-2015). Both end in a check character, so most mistyped numbers
// are refused before any database is asked.
package ident

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrInvalid wraps every refusal.
var ErrInvalid = errors.New("invalid identity number")

var (
	idWeights = [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}
	idCheck   = "10X98765432" // by the weighted sum mod 11
)

// CitizenID checks an 18-character citizen identity number: 6 digits of
// region, the birth date (YYYYMMDD, a real day, not in the future), 3
// digits of sequence and the check character (0–9 or X, ISO 7064 MOD 11-2).
// A lower-case x is accepted; the normalised number is returned.
func CitizenID(s string) (string, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if len(s) != 18 {
		return "", fmt.Errorf("%w: a citizen ID number has 18 characters, this one %d", ErrInvalid, len([]rune(s)))
	}
	sum := 0
	for i := 0; i < 17; i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return "", fmt.Errorf("%w: character %d of a citizen ID number must be a digit", ErrInvalid, i+1)
		}
		sum += int(c-'0') * idWeights[i]
	}
	if s[0] == '0' {
		return "", fmt.Errorf("%w: a citizen ID number does not start with 0 (its first six digits are a region code)", ErrInvalid)
	}
	birth, err := time.Parse("20060102", s[6:14])
	if err != nil || birth.Year() < 1850 || birth.After(time.Now()) {
		return "", fmt.Errorf("%w: %s is not a birth date (characters 7–14, YYYYMMDD)", ErrInvalid, s[6:14])
	}
	if want := idCheck[sum%11]; s[17] != want {
		return "", fmt.Errorf("%w: the check character is %c, but the first 17 digits make it %c (a digit is mistyped)", ErrInvalid, s[17], want)
	}
	return s, nil
}

// uscc is the alphabet of the unified social credit code: digits and the
// upper-case letters without I, O, Z, S and V.
const uscc = "0123456789ABCDEFGHJKLMNPQRTUWXY"

var usccWeights = [17]int{1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28}

// CreditCode checks an 18-character unified social credit code: the
// registering authority and organisation type, the 6-digit region, the
// 9-character organisation code and the check character (MOD 31).
func CreditCode(s string) (string, error) {
	s = strings.ToUpper(strings.TrimSpace(s))
	if len(s) != 18 {
		return "", fmt.Errorf("%w: a unified social credit code has 18 characters, this one %d", ErrInvalid, len([]rune(s)))
	}
	sum := 0
	for i := 0; i < 18; i++ {
		v := strings.IndexByte(uscc, s[i])
		if v < 0 {
			return "", fmt.Errorf("%w: character %d (%c) of a unified social credit code is not a digit or a letter it uses (no I, O, Z, S or V)", ErrInvalid, i+1, s[i])
		}
		if i < 17 {
			sum += v * usccWeights[i]
		}
	}
	for i := 2; i < 8; i++ {
		if s[i] < '0' || s[i] > '9' {
			return "", fmt.Errorf("%w: characters 3–8 of a unified social credit code are the region, in digits", ErrInvalid)
		}
	}
	if want := uscc[(31-sum%31)%31]; s[17] != want {
		return "", fmt.Errorf("%w: the check character is %c, but the first 17 make it %c (a character is mistyped)", ErrInvalid, s[17], want)
	}
	return s, nil
}
