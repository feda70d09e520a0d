package relay

import (
	"net/url"
	"strings"
	"testing"
)

func TestCleanPath(t *testing.T) {
	for _, c := range []struct {
		in, want string
		err      error
	}{
		{"/", "/", nil},
		{"/a/b/", "/a/b/", nil},
		{"/a//b/./c/../d", "/a/b/d", nil},
		{"/../../etc/passwd", "/etc/passwd", nil},
		{"/a%20b", "/a b", nil},
		{"/a%2eb/..c", "/a.b/..c", nil},
		{"*", "*", nil},
		{"/a%2Fb", "", errPathEncodedSep},
		{"/a%5cb", "", errPathEncodedSep},
		{"/a/%2E%2e/b", "", errPathEncodedDot},
		{"/a/.%2E", "", errPathEncodedDot},
		{"/a/%2e", "", errPathEncodedDot},
		{"/a/%252e%252e/b", "", errPathDouble},
		{"/a/%2525", "", errPathDouble},
		{"/a\\b", "", errPathBadChar},
		{"/a%0d%0aX: y", "", errPathBadChar},
		{"/a%zz", "", errPathBad},
		{"a/b", "", errPathBad},
		{"/app/..;/secret", "", errPathParamDot},
		{"/app/..%3B/secret", "", errPathParamDot},
		{"/app/%2e%2e;x/secret", "", errPathParamDot},
		{"/app/.;/x", "", errPathParamDot},
		{"/app/a;b/..c;d", "/app/a;b/..c;d", nil},
	} {
		got, err := cleanPath(c.in)
		if got != c.want || err != c.err {
			t.Errorf("cleanPath(%q) = %q, %v; want %q, %v", c.in, got, err, c.want, c.err)
		}
	}
}

// FuzzCleanPath: whatever a client sends, a path cleanPath accepts is
// clean, holds no separator or dot segment another decoding would reveal,
// and is its own cleaning (a rule and the upstream see the same path).
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/", "/a/b/", "/shared/.%2fprivate/x", "/%2e%2e/", "/%252e", "/a//b/../c", "/a%20b", "*", "/\x00", "/a/..;/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		p, err := cleanPath(in)
		if err != nil || p == "*" || p == "" {
			return
		}
		if p[0] != '/' || strings.Contains(p, "//") || strings.Contains(p, "/./") || strings.Contains(p, "/../") ||
			strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..") || strings.ContainsAny(p, "\\\x00") ||
			strings.Contains(p, "/.;") || strings.Contains(p, "/..;") {
			t.Fatalf("cleanPath(%q) = %q: not clean", in, p)
		}
		if d, err := url.PathUnescape(p); err == nil && (strings.Count(d, "/") != strings.Count(p, "/") || strings.ContainsAny(d, "\\\x00")) {
			t.Fatalf("cleanPath(%q) = %q decodes again to %q", in, p, d)
		}
		if q, err := cleanPath((&url.URL{Path: p}).EscapedPath()); err != nil || q != p {
			t.Fatalf("cleanPath(%q) = %q, but its escaped form cleans to %q, %v", in, p, q, err)
		}
	})
}
