package handshake

import "testing"

func TestSniff(t *testing.T) {
	tests := []struct {
		in   string
		want Kind
	}{
		{"", KindNeedMore},
		{"{", KindJSON},
		{`{"jsonrpc":"2.0"}`, KindJSON},
		{" \t\r\n", KindNeedMore},
		{"  \n{", KindJSON},
		{" G", KindUnknown},
		{" x", KindUnknown},
		{"G", KindNeedMore},
		{"GE", KindNeedMore},
		{"GET", KindNeedMore},
		{"GET ", KindHTTP},
		{"GET / HTTP/1.1\r\n", KindHTTP},
		{"GX", KindUnknown},
		{"GETX", KindUnknown},
		{"get ", KindUnknown},
		{"P", KindNeedMore},
		{"PO", KindNeedMore},
		{"PU", KindNeedMore},
		{"PA", KindNeedMore},
		{"POST ", KindHTTP},
		{"PUT /x", KindHTTP},
		{"PATCH ", KindHTTP},
		{"HEAD ", KindHTTP},
		{"DELETE ", KindHTTP},
		{"OPTIONS * HTTP/1.1", KindHTTP},
		{"CONNECT a:1 HTTP/1.1", KindHTTP},
		{"TRACE ", KindHTTP},
		{"OPTION", KindNeedMore},
		{"\x16", KindNeedMore},
		{"\x16\x03", KindNeedMore},
		{"\x16\x03\x00", KindTLS},
		{"\x16\x03\x01\x02\x00", KindTLS},
		{"\x16\x03\x04", KindTLS},
		{"\x16\x03\x05", KindUnknown},
		{"\x16\x02", KindUnknown},
		{"\x15\x03\x01", KindNeedMore}, // could be a STUN message header
		{"\x15\x03\x01\x00\x21\x12\xa4\x43", KindUnknown},
		{"\x00", KindNeedMore},
		{"\x00\x01\x00\x00\x21\x12", KindNeedMore},
		{"\x00\x01\x00\x00\x21\x12\xa4\x42", KindSTUN},         // Binding request
		{"\x00\x03\x00\x08\x21\x12\xa4\x42\x01\x02", KindSTUN}, // Allocate
		{"\x00\x01\x00\x00\x21\x13", KindUnknown},
		{"\x40\x00\x00\x00\x21\x12\xa4\x42", KindUnknown}, // top bits set: a TURN ChannelData frame, not a message
		{"[", KindUnknown},
		{"SSH-2.0", KindUnknown},
	}
	for _, tt := range tests {
		if got := Sniff([]byte(tt.in)); got != tt.want {
			t.Errorf("Sniff(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestSniffNoAlloc(t *testing.T) {
	in := []byte("OPTIONS * HTTP/1.1")
	if n := testing.AllocsPerRun(100, func() { Sniff(in) }); n != 0 {
		t.Errorf("Sniff allocates %v times", n)
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{
		KindNeedMore: "NeedMore", KindJSON: "JSON", KindHTTP: "HTTP",
		KindTLS: "TLS", KindUnknown: "Unknown", Kind(9): "Kind(9)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, want)
		}
	}
}
