package handshake

import (
	"encoding/json"
	"slices"
	"testing"
)

// scanChecked is scanRequest(in), failing t unless a request the fast path
// takes is the one sonic's path gives.
func scanChecked(t testing.TB, in []byte) (Request, bool) {
	t.Helper()
	fast, ok := scanRequest(in)
	if !ok {
		return fast, false
	}
	slow, err := parseRequest(in)
	if err != nil {
		t.Fatalf("%q: fast path took it, sonic: %v", in, err)
	}
	if fast.ID != slow.ID || fast.Method != slow.Method || fast.Namespace != slow.Namespace || fast.Name != slow.Name ||
		!slices.Equal(fast.Params(), slow.Params()) {
		t.Fatalf("%q: fast path %+v, sonic %+v", in, fast, slow)
	}
	return fast, true
}

// What the relay's clients send takes the fast path, and gives what sonic
// gives.
func TestScanRequestTakesClientShapes(t *testing.T) {
	marshaled, err := json.Marshal(map[string]any{"id": 3, "method": "Authentication.Authenticate",
		"params": map[string]any{"uuid": "u", "name": "Wohnzimmer Tür", "token": "t", "nonce": ""}})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]byte{
		AppendRequest(nil, 1, "Authentication.Authenticate", Str("uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
			Str("name", "bench-a"), Str("token", "dG9rZW4="), Str("nonce", "n1")),
		marshaled, // the client library (client.Raw.Call): keys sorted
		[]byte(`{"id":0,"method":"Authentication.Authenticate","params":{"name":"nymea","token":"t","uuid":"{6ba7b810-9dad-11d1-80b4-00c04fd430c8}"}}`), // Qt, compact
		[]byte(" {\n \"id\" : -7 ,\t\"method\":\"RemoteProxy.Hello\"}\r\n"),
		[]byte(`{"id":2147483647,"method":"RemoteProxy.Introspect","params":null}`),
		[]byte(`{"id":5,"method":"RemoteProxy.Hello","params":{}}`),
		AppendRequest(nil, 9, "Mesh.Join", Str("node", "n"), Int("time", 1765000000), Str("mac", "m"), Str("token", "t"),
			Str("uuid", "u"), Str("name", ""), Str("rid", "r")),
		[]byte(`{"id":4,"method":"TunnelProxy.Ping","params":{"timestamp":18446744073709551615}}`),
		// Qt's QJsonDocument::Indented, a UInt before whitespace (sonic's
		// Raw kept the whitespace: paramText trims it).
		[]byte("{\n    \"id\": 3,\n    \"method\": \"TunnelProxy.Ping\",\n    \"params\": {\n        \"timestamp\": 1765000000000\n    }\n}\n"),
		[]byte(`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":0                }}`),
		AppendRequest(nil, 6, "TunnelProxy.RegisterServer", Str("serverName", "s"), Str("serverUuid", "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}")),
	} {
		if _, ok := scanChecked(t, in); !ok {
			t.Fatalf("%q: not taken by the fast path", in)
		}
	}
}

// Anything else goes to sonic, which answers it as before.
func TestScanRequestLeavesTheRestToSonic(t *testing.T) {
	for _, in := range []string{
		`{"id":"1","method":"RemoteProxy.Hello"}`,                        // a string id
		`{"id":1.0,"method":"RemoteProxy.Hello"}`,                        // a float id
		`{"id":2147483648,"method":"RemoteProxy.Hello"}`,                 // beyond int32
		`{"id":01,"method":"RemoteProxy.Hello"}`,                         // invalid JSON
		`{"method":"RemoteProxy.Hello","id":1}`,                          // another key order
		`{"ID":1,"method":"RemoteProxy.Hello"}`,                          // a key in another case: no id
		`{"id":1,"method":"RemoteProxy.Hello","jsonrpc":"2.0"}`,          // an unknown key
		`{"id":1,"method":"Remote\u0050roxy.Hello"}`,                     // an escape
		`{"id":1,"method":"RemoteProxy.Nope"}`,                           // no such method
		`{"id":1,"method":"RemoteProxy.Hello"}x`,                         // trailing bytes
		`{"id":1,"method":"RemoteProxy.Hello",}`,                         // a trailing comma
		`{"id":1,"method":"RemoteProxy.Hello","params":[]}`,              // params not an object
		`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":-1}}`, // a negative UInt
		`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":1e3}}`,
		`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":18446744073709551616}}`,
		`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":1,"timestamp":2}}`, // a repeated key
		`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":1,"x":2}}`,         // a forbidden key
		`{"id":1,"method":"TunnelProxy.Ping","params":{}}`,                            // a missing key
		`{"id":1,"method":"TunnelProxy.RegisterClient","params":{"clientName":"c","clientUuid":null,"serverUuid":"s"}}`,
		`{"id":1,"method":"Events.Subscribe","params":{"token":"t","channels":["a"]}}`, // a StringList
		"{\"id\":1,\"method\":\"Authentication.Authenticate\",\"params\":{\"uuid\":\"\xff\",\"name\":\"n\",\"token\":\"t\"}}",
		"{\"id\":1,\"method\":\"Authentication.Authenticate\",\"params\":{\"uuid\":\"\x01\",\"name\":\"n\",\"token\":\"t\"}}",
		`{"id":1,"method":"RemoteProxy.Hello"`,
	} {
		if _, ok := scanRequest([]byte(in)); ok {
			t.Errorf("%q: taken by the fast path", in)
		}
	}
}

// The fast path's values are copies: scribbling over the input leaves them.
func TestScanRequestCopies(t *testing.T) {
	in := AppendRequest(nil, 1, "Authentication.Authenticate", Str("uuid", "u"), Str("name", "n"), Str("token", "secret"))
	req, ok := scanRequest(in)
	if !ok {
		t.Fatal("not taken by the fast path")
	}
	for i := range in {
		in[i] = 'x'
	}
	if v, _ := req.Param("token"); v != "secret" {
		t.Fatalf("token %q after the input changed", v)
	}
}

// FuzzScanRequest: whatever the fast path takes, sonic's path takes as the
// same request, and the request does not alias the input.
func FuzzScanRequest(f *testing.F) {
	for _, s := range rpcSeeds {
		f.Add([]byte(s))
	}
	f.Add(AppendRequest(nil, 1, "Authentication.Authenticate", Str("uuid", "u"), Str("name", "Tür"), Str("token", "t"), Str("nonce", "")))
	f.Add([]byte(`{"id":-3,"method":"TunnelProxy.Ping","params":{"timestamp":0}}`))
	f.Add([]byte(`{"id":1,"method":"Mesh.Ping","params":{"node":"n","time":12,"mac":"m"}} `))
	f.Fuzz(func(t *testing.T, p []byte) {
		fast, ok := scanChecked(t, p)
		if !ok {
			return
		}
		want := slices.Clone(fast.Params())
		for i := range p {
			p[i] = 0
		}
		if !slices.Equal(want, fast.Params()) {
			t.Fatalf("params changed with the input: %+v", fast.Params())
		}
	})
}

// Every one-byte change to requests the fast path takes (a byte replaced,
// removed or doubled) keeps the fuzz target's rule: taken only as sonic
// takes it.
func TestScanRequestMutations(t *testing.T) {
	bases := [][]byte{
		AppendRequest(nil, 12, "Authentication.Authenticate", Str("uuid", "u-1"), Str("name", "Tür"), Str("token", "t"), Str("nonce", "n")),
		[]byte(`{"id":-3,"method":"TunnelProxy.Ping","params":{"timestamp":90}}`),
		[]byte(`{"id":0,"method":"RemoteProxy.Hello","params":null}`),
		[]byte("{\n  \"id\": 7,\n  \"method\": \"TunnelProxy.Ping\",\n  \"params\": {\n    \"timestamp\": 1765000000000\n  }\n}"),
	}
	subs := []byte{'"', '\\', '{', '}', '[', ',', ':', ' ', '0', '9', '-', '+', '.', 'e', 'n', 't', 'x', 0, 0x01, 0x7f, 0xc3, 0xff}
	check := func(in []byte) { scanChecked(t, in) }
	for _, base := range bases {
		if _, ok := scanRequest(base); !ok {
			t.Fatalf("%q: not taken by the fast path", base)
		}
		for i := range base {
			for _, c := range subs {
				check(slices.Concat(base[:i], []byte{c}, base[i+1:]))
			}
			check(slices.Concat(base[:i], base[i+1:]))
			check(slices.Concat(base[:i+1], base[i:]))
		}
	}
}

// BenchmarkParseRequest: an Authenticate through ParseRequest (the fast
// path) and through sonic's path.
func BenchmarkParseRequest(b *testing.B) {
	obj := AppendRequest(nil, 1, "Authentication.Authenticate", Str("uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
		Str("name", "bench-a"), Str("token", "c2VjcmV0LXRva2VuLWZvci10aGUtYmVuY2g="), Str("nonce", "n"))
	for _, p := range []struct {
		name  string
		parse func([]byte) (Request, *RPCError)
	}{{"fast", ParseRequest}, {"sonic", parseRequest}} {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.parse(obj); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// sonic's path reads a UInt followed by whitespace (sonic's Raw keeps the
// whitespace after a number of up to 16 digits in some lengths), whatever
// the key order.
func TestParseRequestUIntBeforeWhitespace(t *testing.T) {
	in := []byte("{\"method\": \"TunnelProxy.Ping\", \"id\": 3, \"params\": {\"timestamp\": 1765000000000\n    }}")
	req, err := parseRequest(in)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := req.Param("timestamp"); v != "1765000000000" {
		t.Fatalf("timestamp %q", v)
	}
}
