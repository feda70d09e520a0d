package relaytest

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// HTTP sends one request (hdr: header name, value pairs) and returns the
// answer's status, header and body; it fails t if the request cannot be
// made.
func HTTP(t testing.TB, method, url, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	return do(t, http.DefaultClient, method, url, body, hdr...)
}

// HTTPFrom is HTTP from the local address ip (e.g. 127.0.0.2: another
// client address on loopback, for per-address bounds).
func HTTPFrom(t testing.TB, ip, method, url, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	defer c.CloseIdleConnections()
	return do(t, c, method, url, body, hdr...)
}

// StatusFrom sends one request without a body from the local address ip
// (hdr: header name, value pairs) and returns the answer's status, or 0
// when the relay refused or closed the connection (an address it bans).
func StatusFrom(ip, method, url string, hdr ...string) int {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: Patience}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func do(t testing.TB, c *http.Client, method, url, body string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, string(b)
}
