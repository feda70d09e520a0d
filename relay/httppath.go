package relay

import (
	"errors"
	"net/url"
	"path"
	"strings"
)

// Errors of cleanPath: each is a 400 with its text.
var (
	errPathEncodedSep = errors.New("an encoded slash or backslash (%2F, %5C) in the path")
	errPathEncodedDot = errors.New("an encoded dot segment (%2E) in the path")
	errPathDouble     = errors.New("a doubly encoded character in the path")
	errPathBadChar    = errors.New("a backslash or control character in the path")
	errPathParamDot   = errors.New("a dot segment with a parameter (..;) in the path")
	errPathBad        = errors.New("a malformed path")
)

// cleanPath is the one path a request on the relay port is decided on and
// forwarded as: escaped (the request's path as sent) decoded once and
// cleaned (path.Clean, a trailing slash kept). It refuses what would let a
// rule and the service behind a route see different paths: an encoded
// separator, a dot segment written with an encoded dot or with a path
// parameter ("..;", a dot segment to servlet containers), a percent sign
// that still encodes a dot, slash or backslash after decoding (a second
// decoding upstream would make it one), a backslash (a separator to some
// servers) and control characters. Cost: one decoding and one cleaning,
// each allocating only when the path changes.
func cleanPath(escaped string) (string, error) {
	if escaped == "" || escaped[0] != '/' {
		if escaped == "*" || escaped == "" { // OPTIONS *, CONNECT
			return escaped, nil
		}
		return "", errPathBad
	}
	if strings.IndexByte(escaped, '%') >= 0 {
		lower := strings.ToLower(escaped)
		if strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") {
			return "", errPathEncodedSep
		}
		if strings.Contains(lower, "%2e") {
			for seg := range strings.SplitSeq(lower, "/") {
				if d, err := url.PathUnescape(seg); err == nil && (d == "." || d == "..") {
					return "", errPathEncodedDot
				}
			}
		}
	}
	p, err := url.PathUnescape(escaped)
	if err != nil {
		return "", errPathBad
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c == '\\' || c < 0x20 || c == 0x7f {
			return "", errPathBadChar
		}
	}
	if strings.IndexByte(p, '%') >= 0 {
		lower := strings.ToLower(p)
		if strings.Contains(lower, "%2e") || strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") || strings.Contains(lower, "%25") {
			return "", errPathDouble
		}
	}
	if strings.IndexByte(p, ';') >= 0 {
		for seg := range strings.SplitSeq(p, "/") {
			// Servlet containers (Tomcat, Jetty, Spring) drop ";params"
			// and resolve the segment that is left: "..;" is "..".
			if b, _, ok := strings.Cut(seg, ";"); ok && (b == "." || b == "..") {
				return "", errPathParamDot
			}
		}
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c, nil
}
