package auth

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzHMACToken holds HMACAuth's token check (a parser of what any client
// sends) to the format its doc states, written here a second way: a
// regular expression for the syntax, the MAC computed with crypto/hmac
// (sign), the window from the doc. Both must give the same answer for
// every input, and neither may panic; Subject must not panic, and a
// valid token's subject is the id its MAC covers.
//
// The fuzzer cannot forge a MAC, so it builds a token from parts and,
// with signed set, signs the id and expiry itself (the tail then follows
// the MAC): that reaches the syntax and window checks which only a
// correctly signed token gets to. Without signed the token is
// id.expiry.tail as given, any bytes at all.
func FuzzHMACToken(f *testing.F) {
	exp := strconv.FormatInt(t0.Unix()+60, 10)
	for _, s := range []struct {
		id, expiry string
		signed     bool
		tail       string
	}{
		{"c", exp, true, ""},
		{"client-7_X", exp, true, ""},
		{strings.Repeat("a", 64), exp, true, ""},
		{strings.Repeat("a", 65), exp, true, ""},
		{"c", "0" + exp, true, ""},
		{"c", strconv.FormatInt(t0.Unix(), 10), true, ""},
		{"c", strconv.FormatInt(t0.Add(MaxHMACTTL).Unix(), 10), true, ""},
		{"c", strconv.FormatInt(t0.Add(MaxHMACTTL).Unix()+1, 10), true, ""},
		{"c", "9223372036854775807", true, ""},
		{"c", "99999999999999999999", true, ""},
		{"c", "-1", true, ""},
		{"c", "+" + exp, true, ""},
		{"a b", exp, true, ""},
		{"é", exp, true, ""},
		{"c", exp, true, "="},
		{"c", exp, true, ".x"},
		{"c", exp, false, "mac"},
		{"", "", false, ""},
		{"c.d", exp, false, ""},
	} {
		f.Add(s.id, s.expiry, s.signed, s.tail)
	}
	key := append([]byte(nil), testKey...)
	a := &HMACAuth{now: func() time.Time { return t0 }}
	a.key.Store(&key)
	f.Fuzz(func(t *testing.T, id, expiry string, signed bool, tail string) {
		tok := id + "." + expiry + "." + tail
		if signed {
			tok = sign(testKey, id, expiry) + tail
		}
		got := a.valid(tok, t0)
		if want := hmacSpec(tok, t0); got != want {
			t.Fatalf("token %q: valid says %v, the format says %v", tok, got, want)
		}
		sub := a.Subject(tok)
		if m := hmacSyntax.FindStringSubmatch(tok); got && sub != m[1] {
			t.Fatalf("token %q: Subject %q, the id its MAC covers %q", tok, sub, m[1]) // access rules and channels go by it
		}
	})
}

// hmacSyntax is HMACAuth's token syntax as its doc states it: ID, EXPIRY
// (at most 19 digits: an int64 second), MAC, separated by single dots.
var hmacSyntax = regexp.MustCompile(`^([A-Za-z0-9_-]{1,64})\.([0-9]{1,19})\.([A-Za-z0-9_-]*)$`)

// hmacSpec is FuzzHMACToken's oracle: whether tok is valid at now under
// testKey and MaxHMACTTL, by the doc, not by the code under test.
func hmacSpec(tok string, now time.Time) bool {
	m := hmacSyntax.FindStringSubmatch(tok)
	if m == nil || sign(testKey, m[1], m[2]) != tok {
		return false
	}
	exp, err := strconv.ParseInt(m[2], 10, 64)
	if err != nil {
		return false // 19 digits past the largest int64
	}
	return now.Unix() < exp && exp <= now.Add(MaxHMACTTL).Unix()
}
