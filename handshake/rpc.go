package handshake

// JSON-RPC layer of the nymea-remoteproxy protocol: framing of raw TCP
// streams into JSON objects, request parsing and validation with nymea's
// exact error texts, and allocation-free response encoders.

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/bytedance/sonic"
	"github.com/bytedance/sonic/ast"
	"github.com/bytedance/sonic/decoder"
)

// MaxDepth is the deepest nesting of objects and arrays that NextObject
// accepts; deeper input is a protocol error.
const MaxDepth = 64

// parseErrPrefix starts the text of every invalid-JSON error.
const parseErrPrefix = "Failed to parse JSON data: "

// NextObject frames a raw-TCP JSON-RPC stream: it returns the first
// complete top-level object in p (its brackets and strings balanced),
// without validating its content — ParseRequest does that, in the one
// parse the message gets.
//
// Unlike nymea, which splits raw TCP streams on "}\n{", it scans for the
// object's end while tracking strings, escapes and nesting, after skipping
// leading whitespace (space, tab, CR, LF). Where nymea would end a message
// that is not complete — the input so far ends in "}" or "}\n" (nymea
// parses its buffer whenever it ends so), or a string holds a raw line
// feed (nymea splits there, and JSON forbids it) — the message is
// malformed and NextObject reports it as nymea does ("unterminated
// string", "unterminated object"), so the client gets the error reply and
// a close instead of a wait. obj aliases p; n counts the bytes consumed,
// leading whitespace included, and is meaningful in every case where
// err == nil: the caller drops p[:n].
//
//   - obj != nil: obj is one delimited object, '{' to its '}'.
//   - obj == nil, err == nil: more input is needed (n counts only the
//     leading whitespace).
//   - err != nil: protocol error. err is always an *RPCError with ID -1 and
//     a "Failed to parse JSON data: ..." text, so the caller can answer it
//     with AppendError and close. Causes: p starts with something other than
//     whitespace or '{', brackets that do not match, nesting deeper than
//     MaxDepth, or an unfinished message where nymea's framing ends one.
//
// It does not allocate except when it returns an error. Each call rescans p
// from the start, so feeding a message in k chunks costs O(k·len); callers
// bound the unparsed buffer (nymea: 10 KiB) anyway.
func NextObject(p []byte) (obj []byte, n int, err error) {
	start := 0
	for start < len(p) && isJSONSpace(p[start]) {
		start++
	}
	if start == len(p) {
		return nil, start, nil
	}
	if p[start] != '{' {
		return nil, 0, parseError("Syntax error at index " + strconv.Itoa(start) + ": expected '{'")
	}
	var stack [MaxDepth]byte // closing bracket expected at each level
	depth := 0
	inString, escaped := false, false
	for i := start; i < len(p); i++ {
		c := p[i]
		if inString {
			switch {
			case c == '\n':
				return nil, 0, parseError("unterminated string")
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '{', '[':
			if depth == MaxDepth {
				return nil, 0, parseError("Syntax error at index " + strconv.Itoa(i) + ": nesting deeper than " + strconv.Itoa(MaxDepth))
			}
			stack[depth] = c + 2 // '{'+2 == '}', '['+2 == ']'
			depth++
		case '}', ']':
			if depth == 0 || stack[depth-1] != c {
				return nil, 0, parseError("Syntax error at index " + strconv.Itoa(i) + ": unexpected '" + string(c) + "'")
			}
			depth--
			if depth == 0 {
				return p[start : i+1], i + 1, nil
			}
		}
	}
	if endsLikeNymea(p[start:]) {
		if inString {
			return nil, 0, parseError("unterminated string")
		}
		if stack[depth-1] == ']' {
			return nil, 0, parseError("unterminated array")
		}
		return nil, 0, parseError("unterminated object")
	}
	return nil, start, nil
}

// endsLikeNymea reports whether nymea would parse p as a whole message
// now: its buffer ends in "}" or "}\n".
func endsLikeNymea(p []byte) bool {
	p = bytes.TrimSuffix(p, []byte("\n"))
	return len(p) > 0 && p[len(p)-1] == '}'
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Request is a parsed and validated JSON-RPC request.
type Request struct {
	// ID is the request id, read leniently (7 and "7" both give 7).
	ID int
	// Method is "Namespace.Name"; it and the two parts below are the method
	// table's own strings, never copies of the input.
	Method    string
	Namespace string
	Name      string

	params [maxParams]Param
	n      int
}

// Param is one params entry of a validated Request.
//
// Value holds the value as text: a String param's string; a UInt param's
// canonical decimal digits; a Bool param's "true" or "false"; a Uuid param's
// raw string exactly as sent (not validated: pass it to ParseUUID), or ""
// when the value was null or not a string.
type Param struct {
	Key   string
	Value string
}

// maxParams is the largest params template in the method table.
const maxParams = 9

// Params returns the params that were present, in template order. The
// slice aliases r; it does not allocate.
func (r *Request) Params() []Param { return r.params[:r.n] }

// Param returns the value of the params key and whether it was present.
// It does not allocate.
func (r *Request) Param(key string) (value string, ok bool) {
	for _, p := range r.params[:r.n] {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// Uint returns a UInt param's value and whether it was present. It does
// not allocate.
func (r *Request) Uint(key string) (uint64, bool) {
	s, ok := r.Param(key)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// RPCError is a JSON-RPC layer error: the server answers
// {"error":Text,"id":ID,"status":"error"} (see AppendError) and then closes
// the connection.
type RPCError struct {
	ID   int
	Text string
}

// Error returns e.Text.
func (e *RPCError) Error() string { return e.Text }

// paramType is the type of one params template entry.
type paramType uint8

// Param types of the method table, named like nymea's BasicType values.
const (
	typeString paramType = iota
	typeUuid
	typeUInt
	typeBool
	typeStringList // a JSON array of strings without commas; Param gives them joined by ","
)

// String returns the nymea BasicType name ("String", "Uuid", "UInt", "Bool").
func (t paramType) String() string {
	switch t {
	case typeString:
		return "String"
	case typeUuid:
		return "Uuid"
	case typeUInt:
		return "UInt"
	case typeBool:
		return "Bool"
	case typeStringList:
		return "StringList"
	}
	return "Variant"
}

// paramSpec is one template entry; optional keys are written "o:key" by nymea.
type paramSpec struct {
	key      string
	typ      paramType
	optional bool
}

// templateKey is the key as nymea's template spells it.
func (s paramSpec) templateKey() string {
	if s.optional {
		return "o:" + s.key
	}
	return s.key
}

type methodSpec struct {
	namespace, name, full string
	description           string
	params                []paramSpec // sorted by templateKey, like a QVariantMap
	returns               []returnSpec
	hidden                bool // between relays only: parsed, never introspected
}

type returnSpec struct{ key, typ string }

// methods is the method table: every method meetpoint can answer
// (IntrospectFor lists those one relay serves).
var methods = func() []methodSpec {
	m := []methodSpec{
		{namespace: "RemoteProxy", name: "Hello",
			description: "Information about this proxy server.",
			returns:     []returnSpec{{"apiVersion", "String"}, {"name", "String"}, {"server", "String"}, {"version", "String"}}},
		{namespace: "RemoteProxy", name: "Introspect",
			description: "Introspect this API.",
			returns:     []returnSpec{{"methods", "Object"}, {"notifications", "Object"}, {"types", "Object"}}},
		{namespace: "Authentication", name: "Authenticate",
			description: "Authenticate this connection. The AuthenticationError tells the result; on failure the connection is closed after the reply. Then wait for RemoteProxy.TunnelEstablished: data sent before it closes the connection, and so does a partner that does not come within the alone timeout.",
			params:      []paramSpec{{"uuid", typeString, false}, {"name", typeString, false}, {"token", typeString, false}, {"nonce", typeString, true}},
			returns:     []returnSpec{{"authenticationError", "$ref:AuthenticationError"}}},
		{namespace: "TunnelProxy", name: "RegisterServer",
			description: "Register a new TunnelProxy server on this instance. Multiple clients can be connected to this server once registered. After a successful registration the connection is SLIP framed.",
			params:      []paramSpec{{"serverName", typeString, false}, {"serverUuid", typeUuid, false}},
			returns:     []returnSpec{{"slipEnabled", "Bool"}, {"tunnelProxyError", "$ref:TunnelProxyError"}}},
		{namespace: "TunnelProxy", name: "RegisterClient",
			description: "Register a new TunnelProxy client on this instance. After a successful registration every byte sent is tunnel data for the server with the given serverUuid.",
			params:      []paramSpec{{"clientName", typeString, false}, {"clientUuid", typeUuid, false}, {"serverUuid", typeUuid, false}},
			returns:     []returnSpec{{"tunnelProxyError", "$ref:TunnelProxyError"}}},
		{namespace: "TunnelProxy", name: "DisconnectClient",
			description: "Disconnect the client with the given socket address. Only a registered server may call this.",
			params:      []paramSpec{{"socketAddress", typeUInt, false}},
			returns:     []returnSpec{{"tunnelProxyError", "$ref:TunnelProxyError"}}},
		{namespace: "Events", name: "Subscribe",
			description: "Subscribe this idle connection to event channels (meetpoint): Events.Event notifications follow. The token is checked like Authenticate's; a channel must be the token's own subject or granted by an access rule. Send nothing else afterwards.",
			params:      []paramSpec{{"token", typeString, false}, {"channels", typeStringList, false}},
			returns:     []returnSpec{{"authenticationError", "$ref:AuthenticationError"}, {"channels", "StringList"}}},
		{namespace: "Mesh", name: "Join", hidden: true,
			description: "Between the relays of a fleet (meetpoint): the request's signature (a MAC with the fleet's mesh key) says that another node authenticated a client with this token, nonce, uuid and name; this node pairs it with the client waiting here and the connection becomes that client's end of the tunnel.",
			params: []paramSpec{{"node", typeString, false}, {"time", typeUInt, false}, {"mac", typeString, false},
				{"token", typeString, false}, {"nonce", typeString, true}, {"uuid", typeString, false}, {"name", typeString, false},
				{"identity", typeString, true}, {"rid", typeString, true}},
			returns: []returnSpec{}},
		{namespace: "Mesh", name: "Reach", hidden: true,
			description: "Between the relays of a fleet (meetpoint): TunnelProxy.RegisterClient for a client of another node (signed with the fleet's mesh key); the connection becomes that client's end.",
			params: []paramSpec{{"node", typeString, false}, {"time", typeUInt, false}, {"mac", typeString, false},
				{"clientName", typeString, false}, {"clientUuid", typeUuid, false}, {"serverUuid", typeUuid, false},
				{"identity", typeString, true}, {"rid", typeString, true}},
			returns: []returnSpec{{"tunnelProxyError", "$ref:TunnelProxyError"}}},
		{namespace: "Mesh", name: "Ping", hidden: true,
			description: "Between the relays of a fleet (meetpoint): a liveness ping from another node (signed with the fleet's mesh key); the connection stays open for the next.",
			params:      []paramSpec{{"node", typeString, false}, {"time", typeUInt, false}, {"mac", typeString, false}, {"rid", typeString, true}},
			returns:     []returnSpec{}},
		{namespace: "TunnelProxy", name: "Ping",
			description: "Keep the connection alive. The server answers with the given timestamp.",
			params:      []paramSpec{{"timestamp", typeUInt, false}},
			returns:     []returnSpec{{"timestamp", "UInt"}}},
	}
	for i := range m {
		m[i].full = m[i].namespace + "." + m[i].name
		slices.SortFunc(m[i].params, func(a, b paramSpec) int { return strings.Compare(a.templateKey(), b.templateKey()) })
	}
	return m
}()

// decodeAPI parses requests: numbers stay exact, strings are copied out of
// the caller's buffer, raw control characters in strings are rejected as
// encoding/json does, and "id", "method" and "params" are matched exactly,
// as nymea's QVariantMap matches them ("ID" is an unknown key, not the id).
var decodeAPI = sonic.Config{UseNumber: true, CopyString: true, ValidateString: true, CaseSensitive: true}.Froze()

// wireRequest is a request as it is on the wire, decoded in one pass: sonic
// validates the whole object (what it skips included) while filling it.
// id and method are read leniently, as nymea's QVariant conversions do;
// params stays a lazily parsed node, walked once against the template.
type wireRequest struct {
	ID     any      `json:"id"`
	Method any      `json:"method"`
	Params ast.Node `json:"params"`
}

// ParseRequest parses one JSON object (a WebSocket message, or what
// NextObject delimited) and validates it against the method table,
// producing nymea's error texts:
//
//   - invalid JSON: "Failed to parse JSON data: <sonic's message>", id -1;
//     valid JSON that is not UTF-8: "Failed to parse JSON data: invalid
//     UTF8 string" (Qt's words), id -1
//   - id absent or not an integer (7, 7.0 and "7" are accepted, "7.0" is
//     not), or valid JSON that is not an object: "Error parsing command.
//     Missing 'id'", id -1
//   - method absent or not exactly two dot-separated parts:
//     "Error parsing method. Got: '<m>”, Expected: 'Namespace.method'"
//     (the doubled quote is nymea's)
//   - "No such namespace", "No such method"
//   - "Invalid params: Missing key <k>", "Invalid params: Forbidden key <k>",
//     "Invalid params: Invalid value type for key <k>"
//
// Every error after the id check carries the request's id. Template keys
// are checked in nymea's order (sorted, optional ones as "o:key"), then
// unknown keys in sorted order. params absent, null or not an object counts
// as an empty object, as in nymea.
//
// A Uuid-typed param passes validation whenever it is present, whatever its
// value (nymea answers a bad uuid with tunnelProxyError InvalidUuid, not an
// RPC error): check it with ParseUUID. A null uuid is kept as "" and
// therefore invalid, never missing.
//
// Cost: a valid request in the shape clients write (scanRequest) takes one
// pass over obj and one allocation. Any other object, and every error,
// takes sonic's pass into a wireRequest (the id and method as small
// values, params as a node), a UTF-8 check and one walk over params: for an Authenticate,
// five times the time and seven allocations (BenchmarkParseRequest). The
// returned Request holds its params inline.
func ParseRequest(obj []byte) (Request, *RPCError) {
	if req, ok := scanRequest(obj); ok {
		return req, nil
	}
	return parseRequest(obj)
}

// parseRequest is ParseRequest on sonic alone: the reference the fast path
// is fuzzed against, and the parser for what the fast path leaves.
func parseRequest(obj []byte) (Request, *RPCError) {
	var req Request
	var w wireRequest
	err := decodeAPI.Unmarshal(obj, &w)
	var mismatch *decoder.MismatchTypeError
	if err != nil && !errors.As(err, &mismatch) {
		return req, parseError(errorDetail(err))
	}
	// sonic rewrites what is not UTF-8 to U+FFFD; JSON text is UTF-8
	// (RFC 8259) and nymea's parser refuses it.
	if !utf8.Valid(obj) {
		return req, parseError("invalid UTF8 string")
	}
	if err != nil { // valid JSON, but not an object
		return req, &RPCError{ID: -1, Text: "Error parsing command. Missing 'id'"}
	}
	id, ok := lenientID(w.ID)
	if !ok {
		return req, &RPCError{ID: -1, Text: "Error parsing command. Missing 'id'"}
	}
	req.ID = id
	method := qtString(w.Method)
	ns, name, ok := strings.Cut(method, ".")
	if !ok || strings.Contains(name, ".") {
		return req, &RPCError{ID: id, Text: "Error parsing method. Got: '" + method + "'', Expected: 'Namespace.method'"}
	}
	var spec *methodSpec
	nsFound := false
	for i := range methods {
		if methods[i].namespace == ns {
			nsFound = true
			if methods[i].name == name {
				spec = &methods[i]
				break
			}
		}
	}
	if !nsFound {
		return req, &RPCError{ID: id, Text: "No such namespace"}
	}
	if spec == nil {
		return req, &RPCError{ID: id, Text: "No such method"}
	}
	req.Method, req.Namespace, req.Name = spec.full, spec.namespace, spec.name

	// One walk over params: each key is matched to the template or noted
	// as forbidden.
	var given [maxParams]*ast.Node
	var forbidden string
	if w.Params.TypeSafe() == ast.V_OBJECT {
		err := w.Params.ForEach(func(p ast.Sequence, n *ast.Node) bool {
			for i, ps := range spec.params {
				if ps.key == *p.Key {
					given[i] = n
					return true
				}
			}
			if forbidden == "" || *p.Key < forbidden {
				forbidden = *p.Key
			}
			return true
		})
		if err != nil {
			return req, parseError(errorDetail(err))
		}
	}
	for i, ps := range spec.params {
		if given[i] == nil {
			if ps.optional {
				continue
			}
			return req, &RPCError{ID: id, Text: "Invalid params: Missing key " + ps.key}
		}
		text, ok := paramText(ps.typ, given[i])
		if !ok {
			return req, &RPCError{ID: id, Text: "Invalid params: Invalid value type for key " + ps.key}
		}
		req.params[req.n] = Param{Key: ps.key, Value: text}
		req.n++
	}
	if forbidden != "" {
		return req, &RPCError{ID: id, Text: "Invalid params: Forbidden key " + forbidden}
	}
	return req, nil
}

// lenientID reads a JSON-RPC id the way QVariant::toInt does, within
// int32: numbers that are integers (7, 7.0, 7e0), and strings holding a
// decimal integer, spaces around it allowed ("7", " 7 "; QString::toLongLong
// refuses "7.0" and "7e0"). Unlike QVariant::toInt it refuses a fraction
// (1.5), which Qt would round.
func lenientID(v any) (int, bool) {
	var s string
	switch v := v.(type) {
	case json.Number:
		s = string(v)
	case float64:
		s = strconv.FormatFloat(v, 'g', -1, 64)
	case string:
		i, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
		return int(i), err == nil
	default:
		return 0, false
	}
	if i, err := strconv.ParseInt(s, 10, 32); err == nil {
		return int(i), true
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != math.Trunc(f) || f < math.MinInt32 || f > math.MaxInt32 {
		return 0, false
	}
	return int(f), true
}

// qtString converts a method value like QVariant::toString: strings as
// they are, numbers and bools as text, anything else empty.
func qtString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case json.Number:
		return string(v)
	case bool:
		return strconv.FormatBool(v)
	}
	return ""
}

// paramText checks the value n against typ and returns its text form (see
// Param).
func paramText(typ paramType, n *ast.Node) (string, bool) {
	switch t := n.TypeSafe(); typ {
	case typeString:
		if t != ast.V_STRING {
			return "", false
		}
		s, err := n.String()
		return s, err == nil
	case typeUuid:
		if t != ast.V_STRING {
			return "", true
		}
		s, err := n.String()
		return s, err == nil
	case typeBool:
		if t != ast.V_TRUE && t != ast.V_FALSE {
			return "", false
		}
		return strconv.FormatBool(t == ast.V_TRUE), true
	case typeStringList:
		if t != ast.V_ARRAY {
			return "", false
		}
		items, err := n.ArrayUseNode()
		if err != nil || len(items) == 0 || len(items) > 64 {
			return "", false
		}
		var b strings.Builder
		for i := range items {
			if items[i].TypeSafe() != ast.V_STRING {
				return "", false
			}
			s, err := items[i].String()
			if err != nil || s == "" || strings.ContainsRune(s, ',') {
				return "", false
			}
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(s)
		}
		return b.String(), true
	case typeUInt:
		if t != ast.V_NUMBER {
			return "", false
		}
		raw, err := n.Raw()
		if err != nil {
			return "", false
		}
		// sonic (v1.15.5) includes the whitespace after a number of up to
		// 16 digits in Raw when digits and whitespace reach 17 bytes, as
		// in an indented {"timestamp": 1765000000000\n    }.
		raw = strings.TrimRight(raw, " \t\n\r")
		if u, err := strconv.ParseUint(raw, 10, 64); err == nil {
			return strconv.FormatUint(u, 10), true
		}
		f, err := strconv.ParseFloat(raw, 64)
		if err != nil || f < 0 || f != math.Trunc(f) || f > 1<<53 {
			return "", false
		}
		return strconv.FormatUint(uint64(f), 10), true
	}
	return "", false
}

// parseError builds the invalid-JSON RPCError.
func parseError(detail string) *RPCError {
	return &RPCError{ID: -1, Text: parseErrPrefix + detail}
}

// errorDetail shortens a sonic error to its first line (sonic quotes its
// syntax errors and appends a multi-line excerpt of the input).
func errorDetail(err error) string {
	s := err.Error()
	if u, uerr := strconv.Unquote(s); uerr == nil {
		s = u
	}
	s, _, _ = strings.Cut(s, "\n")
	s = strings.TrimSpace(s)
	if s == "" {
		return "invalid JSON"
	}
	return s
}

// ParseUUID accepts a UUID in the 8-4-4-4-12 hex form, with or without
// surrounding braces and in any letter case, and returns its canonical
// form: lowercase, without braces ("6ba7b810-9dad-11d1-80b4-00c04fd430c8").
// The nil UUID (all zeros) is not ok: nymea treats it as no uuid at all and
// answers TunnelProxyErrorInvalidUuid. It allocates only when s is not
// already canonical.
func ParseUUID(s string) (canonical string, ok bool) {
	if len(s) == 38 && s[0] == '{' && s[37] == '}' {
		s = s[1:37]
	}
	if len(s) != 36 {
		return "", false
	}
	lower, zero := true, true
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
			continue
		}
		zero = zero && c == '0'
		switch {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			lower = false
		default:
			return "", false
		}
	}
	if zero {
		return "", false
	}
	if lower {
		return s, true
	}
	return strings.ToLower(s), true
}

// fieldKind tells which value a Field holds.
type fieldKind uint8

const (
	fieldStr fieldKind = iota
	fieldInt
	fieldBool
	fieldRaw
)

// Field is one key/value pair of a params object for AppendSuccess and
// AppendNotification. Build it with Str, Int, Bool or Raw; a Field is a
// small value and building one does not allocate.
type Field struct {
	Key  string
	kind fieldKind
	str  string
	num  int64
	raw  []byte
}

// Str returns a string field; the value is escaped when appended.
func Str(key, value string) Field { return Field{Key: key, kind: fieldStr, str: value} }

// Int returns an integer field.
func Int(key string, value int64) Field { return Field{Key: key, kind: fieldInt, num: value} }

// Bool returns a boolean field.
func Bool(key string, value bool) Field {
	f := Field{Key: key, kind: fieldBool}
	if value {
		f.num = 1
	}
	return f
}

// Raw returns a field whose value is the given JSON text, appended
// verbatim: the caller guarantees it is valid JSON (e.g. Introspect()).
// The slice is referenced, not copied.
func Raw(key string, json []byte) Field { return Field{Key: key, kind: fieldRaw, raw: json} }

// AppendError appends the error reply {"error":text,"id":id,"status":"error"}
// and a newline to dst. It allocates only to grow dst.
func AppendError(dst []byte, id int, text string) []byte {
	dst = append(dst, `{"error":`...)
	dst = appendString(dst, text)
	dst = append(dst, `,"id":`...)
	dst = strconv.AppendInt(dst, int64(id), 10)
	return append(dst, ",\"status\":\"error\"}\n"...)
}

// AppendSuccess appends the reply {"id":id,"params":{...},"status":"success"}
// and a newline to dst. Fields are written in the order given; pass them
// sorted by key to match nymea's output byte for byte. It allocates only to
// grow dst (and the variadic slice, which the compiler keeps on the stack).
func AppendSuccess(dst []byte, id int, params ...Field) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, int64(id), 10)
	dst = append(dst, `,"params":`...)
	dst = appendFields(dst, params)
	return append(dst, ",\"status\":\"success\"}\n"...)
}

// AppendSuccessRaw appends {"id":id,"params":params,"status":"success"} and
// a newline to dst, with params (a JSON object, e.g. Introspect()) written
// verbatim. It allocates only to grow dst.
func AppendSuccessRaw(dst []byte, id int, params []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, int64(id), 10)
	dst = append(dst, `,"params":`...)
	dst = append(dst, params...)
	return append(dst, ",\"status\":\"success\"}\n"...)
}

// AppendRequest appends the request {"id":id,"method":method,"params":{...}}
// and a newline to dst (what a client, or a relay calling another relay,
// sends). Fields are written in the order given. It allocates only to grow
// dst.
func AppendRequest(dst []byte, id int, method string, params ...Field) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, int64(id), 10)
	dst = append(dst, `,"method":`...)
	dst = appendString(dst, method)
	dst = append(dst, `,"params":`...)
	dst = appendFields(dst, params)
	return append(dst, "}\n"...)
}

// AppendNotification appends the notification
// {"id":id,"notification":name,"params":{...}} and a newline to dst; name
// is "Namespace.Name" and id the connection's notification counter (from 0).
// Fields are written in the order given. It allocates only to grow dst.
func AppendNotification(dst []byte, id int, name string, params ...Field) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, int64(id), 10)
	dst = append(dst, `,"notification":`...)
	dst = appendString(dst, name)
	dst = append(dst, `,"params":`...)
	dst = appendFields(dst, params)
	return append(dst, "}\n"...)
}

func appendFields(dst []byte, fields []Field) []byte {
	dst = append(dst, '{')
	for i, f := range fields {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, f.Key)
		dst = append(dst, ':')
		switch f.kind {
		case fieldStr:
			dst = appendString(dst, f.str)
		case fieldInt:
			dst = strconv.AppendInt(dst, f.num, 10)
		case fieldBool:
			dst = strconv.AppendBool(dst, f.num != 0)
		case fieldRaw:
			dst = append(dst, f.raw...)
		}
	}
	return append(dst, '}')
}

const jsonHex = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control
// characters are escaped, U+2028/U+2029 too (for JavaScript peers), and
// invalid UTF-8 becomes U+FFFD. Other characters are written as they are.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', jsonHex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
