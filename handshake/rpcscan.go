package handshake

import (
	"strings"
	"unicode/utf8"
)

// scanRequest is ParseRequest's fast path for a request as clients write
// it: {"id":N,"method":"NS.Name","params":{...}} with these three keys
// spelled exactly so and in that order (params may be absent, null or
// {}; its own keys come in any order), an integer id, strings without
// escapes, and params that fill the method's template with nothing else.
// It reports ok=false for anything else — another shape, an error to
// answer — and ParseRequest then parses the object with sonic, whose
// result is the reference: FuzzScanRequest checks that every request
// accepted here is the one sonic gives.
//
// Cost: one pass over obj (non-ASCII strings are checked for UTF-8 once
// more) and at most one allocation (the params' values, copied into one
// string).
func scanRequest(obj []byte) (req Request, ok bool) {
	s := scanner{p: obj}
	if !s.next('{') || !s.key("id") {
		return req, false
	}
	id, ok := s.int32()
	if !ok || !s.next(',') || !s.key("method") {
		return req, false
	}
	name, ok := s.str()
	if !ok {
		return req, false
	}
	var spec *methodSpec
	for i := range methods {
		if methods[i].full == string(name) { // compared without a copy
			spec = &methods[i]
			break
		}
	}
	if spec == nil {
		return req, false
	}
	var vals [maxParams][]byte // raw values, by template index; nil: absent
	if s.next(',') {
		if !s.key("params") || !s.params(spec, &vals) {
			return req, false
		}
	}
	if !s.next('}') || !s.end() {
		return req, false
	}
	size := 0
	for i, ps := range spec.params {
		if vals[i] == nil && !ps.optional {
			return req, false
		}
		size += len(vals[i])
	}
	var b strings.Builder // the values' one copy; each Param slices it
	b.Grow(size)
	for _, v := range vals[:len(spec.params)] {
		b.Write(v)
	}
	all, at := b.String(), 0
	for i, ps := range spec.params {
		if vals[i] == nil {
			continue
		}
		req.params[req.n] = Param{Key: ps.key, Value: all[at : at+len(vals[i])]}
		req.n++
		at += len(vals[i])
	}
	req.ID = id
	req.Method, req.Namespace, req.Name = spec.full, spec.namespace, spec.name
	return req, true
}

// scanner reads the JSON of scanRequest. Every method reports false for
// what the fast path does not take, never an error of its own.
type scanner struct {
	p []byte
	i int
}

// space skips JSON whitespace.
func (s *scanner) space() {
	for s.i < len(s.p) && isJSONSpace(s.p[s.i]) {
		s.i++
	}
}

// next consumes c if it comes next.
func (s *scanner) next(c byte) bool {
	s.space()
	if s.i < len(s.p) && s.p[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.p)
}

// key reads the object key k and its colon.
func (s *scanner) key(k string) bool {
	got, ok := s.str()
	return ok && string(got) == k && s.next(':')
}

// str reads a string without escapes and returns its bytes (valid UTF-8,
// no control characters), a slice of the input.
func (s *scanner) str() ([]byte, bool) {
	if !s.next('"') {
		return nil, false
	}
	start, ascii := s.i, true
	for ; s.i < len(s.p); s.i++ {
		switch c := s.p[s.i]; {
		case c == '"':
			v := s.p[start:s.i]
			s.i++
			return v, ascii || utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= utf8.RuneSelf:
			ascii = false
		}
	}
	return nil, false
}

// digits reads an unsigned JSON integer (no fraction, no exponent) and
// returns its digits.
func (s *scanner) digits() ([]byte, bool) {
	start := s.i
	for s.i < len(s.p) && s.p[s.i] >= '0' && s.p[s.i] <= '9' {
		s.i++
	}
	d := s.p[start:s.i]
	if len(d) == 0 || (len(d) > 1 && d[0] == '0') {
		return nil, false
	}
	if s.i < len(s.p) && (s.p[s.i] == '.' || s.p[s.i] == 'e' || s.p[s.i] == 'E') {
		return nil, false
	}
	return d, true
}

// int32 reads an integer id within int32's range.
func (s *scanner) int32() (int, bool) {
	s.space()
	neg := s.i < len(s.p) && s.p[s.i] == '-'
	if neg {
		s.i++
	}
	d, ok := s.digits()
	if !ok || len(d) > 10 {
		return 0, false
	}
	var v int64 // ten digits fit, whatever int's size
	for _, c := range d {
		v = v*10 + int64(c-'0')
	}
	if neg {
		v = -v
	}
	return int(v), v >= -1<<31 && v <= 1<<31-1
}

// uint reads a UInt param: its canonical decimal digits, within uint64.
func (s *scanner) uint() ([]byte, bool) {
	s.space()
	d, ok := s.digits()
	if !ok || len(d) > 20 || (len(d) == 20 && string(d) > "18446744073709551615") {
		return nil, false
	}
	return d, true
}

// bool reads true or false and returns it.
func (s *scanner) bool() ([]byte, bool) {
	for _, w := range [...]string{"true", "false"} {
		if s.literal(w) {
			return s.p[s.i-len(w) : s.i], true
		}
	}
	return nil, false
}

// literal consumes the JSON literal w if it comes next.
func (s *scanner) literal(w string) bool {
	s.space()
	if len(s.p)-s.i >= len(w) && string(s.p[s.i:s.i+len(w)]) == w {
		s.i += len(w)
		return true
	}
	return false
}

// params reads params: null (none given), or an object whose keys are all
// in spec's template, each once, with values of their types.
func (s *scanner) params(spec *methodSpec, vals *[maxParams][]byte) bool {
	if s.literal("null") {
		return true
	}
	if !s.next('{') {
		return false
	}
	if s.next('}') {
		return true
	}
	for {
		k, ok := s.str()
		if !ok || !s.next(':') {
			return false
		}
		i := 0
		for i < len(spec.params) && spec.params[i].key != string(k) {
			i++
		}
		if i == len(spec.params) || vals[i] != nil {
			return false // a forbidden or repeated key: sonic's path answers it
		}
		var v []byte
		switch spec.params[i].typ {
		case typeString, typeUuid:
			v, ok = s.str() // "" too is non-nil: present
		case typeUInt:
			v, ok = s.uint()
		case typeBool:
			v, ok = s.bool()
		default:
			ok = false
		}
		if !ok {
			return false
		}
		vals[i] = v
		if s.next('}') {
			return true
		}
		if !s.next(',') {
			return false
		}
	}
}
