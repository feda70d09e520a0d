package main

import (
	"strings"
	"testing"
)

// stream is go test -json's output for a package with a passing, a
// failing and three skipped tests (two for one reason), then a package
// that timed out in a running test.
const stream = `{"Action":"start","Package":"m/a"}
{"Action":"run","Package":"m/a","Test":"TestOK"}
{"Action":"output","Package":"m/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"m/a","Test":"TestOK","Output":"    a_test.go:9: chatty\n"}
{"Action":"pass","Package":"m/a","Test":"TestOK"}
{"Action":"output","Package":"m/a","Test":"TestBad","Output":"=== RUN   TestBad\n"}
{"Action":"output","Package":"m/a","Test":"TestBad","Output":"    a_test.go:12: timed out waiting for: the tunnel (last: closed)\n"}
{"Action":"output","Package":"m/a","Test":"TestBad","Output":"--- FAIL: TestBad (20.00s)\n"}
{"Action":"fail","Package":"m/a","Test":"TestBad"}
{"Action":"output","Package":"m/a","Test":"TestRedis1","Output":"=== RUN   TestRedis1\n"}
{"Action":"output","Package":"m/a","Test":"TestRedis1","Output":"    redis.go:22: no redis-server: apt-get install redis-server\n"}
{"Action":"output","Package":"m/a","Test":"TestRedis1","Output":"--- SKIP: TestRedis1 (0.00s)\n"}
{"Action":"skip","Package":"m/a","Test":"TestRedis1"}
{"Action":"output","Package":"m/a","Test":"TestRedis2/sub","Output":"    redis.go:22: no redis-server: apt-get install redis-server\n"}
{"Action":"skip","Package":"m/a","Test":"TestRedis2/sub"}
{"Action":"output","Package":"m/a","Test":"TestNode","Output":"    js_test.go:37: node not found:\n"}
{"Action":"output","Package":"m/a","Test":"TestNode","Output":"        apt-get install nodejs\n"}
{"Action":"output","Package":"m/a","Test":"TestNode","Output":"--- SKIP: TestNode (0.00s)\n"}
{"Action":"skip","Package":"m/a","Test":"TestNode"}
{"Action":"output","Package":"m/a","Output":"FAIL\n"}
{"Action":"output","Package":"m/a","Output":"FAIL\tm/a\t20.1s\n"}
{"Action":"fail","Package":"m/a"}
{"Action":"skip","Package":"m/notests"}
{"Action":"output","Package":"m/b","Test":"TestHang","Output":"=== RUN   TestHang\n"}
{"Action":"output","Package":"m/b","Test":"TestHang","Output":"panic: test timed out after 8m0s\n"}
{"Action":"output","Package":"m/b","Output":"FAIL\tm/b\t480.0s\n"}
{"Action":"fail","Package":"m/b"}
go: downloading example.com/x v1.0.0
`

func TestReport(t *testing.T) {
	var out strings.Builder
	skips := report(strings.NewReader(stream), &out)
	want := "    a_test.go:12: timed out waiting for: the tunnel (last: closed)\n" +
		"--- FAIL: TestBad (20.00s)\n" +
		"FAIL\n" +
		"FAIL\tm/a\t20.1s\n" +
		"panic: test timed out after 8m0s\n" +
		"FAIL\tm/b\t480.0s\n" +
		"go: downloading example.com/x v1.0.0\n"
	if out.String() != want {
		t.Errorf("printed:\n%s\nwant:\n%s", out.String(), want)
	}
	got := strings.Join(summary(skips), "\n")
	wantSum := "skipped 2 tests (m/a): no redis-server: apt-get install redis-server\n" +
		"skipped 1 test (m/a.TestNode): node not found: apt-get install nodejs"
	if got != wantSum {
		t.Errorf("summary:\n%s\nwant:\n%s", got, wantSum)
	}
}

func TestShortPkg(t *testing.T) {
	for in, want := range map[string]string{
		"github.com/meetpoint/meetpoint/relay/auth": "relay/auth",
		"github.com/meetpoint/meetpoint":            ".",
		"example.com/x":                             "example.com/x",
	} {
		if got := shortPkg(in); got != want {
			t.Errorf("shortPkg(%q) = %q, want %q", in, got, want)
		}
	}
}
