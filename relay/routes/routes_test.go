package routes

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		spec, err    string
		prefix, host string
		strip        bool
	}{
		{spec: "/db/=http://127.0.0.1:5984/", prefix: "/db/", host: "127.0.0.1:5984"},
		{spec: "/ui/=strip:https://[::1]:8080/base/", prefix: "/ui/", host: "[::1]:8080", strip: true},
		{spec: "/=http://127.0.0.1:80/", err: "would hide the relay's own page"},
		{spec: "db/=http://x/", err: "starts and ends with /"},
		{spec: "/db=http://x/", err: "starts and ends with /"},
		{spec: "/db/", err: "want /PREFIX/="},
		{spec: "/db/=ftp://x/", err: "http:// or https://"},
		{spec: "/db/=http://", err: "http:// or https://"},
	} {
		r, err := Parse(c.spec)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want …%s…", c.spec, err, c.err)
			}
			continue
		}
		if err != nil || r.Prefix != c.prefix || r.Target.Host != c.host || r.StripPrefix != c.strip {
			t.Errorf("%s: %+v %v", c.spec, r, err)
		}
	}
}
