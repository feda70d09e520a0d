package handshake

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"sort"
	"strings"
	"testing"
)

func TestParseRequestErrors(t *testing.T) {
	tests := []struct {
		in   string
		id   int
		text string
	}{
		{`{"id":1,"method":"RemoteProxy.Hello"`, -1, "Failed to parse JSON data: "},
		{`{"id":1,,}`, -1, "Failed to parse JSON data: "},
		{`{"method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{`{"id":"abc","method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{`{"id":null,"method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{`{"id":1.5,"method":"RemoteProxy.Hello"}`, -1, "Error parsing command. Missing 'id'"},
		{`[1,2]`, -1, "Error parsing command. Missing 'id'"},
		{`{"id":3}`, 3, "Error parsing method. Got: ''', Expected: 'Namespace.method'"},
		{`{"id":3,"method":"RemoteProxyHello"}`, 3, "Error parsing method. Got: 'RemoteProxyHello'', Expected: 'Namespace.method'"},
		{`{"id":3,"method":"A.B.C"}`, 3, "Error parsing method. Got: 'A.B.C'', Expected: 'Namespace.method'"},
		{`{"id":4,"method":"Foo.Hello"}`, 4, "No such namespace"},
		{`{"id":4,"method":".Hello"}`, 4, "No such namespace"},
		{`{"id":5,"method":"RemoteProxy.Bye"}`, 5, "No such method"},
		{`{"id":5,"method":"RemoteProxy.Ping"}`, 5, "No such method"},
		{`{"id":6,"method":"Authentication.Authenticate"}`, 6, "Invalid params: Missing key name"},
		{`{"id":6,"method":"Authentication.Authenticate","params":{"name":"n","token":"t"}}`, 6, "Invalid params: Missing key uuid"},
		{`{"id":6,"method":"Authentication.Authenticate","params":{"name":"n","uuid":"u"}}`, 6, "Invalid params: Missing key token"},
		{`{"id":6,"method":"Authentication.Authenticate","params":{"name":"n","token":"t","uuid":"u","zzz":1,"extra":2}}`, 6, "Invalid params: Forbidden key extra"},
		{`{"id":6,"method":"Authentication.Authenticate","params":{"name":1,"token":"t","uuid":"u"}}`, 6, "Invalid params: Invalid value type for key name"},
		{`{"id":6,"method":"Authentication.Authenticate","params":{"name":"n","nonce":null,"token":"t","uuid":"u"}}`, 6, "Invalid params: Invalid value type for key nonce"},
		{`{"id":7,"method":"RemoteProxy.Hello","params":{"x":1}}`, 7, "Invalid params: Forbidden key x"},
		{`{"id":8,"method":"TunnelProxy.RegisterServer","params":{"serverUuid":"x"}}`, 8, "Invalid params: Missing key serverName"},
		{`{"id":8,"method":"TunnelProxy.RegisterClient","params":{"clientName":"c","serverUuid":"x"}}`, 8, "Invalid params: Missing key clientUuid"},
		{`{"id":9,"method":"TunnelProxy.Ping","params":{"timestamp":-1}}`, 9, "Invalid params: Invalid value type for key timestamp"},
		{`{"id":9,"method":"TunnelProxy.Ping","params":{"timestamp":1.5}}`, 9, "Invalid params: Invalid value type for key timestamp"},
		{`{"id":9,"method":"TunnelProxy.Ping","params":{"timestamp":"5"}}`, 9, "Invalid params: Invalid value type for key timestamp"},
		{`{"id":9,"method":"TunnelProxy.Ping"}`, 9, "Invalid params: Missing key timestamp"},
		{`{"id":10,"method":"TunnelProxy.DisconnectClient","params":{"socketAddress":true}}`, 10, "Invalid params: Invalid value type for key socketAddress"},
	}
	for _, tt := range tests {
		_, err := ParseRequest([]byte(tt.in))
		if err == nil {
			t.Errorf("%s: no error, want %q", tt.in, tt.text)
			continue
		}
		if err.ID != tt.id {
			t.Errorf("%s: id %d, want %d", tt.in, err.ID, tt.id)
		}
		if strings.HasSuffix(tt.text, ": ") {
			if !strings.HasPrefix(err.Text, tt.text) || len(err.Text) == len(tt.text) || strings.Contains(err.Text, "\n") {
				t.Errorf("%s: text %q, want %q + one-line detail", tt.in, err.Text, tt.text)
			}
		} else if err.Text != tt.text {
			t.Errorf("%s: text %q, want %q", tt.in, err.Text, tt.text)
		}
		if err.Error() != err.Text {
			t.Errorf("Error() = %q", err.Error())
		}
	}
}

func TestParseRequestOK(t *testing.T) {
	tests := []struct {
		in     string
		id     int
		method string
		params map[string]string
	}{
		{`{"id":7,"method":"RemoteProxy.Hello"}`, 7, "RemoteProxy.Hello", nil},
		{`{"id":"7","method":"RemoteProxy.Hello"}`, 7, "RemoteProxy.Hello", nil},
		{`{"id":" 12 ","method":"RemoteProxy.Introspect","params":{}}`, 12, "RemoteProxy.Introspect", nil},
		{`{"id":7.0,"method":"RemoteProxy.Hello","params":null}`, 7, "RemoteProxy.Hello", nil},
		{`{"id":-3,"method":"RemoteProxy.Hello","params":[1]}`, -3, "RemoteProxy.Hello", nil},
		{`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n\"}{","token":"t"}}`, 1, "Authentication.Authenticate",
			map[string]string{"uuid": "u", "name": "n\"}{", "token": "t"}},
		{`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"t","nonce":"\u00e9x"}}`, 1, "Authentication.Authenticate",
			map[string]string{"uuid": "u", "name": "n", "token": "t", "nonce": "éx"}},
		{`{"id":2,"method":"TunnelProxy.RegisterServer","params":{"serverName":"s","serverUuid":"{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}"}}`, 2, "TunnelProxy.RegisterServer",
			map[string]string{"serverName": "s", "serverUuid": "{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}"}},
		// Invalid uuids are not RPC errors: the caller answers InvalidUuid.
		{`{"id":2,"method":"TunnelProxy.RegisterServer","params":{"serverName":"s","serverUuid":null}}`, 2, "TunnelProxy.RegisterServer",
			map[string]string{"serverName": "s", "serverUuid": ""}},
		{`{"id":2,"method":"TunnelProxy.RegisterServer","params":{"serverName":"s","serverUuid":"foo"}}`, 2, "TunnelProxy.RegisterServer",
			map[string]string{"serverName": "s", "serverUuid": "foo"}},
		{`{"id":3,"method":"TunnelProxy.RegisterClient","params":{"clientName":"c","clientUuid":"a","serverUuid":"b"}}`, 3, "TunnelProxy.RegisterClient",
			map[string]string{"clientName": "c", "clientUuid": "a", "serverUuid": "b"}},
		{`{"id":4,"method":"TunnelProxy.DisconnectClient","params":{"socketAddress":65534}}`, 4, "TunnelProxy.DisconnectClient",
			map[string]string{"socketAddress": "65534"}},
		{`{"id":5,"method":"TunnelProxy.Ping","params":{"timestamp":1700000000000}}`, 5, "TunnelProxy.Ping",
			map[string]string{"timestamp": "1700000000000"}},
		{`{"id":5,"method":"TunnelProxy.Ping","params":{"timestamp":1.7e12}}`, 5, "TunnelProxy.Ping",
			map[string]string{"timestamp": "1700000000000"}},
	}
	for _, tt := range tests {
		buf := []byte(tt.in)
		req, err := ParseRequest(buf)
		if err != nil {
			t.Errorf("%s: %v", tt.in, err.Text)
			continue
		}
		// Strings must not alias the input buffer.
		for i := range buf {
			buf[i] = 'X'
		}
		ns, name, _ := strings.Cut(tt.method, ".")
		if req.ID != tt.id || req.Method != tt.method || req.Namespace != ns || req.Name != name {
			t.Errorf("%s: got %d %q %q %q", tt.in, req.ID, req.Method, req.Namespace, req.Name)
		}
		got := map[string]string{}
		for _, p := range req.Params() {
			got[p.Key] = p.Value
			if v, ok := req.Param(p.Key); !ok || v != p.Value {
				t.Errorf("Param(%q) = %q, %v", p.Key, v, ok)
			}
		}
		if len(got) == 0 {
			got = nil
		}
		if !reflect.DeepEqual(got, tt.params) {
			t.Errorf("%s: params %v, want %v", tt.in, got, tt.params)
		}
	}
}

func TestRequestAccessors(t *testing.T) {
	req, err := ParseRequest([]byte(`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":18446744073709551615}}`))
	if err != nil {
		t.Fatal(err.Text)
	}
	if v, ok := req.Uint("timestamp"); !ok || v != 18446744073709551615 {
		t.Errorf("Uint = %d, %v", v, ok)
	}
	if _, ok := req.Uint("nope"); ok {
		t.Error("Uint of absent key reported present")
	}
	if _, ok := req.Param("nope"); ok {
		t.Error("Param of absent key reported present")
	}
	req, _ = ParseRequest([]byte(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"t"}}`))
	if _, ok := req.Param("nonce"); ok {
		t.Error("absent optional nonce reported present")
	}
	req, _ = ParseRequest([]byte(`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"t","nonce":""}}`))
	if v, ok := req.Param("nonce"); !ok || v != "" {
		t.Error("empty nonce not reported present")
	}
}

func TestParseUUID(t *testing.T) {
	const c = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
	for _, s := range []string{c, "{" + c + "}", strings.ToUpper(c), "{" + strings.ToUpper(c) + "}"} {
		got, ok := ParseUUID(s)
		if !ok || got != c {
			t.Errorf("ParseUUID(%q) = %q, %v", s, got, ok)
		}
	}
	for _, s := range []string{"", "foo", "{" + c, c + "}", "(" + c + ")", strings.ReplaceAll(c, "-", ""),
		"00000000-0000-0000-0000-000000000000", "{00000000-0000-0000-0000-000000000000}", // nil: nymea's InvalidUuid
		"6ba7b810-9dad-11d1-80b4-00c04fd430cg", "6ba7b810x9dad-11d1-80b4-00c04fd430c8", "{{" + c + "}}"} {
		if got, ok := ParseUUID(s); ok {
			t.Errorf("ParseUUID(%q) = %q, true", s, got)
		}
	}
	var sink string
	if n := testing.AllocsPerRun(100, func() { sink, _ = ParseUUID("{" + c + "}") }); n != 0 {
		t.Errorf("ParseUUID allocates %v times", n)
	}
	_ = sink
}

// collect feeds stream to NextObject in the given chunk sizes and returns
// every object found.
func collect(t *testing.T, stream string, chunk int) []string {
	t.Helper()
	var buf []byte
	var out []string
	for off := 0; off < len(stream); off += chunk {
		buf = append(buf, stream[off:min(off+chunk, len(stream))]...)
		for {
			obj, n, err := NextObject(buf)
			if err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			if n > len(buf) {
				t.Fatalf("n %d > len %d", n, len(buf))
			}
			buf = buf[n:]
			if obj == nil {
				break
			}
			out = append(out, string(obj))
		}
	}
	if len(bytes.TrimSpace(buf)) != 0 {
		t.Fatalf("chunk %d: leftover %q", chunk, buf)
	}
	return out
}

func TestNextObjectStream(t *testing.T) {
	objs := []string{
		`{"id":1,"method":"RemoteProxy.Hello"}`,
		`{"id":2,"method":"Authentication.Authenticate","params":{"name":"a}b{c","token":"x\"}{\\","uuid":"\\\"{"}}`,
		`{"a":[{"b":[]},{}],"c":"]\u005d}"}`,
		`{}`,
	}
	stream := "\r\n " + objs[0] + objs[1] + "\n" + objs[2] + "\t \n\n" + objs[3] + "\n"
	ends := map[int]bool{} // where an object ends in stream
	for off, i := 0, 0; i < len(objs); i++ {
		off += strings.Index(stream[off:], objs[i]) + len(objs[i])
		ends[off] = true
	}
	tested := 0
	for chunk := 1; chunk <= len(stream); chunk++ {
		// A read that ends right after a '}' inside a message ends the
		// message by nymea's framing (TestNextObjectNymeaFraming): skip
		// those cuts here.
		cutInside := false
		for b := chunk; b < len(stream); b += chunk {
			if stream[b-1] == '}' && !ends[b] {
				cutInside = true
			}
		}
		if cutInside {
			continue
		}
		tested++
		got := collect(t, stream, chunk)
		if !reflect.DeepEqual(got, objs) {
			t.Fatalf("chunk %d: got %q", chunk, got)
		}
	}
	if tested < 20 {
		t.Fatalf("only %d chunk sizes tested", tested)
	}
}

// TestNextObjectNymeaFraming: where nymea's framing ends a message that
// is not complete — the input so far ends in "}" or "}\n", or a string
// holds a raw line feed — the message is malformed: the client gets
// nymea's error at once instead of waiting for the inactive timeout.
func TestNextObjectNymeaFraming(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"id":42, "method":"RemoteProx}` + "\n", "Failed to parse JSON data: unterminated string"},
		{`{"id":42, "method":"RemoteProx}`, "Failed to parse JSON data: unterminated string"},
		{`{"id":42, "method":"Remote` + "\n" + `Proxy.Hello"}`, "Failed to parse JSON data: unterminated string"},
		{`{"id":1,"params":{"a":1}` + "\n", "Failed to parse JSON data: unterminated object"},
		{`{"id":1,"params":[{"a":1}`, "Failed to parse JSON data: unterminated array"},
	} {
		obj, _, err := NextObject([]byte(tc.in))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: obj %q err %v, want %q", tc.in, obj, err, tc.want)
		}
	}
	// Anything else unfinished waits for more input.
	for _, in := range []string{`{"id":1,"params":{"a":1}` + "\n\n", `{"id":1,"params":{"a":"}x`, `{"id":1,"method":"A.B"`} {
		if obj, _, err := NextObject([]byte(in)); obj != nil || err != nil {
			t.Errorf("%q: obj %q err %v, want need more", in, obj, err)
		}
	}
}

func TestNextObjectTwoInOneBuffer(t *testing.T) {
	p := []byte(`{"id":1}` + "\n" + `{"id":2}` + "\n")
	obj, n, err := NextObject(p)
	if err != nil || string(obj) != `{"id":1}` || n != 8 {
		t.Fatalf("first: %q %d %v", obj, n, err)
	}
	obj, n2, err := NextObject(p[n:])
	if err != nil || string(obj) != `{"id":2}` || n2 != 9 {
		t.Fatalf("second: %q %d %v", obj, n2, err)
	}
	obj, n3, err := NextObject(p[n+n2:])
	if err != nil || obj != nil || n3 != 1 {
		t.Fatalf("rest: %q %d %v", obj, n3, err)
	}
}

func TestNextObjectNeedMore(t *testing.T) {
	for _, s := range []string{"", "  \n", `{`, ` {"a":"}x`, `{"a":"\"}x`, `{"a":[`, `{"a":{"b":1}x`} {
		obj, n, err := NextObject([]byte(s))
		if obj != nil || err != nil {
			t.Errorf("%q: %q %v, want need more", s, obj, err)
		}
		if want := len(s) - len(strings.TrimLeft(s, " \t\r\n")); n != want {
			t.Errorf("%q: n %d, want %d", s, n, want)
		}
	}
}

func TestNextObjectErrors(t *testing.T) {
	deep := strings.Repeat(`{"a":`, MaxDepth) + "1" + strings.Repeat("}", MaxDepth)
	if obj, _, err := NextObject([]byte(deep)); err != nil || string(obj) != deep {
		t.Fatalf("depth %d rejected: %v", MaxDepth, err)
	}
	tooDeep := strings.Repeat(`{"a":`, MaxDepth) + "[" // incomplete, yet already too deep
	arrDeep := "{" + `"a":` + strings.Repeat("[", MaxDepth)
	for _, s := range []string{
		"x", "  [1]", `"a"`, "}", "\x00{}",
		tooDeep, arrDeep,
		`{"a":[}`, `{]`,
	} {
		obj, _, err := NextObject([]byte(s))
		if err == nil {
			t.Errorf("%q: no error (obj %q)", s, obj)
			continue
		}
		re, ok := err.(*RPCError)
		if !ok || re.ID != -1 || !strings.HasPrefix(re.Text, "Failed to parse JSON data: ") {
			t.Errorf("%q: err %#v", s, err)
		}
	}
}

func TestNextObjectNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not stable under -race (sync.Pool drops items); checked without -race")
	}
	p := []byte(` {"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":5}}` + "\n")
	if n := testing.AllocsPerRun(100, func() { NextObject(p) }); n != 0 {
		t.Errorf("NextObject allocates %v times", n)
	}
}

var nasty = []string{
	"",
	"plain",
	`quote " and backslash \ and slash /`,
	"controls \x00\x01\x07\b\f\n\r\t\x1f\x7f",
	"non-ASCII: é ü 日本語 🎉",
	"line seps \u2028 \u2029",
	"invalid utf8 \xff\xfe and truncated \xe6\x97",
	`</script>&<>`,
}

// validUTF8 replaces each invalid byte with U+FFFD, as encoding/json does.
func validUTF8(s string) string { return string([]rune(s)) }

func TestAppendError(t *testing.T) {
	for _, s := range nasty {
		out := AppendError([]byte("prefix"), -1, s)
		if !bytes.HasPrefix(out, []byte("prefix")) || !bytes.HasSuffix(out, []byte("}\n")) {
			t.Fatalf("framing: %q", out)
		}
		out = out[len("prefix"):]
		var v struct {
			Error  string `json:"error"`
			ID     int    `json:"id"`
			Status string `json:"status"`
		}
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		if v.Error != validUTF8(s) || v.ID != -1 || v.Status != "error" {
			t.Errorf("%q round-trips to %+v", s, v)
		}
	}
	if got := string(AppendError(nil, 3, "No such method")); got != `{"error":"No such method","id":3,"status":"error"}`+"\n" {
		t.Errorf("got %q", got)
	}
}

func TestAppendSuccess(t *testing.T) {
	for _, s := range nasty {
		out := AppendSuccess(nil, 42, Str("a"+s, s), Int("int", -1<<63), Bool("t", true), Bool("f", false), Raw("raw", []byte(`{"x":[1,"y"]}`)))
		if !bytes.HasSuffix(out, []byte("}\n")) || bytes.Count(out, []byte("\n")) != 1 {
			t.Fatalf("framing: %q", out)
		}
		var v map[string]any
		d := json.NewDecoder(bytes.NewReader(out))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		valid := validUTF8(s)
		want := map[string]any{
			"id":     json.Number("42"),
			"status": "success",
			"params": map[string]any{
				"a" + valid: valid,
				"int":       json.Number("-9223372036854775808"),
				"t":         true,
				"f":         false,
				"raw":       map[string]any{"x": []any{json.Number("1"), "y"}},
			},
		}
		if !reflect.DeepEqual(v, want) {
			t.Errorf("%q:\n got %v\nwant %v", out, v, want)
		}
	}
	want := `{"id":1,"params":{"slipEnabled":true,"tunnelProxyError":"TunnelProxyErrorNoError"},"status":"success"}` + "\n"
	if got := string(AppendSuccess(nil, 1, Bool("slipEnabled", true), Str("tunnelProxyError", TunnelProxyErrorNoError.String()))); got != want {
		t.Errorf("got %q", got)
	}
	if got := string(AppendSuccess(nil, 0)); got != `{"id":0,"params":{},"status":"success"}`+"\n" {
		t.Errorf("empty params: %q", got)
	}
	if got := string(AppendSuccessRaw(nil, 5, []byte(`{"a":1}`))); got != `{"id":5,"params":{"a":1},"status":"success"}`+"\n" {
		t.Errorf("raw: %q", got)
	}
}

func TestAppendNotification(t *testing.T) {
	for _, s := range nasty {
		out := AppendNotification(nil, 0, "RemoteProxy.TunnelEstablished", Str("name", s), Str("uuid", "u"))
		if !bytes.HasSuffix(out, []byte("}\n")) {
			t.Fatalf("framing: %q", out)
		}
		var v struct {
			ID           int               `json:"id"`
			Notification string            `json:"notification"`
			Params       map[string]string `json:"params"`
		}
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		if v.ID != 0 || v.Notification != "RemoteProxy.TunnelEstablished" ||
			!reflect.DeepEqual(v.Params, map[string]string{"name": validUTF8(s), "uuid": "u"}) {
			t.Errorf("%q round-trips to %+v", s, v)
		}
	}
	want := `{"id":3,"notification":"TunnelProxy.ClientDisconnected","params":{"socketAddress":7}}` + "\n"
	if got := string(AppendNotification(nil, 3, "TunnelProxy.ClientDisconnected", Int("socketAddress", 7))); got != want {
		t.Errorf("got %q", got)
	}
}

func TestAppendNoAlloc(t *testing.T) {
	buf := make([]byte, 0, 4096)
	raw := []byte(`{"a":1}`)
	n := testing.AllocsPerRun(100, func() {
		b := AppendError(buf[:0], 1, "Invalid params: Missing key \"x\"\n")
		b = AppendSuccess(b, 2, Str("tunnelProxyError", "TunnelProxyErrorNoError"), Bool("slipEnabled", true), Int("timestamp", 123), Raw("r", raw))
		b = AppendSuccessRaw(b, 3, raw)
		_ = AppendNotification(b, 4, "TunnelProxy.ClientConnected", Str("clientName", "é\x01"), Int("socketAddress", 1))
	})
	if n != 0 {
		t.Errorf("encoders allocate %v times", n)
	}
}

func TestEnumNames(t *testing.T) {
	if TunnelProxyErrorInvalidUuid.String() != "TunnelProxyErrorInvalidUuid" ||
		TunnelProxyErrorUnknownSocketAddress.String() != "TunnelProxyErrorUnknownSocketAddress" ||
		AuthenticationErrorNoError.String() != "AuthenticationErrorNoError" ||
		AuthenticationErrorProxyError.String() != "AuthenticationErrorProxyError" {
		t.Error("enum names")
	}
}

func TestIntrospect(t *testing.T) {
	b := IntrospectFor(func(string) bool { return true })
	if !json.Valid(b) {
		t.Fatalf("invalid JSON: %s", b)
	}
	var v struct {
		Methods map[string]struct {
			Description string            `json:"description"`
			Params      map[string]string `json:"params"`
			Returns     map[string]string `json:"returns"`
		} `json:"methods"`
		Notifications map[string]struct {
			Description string            `json:"description"`
			Params      map[string]string `json:"params"`
		} `json:"notifications"`
		Types map[string][]string `json:"types"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	wantMethods := map[string]map[string]string{
		"RemoteProxy.Hello":            {},
		"RemoteProxy.Introspect":       {},
		"Authentication.Authenticate":  {"uuid": "String", "name": "String", "token": "String", "o:nonce": "String"},
		"TunnelProxy.RegisterServer":   {"serverName": "String", "serverUuid": "Uuid"},
		"TunnelProxy.RegisterClient":   {"clientName": "String", "clientUuid": "Uuid", "serverUuid": "Uuid"},
		"TunnelProxy.DisconnectClient": {"socketAddress": "UInt"},
		"TunnelProxy.Ping":             {"timestamp": "UInt"},
		"Events.Subscribe":             {"token": "String", "channels": "StringList"},
	}
	if len(v.Methods) != len(wantMethods) {
		t.Errorf("%d methods, want %d", len(v.Methods), len(wantMethods))
	}
	for name, params := range wantMethods {
		m, ok := v.Methods[name]
		if !ok {
			t.Errorf("method %s missing", name)
			continue
		}
		if m.Description == "" || len(m.Returns) == 0 || !reflect.DeepEqual(m.Params, params) {
			t.Errorf("method %s: %+v", name, m)
		}
		// Every introspected method parses.
		if _, err := ParseRequest([]byte(`{"id":1,"method":"` + name + `","params":{}}`)); err != nil &&
			(err.Text == "No such method" || err.Text == "No such namespace") {
			t.Errorf("method %s: %s", name, err.Text)
		}
	}
	if v.Methods["TunnelProxy.RegisterServer"].Returns["tunnelProxyError"] != "$ref:TunnelProxyError" {
		t.Error("RegisterServer returns")
	}
	wantNotif := map[string]map[string]string{
		"RemoteProxy.TunnelEstablished":  {"name": "String", "uuid": "String"},
		"TunnelProxy.ClientConnected":    {"clientName": "String", "clientUuid": "Uuid", "clientPeerAddress": "String", "socketAddress": "UInt"},
		"TunnelProxy.ClientDisconnected": {"socketAddress": "UInt"},
		"Events.Event":                   {"channel": "String", "data": "Variant"},
		"RemoteProxy.Closing":            {"reason": "String", "message": "String"},
	}
	if len(v.Notifications) != len(wantNotif) {
		t.Errorf("%d notifications", len(v.Notifications))
	}
	for name, params := range wantNotif {
		if !reflect.DeepEqual(v.Notifications[name].Params, params) {
			t.Errorf("notification %s: %+v", name, v.Notifications[name])
		}
	}
	wantTypes := map[string][]string{
		"BasicType": {"Uuid", "String", "StringList", "Int", "UInt", "Double", "Bool", "Variant", "Object"},
		"AuthenticationError": {"AuthenticationErrorNoError", "AuthenticationErrorUnknown", "AuthenticationErrorTimeout",
			"AuthenticationErrorAborted", "AuthenticationErrorAuthenticationFailed", "AuthenticationErrorProxyError"},
		"TunnelProxyError": {"TunnelProxyErrorNoError", "TunnelProxyErrorInvalidUuid", "TunnelProxyErrorInternalServerError",
			"TunnelProxyErrorServerNotFound", "TunnelProxyErrorForbiddenCall", "TunnelProxyErrorAlreadyRegistered",
			"TunnelProxyErrorNotRegistered", "TunnelProxyErrorUnknownSocketAddress"},
	}
	if !reflect.DeepEqual(v.Types, wantTypes) {
		t.Errorf("types %v", v.Types)
	}
}

// TestIntrospectListsOnlyServed: a relay lists the methods it serves and
// the notifications that follow them, and in every configuration the
// whole reply stays under MaxIntrospect: nymea's Qt clients read it in one
// piece, and Qt delivers TLS data 4,096 bytes at a time.
func TestIntrospectListsOnlyServed(t *testing.T) {
	var optional []string // what a relay may or may not serve
	for _, m := range methods {
		optional = append(optional, m.full) // hidden ones too: never listed
	}
	for set := 0; set < 1<<len(optional); set++ {
		served := map[string]bool{}
		for i, m := range optional {
			if set&(1<<i) != 0 {
				served[m] = true
			}
		}
		b := IntrospectFor(func(m string) bool { return served[m] })
		if reply := AppendSuccessRaw(nil, math.MaxInt64, b); len(reply) > MaxIntrospect {
			t.Fatalf("serving %v: the Introspect reply is %d bytes, over %d", keysOf(served), len(reply), MaxIntrospect)
		}
		var v struct {
			Methods       map[string]any `json:"methods"`
			Notifications map[string]any `json:"notifications"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		for _, m := range methods {
			if _, listed := v.Methods[m.full]; listed != (served[m.full] && !m.hidden) {
				t.Fatalf("serving %v: %s listed %v", keysOf(served), m.full, listed)
			}
		}
		for _, n := range notifications {
			if _, listed := v.Notifications[n.name]; listed != served[n.by] {
				t.Fatalf("serving %v: notification %s listed %v", keysOf(served), n.name, listed)
			}
		}
	}
}

func keysOf(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// TestParseRequestInvalidContent: NextObject only delimits; the content is
// validated by ParseRequest's single parse.
func TestParseRequestInvalidContent(t *testing.T) {
	for _, s := range []string{
		`{"a":1,}`, `{"a" 1}`, `{a:1}`, "{\"a\":\"\x01\"}", `{"a":tru}`,
		`{"id":1,"method":"RemoteProxy.Hello","x":"\0"}`,
		`{"id":1,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"n","token":"t","junk":[1,}}`,
	} {
		_, err := ParseRequest([]byte(s))
		if err == nil || err.ID != -1 || !strings.HasPrefix(err.Text, "Failed to parse JSON data: ") {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{`[1,2]`, `"x"`, `5`} {
		if _, err := ParseRequest([]byte(s)); err == nil || err.Text != "Error parsing command. Missing 'id'" {
			t.Errorf("%q: %v", s, err)
		}
	}
}

// TestStringListParam: Events.Subscribe's channels are an array of
// non-empty strings without commas (1 to 64), given joined by ",".
func TestStringListParam(t *testing.T) {
	for _, c := range []struct {
		channels string
		want     string
		ok       bool
	}{
		{`["a"]`, "a", true},
		{`["device-7","all"]`, "device-7,all", true},
		{`[]`, "", false},
		{`"a,b"`, "", false},
		{`["a",1]`, "", false},
		{`["a,b"]`, "", false},
		{`[""]`, "", false},
		{`null`, "", false},
	} {
		req, err := ParseRequest([]byte(`{"id":3,"method":"Events.Subscribe","params":{"token":"t","channels":` + c.channels + `}}`))
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v", c.channels, err)
			continue
		}
		if err != nil {
			if err.Text != "Invalid params: Invalid value type for key channels" {
				t.Errorf("%s: %q", c.channels, err.Text)
			}
			continue
		}
		if got, _ := req.Param("channels"); got != c.want {
			t.Errorf("%s: %q", c.channels, got)
		}
	}
}

// TestParamsFitTemplate: every method's params template fits a Request's
// fixed params array (a ninth param on an eight-slot array made the
// parser fail on every request of that method).
func TestParamsFitTemplate(t *testing.T) {
	for _, m := range methods {
		if len(m.params) > maxParams {
			t.Errorf("%s has %d params, more than maxParams (%d)", m.full, len(m.params), maxParams)
		}
	}
}

// TestParseRequestKeysCaseSensitive: "id", "method" and "params" are
// matched exactly, as nymea's QVariantMap does: "ID" is not the id, and a
// key that differs only in case is an unknown key, ignored.
func TestParseRequestKeysCaseSensitive(t *testing.T) {
	for _, tc := range []struct{ in, text string }{
		{`{"ID":1,"METHOD":"RemoteProxy.Hello"}`, "Error parsing command. Missing 'id'"},
		{`{"Id":1,"method":"RemoteProxy.Hello"}`, "Error parsing command. Missing 'id'"},
		{`{"id":1,"Method":"RemoteProxy.Hello"}`, "Error parsing method. Got: ''', Expected: 'Namespace.method'"},
	} {
		if _, err := ParseRequest([]byte(tc.in)); err == nil || err.Text != tc.text {
			t.Errorf("%s: %v, want %q", tc.in, err, tc.text)
		}
	}
	for _, in := range []string{
		`{"id":1,"method":"RemoteProxy.Hello","Id":"x"}`,
		`{"id":1,"method":"RemoteProxy.Hello","METHOD":"x"}`,
		`{"id":1,"method":"TunnelProxy.Ping","params":{"timestamp":5},"Params":{"x":1}}`,
	} {
		req, err := ParseRequest([]byte(in))
		if err != nil || req.ID != 1 {
			t.Errorf("%s: id %d, %v; want id 1 and no error", in, req.ID, err)
		}
	}
	if _, err := ParseRequest([]byte(`{"id":1,"method":"TunnelProxy.Ping","PARAMS":{"timestamp":5}}`)); err == nil ||
		err.Text != "Invalid params: Missing key timestamp" {
		t.Errorf("PARAMS taken for params: %v", err)
	}
}

// TestParseRequestInvalidUTF8: JSON text must be UTF-8 (RFC 8259); nymea's
// parser (Qt) refuses a raw byte sequence that is not with "invalid UTF8
// string", wherever it is, and closes. It is not rewritten to U+FFFD.
func TestParseRequestInvalidUTF8(t *testing.T) {
	for _, in := range []string{
		"{\"id\":1,\"method\":\"Authentication.Authenticate\",\"params\":{\"uuid\":\"u\",\"name\":\"n\",\"token\":\"t\xff\"}}",
		"{\"method\":\"Authentication.Authenticate\",\"id\":1,\"params\":{\"uuid\":\"\xed\xa0\x80\",\"name\":\"n\",\"token\":\"t\"}}",
		"{\"id\":1,\"method\":\"TunnelProxy.RegisterClient\",\"params\":{\"clientName\":\"\xc3\",\"clientUuid\":\"a\",\"serverUuid\":\"b\"}}",
		"{\"id\":1,\"method\":\"RemoteProxy.Hello\",\"x\":\"\xff\"}",
		"{\"id\":1,\"method\":\"RemoteProxy.Hello\",\"\xc0\xaf\":1}",
		"{\"id\":1,\"method\":\"Remote\xffProxy.Hello\"}",
		"[\"\xff\"]",
	} {
		_, err := ParseRequest([]byte(in))
		if err == nil || err.ID != -1 || err.Text != "Failed to parse JSON data: invalid UTF8 string" {
			t.Errorf("%q: %v", in, err)
		}
	}
	// Escaped, the same characters are fine.
	req, err := ParseRequest([]byte(`{"id":2,"method":"Authentication.Authenticate","params":{"uuid":"u","name":"T\u00fcr","token":"t"}}`))
	if v, _ := req.Param("name"); err != nil || v != "Tür" {
		t.Errorf("escaped ü: %q, %v", v, err)
	}
}

// TestParseRequestStringID: an id given as a string is read as nymea's
// QVariant::toInt reads a string (QString::toLongLong): a decimal integer,
// spaces around it allowed. A float or an exponent in a string is no id.
func TestParseRequestStringID(t *testing.T) {
	for _, in := range []string{`"7.0"`, `"1e3"`, `"0x1p4"`, `"12.000"`, `"-3E0"`} {
		req, err := ParseRequest([]byte(`{"id":` + in + `,"method":"RemoteProxy.Hello"}`))
		if err == nil || err.ID != -1 || err.Text != "Error parsing command. Missing 'id'" {
			t.Errorf("id %s: read as %d, %v", in, req.ID, err)
		}
	}
	for in, want := range map[string]int{`"7"`: 7, `" -3 "`: -3, `"+5"`: 5, `7.0`: 7, `1e3`: 1000} {
		if req, err := ParseRequest([]byte(`{"id":` + in + `,"method":"RemoteProxy.Hello"}`)); err != nil || req.ID != want {
			t.Errorf("id %s: %d, %v; want %d", in, req.ID, err, want)
		}
	}
}
