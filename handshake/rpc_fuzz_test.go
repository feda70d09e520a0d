package handshake

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

var rpcSeeds = []string{
	`{"id":1,"method":"RemoteProxy.Hello"}`,
	`{"id":"2","method":"RemoteProxy.Introspect","params":{}}` + "\n" + `{"id":3}`,
	`{"id":4,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n\"}{","token":"t","nonce":"\u00e9"}}`,
	`{"id":5,"method":"TunnelProxy.RegisterServer","params":{"serverName":"s","serverUuid":"{6ba7b810-9dad-11d1-80b4-00c04fd430c8}"}}`,
	`{"id":6,"method":"TunnelProxy.RegisterClient","params":{"clientName":"c","clientUuid":null,"serverUuid":"foo"}}`,
	`{"id":7,"method":"TunnelProxy.DisconnectClient","params":{"socketAddress":1}}`,
	`{"id":8,"method":"TunnelProxy.Ping","params":{"timestamp":1.7e12,"x":[]}}`,
	`{"id":9,"method":"A.B.C"}`,
	`  {"a":[{"b":"]}\\"}]}`,
	`{"id":1,`,
	`[1]`,
	`{]`,
	"{\"a\":\"\x01\"}",
	strings.Repeat("{\"a\":", 70),
	"",
}

func FuzzNextObject(f *testing.F) {
	for _, s := range rpcSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		for len(p) > 0 {
			obj, n, err := NextObject(p)
			if n < 0 || n > len(p) {
				t.Fatalf("n = %d, len = %d", n, len(p))
			}
			if err != nil {
				if obj != nil {
					t.Fatal("obj with error")
				}
				if re, ok := err.(*RPCError); !ok || re.ID != -1 {
					t.Fatalf("error %#v", err)
				}
				return
			}
			if obj == nil {
				return
			}
			if obj[0] != '{' || obj[len(obj)-1] != '}' {
				t.Fatalf("not a delimited object %q", obj)
			}
			if _, err := ParseRequest(obj); err == nil && (!json.Valid(obj) || !utf8.Valid(obj)) {
				t.Fatalf("ParseRequest accepted invalid JSON %q", obj)
			}
			if n < len(obj) {
				t.Fatalf("n %d < len(obj) %d", n, len(obj))
			}
			p = p[n:]
		}
	})
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range rpcSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		req, err := ParseRequest(p)
		if err != nil {
			if err.Text == "" {
				t.Fatal("empty error text")
			}
			return
		}
		found := false
		for _, m := range methods {
			if m.full == req.Method && m.namespace == req.Namespace && m.name == req.Name {
				found = true
			}
		}
		if !found {
			t.Fatalf("method %q not in the table", req.Method)
		}
		if !json.Valid(p) || !utf8.Valid(p) { // json.Valid passes any bytes in strings
			t.Fatalf("accepted invalid JSON %q", p)
		}
		for _, prm := range req.Params() {
			if v, ok := req.Param(prm.Key); !ok || v != prm.Value {
				t.Fatalf("Param(%q)", prm.Key)
			}
		}
	})
}
