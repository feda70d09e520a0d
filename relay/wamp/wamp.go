package wamp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// WAMP v2 message types (the basic profile, plus CANCEL and INTERRUPT).
const (
	mHello        = 1
	mWelcome      = 2
	mAbort        = 3
	mChallenge    = 4
	mAuthenticate = 5
	mGoodbye      = 6
	mError        = 8
	mPublish      = 16
	mPublished    = 17
	mSubscribe    = 32
	mSubscribed   = 33
	mUnsubscribe  = 34
	mUnsubscribed = 35
	mEvent        = 36
	mCall         = 48
	mCancel       = 49
	mResult       = 50
	mRegister     = 64
	mRegistered   = 65
	mUnregister   = 66
	mUnregistered = 67
	mInvocation   = 68
	mInterrupt    = 69
	mYield        = 70
)

// minFields is how many elements after the type each message a client
// may send needs; the rest are optional (Arguments, ArgumentsKw).
var minFields = map[int]int{
	mHello: 2, mAuthenticate: 2, mGoodbye: 2, mError: 4, mPublish: 3,
	mSubscribe: 3, mUnsubscribe: 2, mCall: 3, mCancel: 2, mRegister: 3,
	mUnregister: 2, mYield: 2,
}

// maxID is the largest WAMP id (2^53: what a JSON number holds exactly).
const maxID = 1 << 53

// maxURI bounds a procedure, topic, realm or error URI, in bytes.
const maxURI = 512

// Message is one decoded WAMP message: its type and the elements after
// the type, still encoded (Arguments and ArgumentsKw travel on without
// being decoded). Parse costs one pass over the bytes and one slice of
// element references into them.
type Message struct {
	Type   int
	Fields []json.RawMessage
}

// ErrNotWAMP is returned for text that is not a JSON array starting with
// an integer message type.
var ErrNotWAMP = errors.New("wamp: a message is a JSON array starting with its type")

// Parse decodes a WAMP message and checks that a message a client may send
// has the elements its type needs. It does not check the elements'
// types: the accessors do, where they are used.
func Parse(b []byte) (Message, error) {
	var all []json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil || len(all) == 0 {
		return Message{}, ErrNotWAMP
	}
	var t int
	if err := json.Unmarshal(all[0], &t); err != nil {
		return Message{}, ErrNotWAMP
	}
	m := Message{Type: t, Fields: all[1:]}
	if need, ok := minFields[t]; ok && len(m.Fields) < need {
		return Message{}, fmt.Errorf("wamp: message type %d needs %d elements, has %d", t, need+1, len(all))
	}
	return m, nil
}

// ID is field i as a WAMP id: an integer in [0, 2^53].
func (m Message) ID(i int) (uint64, error) {
	var v uint64
	if i >= len(m.Fields) || json.Unmarshal(m.Fields[i], &v) != nil || v > maxID {
		return 0, fmt.Errorf("wamp: element %d of message type %d is not an id", i+1, m.Type)
	}
	return v, nil
}

// Int is field i as an integer (a message type inside ERROR).
func (m Message) Int(i int) (int, error) {
	var v int
	if i >= len(m.Fields) || json.Unmarshal(m.Fields[i], &v) != nil {
		return 0, fmt.Errorf("wamp: element %d of message type %d is not an integer", i+1, m.Type)
	}
	return v, nil
}

// URI is field i as a URI: a non-empty string of at most 512 bytes without
// white space or '#'.
func (m Message) URI(i int) (string, error) {
	var v string
	if i >= len(m.Fields) || json.Unmarshal(m.Fields[i], &v) != nil || !validURI(v) {
		return "", fmt.Errorf("wamp: element %d of message type %d is not a URI", i+1, m.Type)
	}
	return v, nil
}

func validURI(v string) bool {
	return v != "" && len(v) <= maxURI && !strings.ContainsAny(v, " \t\r\n#")
}

// decode unmarshals field i into v where the message has it (an optional
// element; one that does not decode leaves v as it was).
func (m Message) decode(i int, v any) {
	if i < len(m.Fields) {
		_ = json.Unmarshal(m.Fields[i], v)
	}
}

// Dict is field i as a JSON object, its values still encoded.
func (m Message) Dict(i int) (map[string]json.RawMessage, error) {
	var v map[string]json.RawMessage
	if i >= len(m.Fields) || json.Unmarshal(m.Fields[i], &v) != nil || v == nil {
		return nil, fmt.Errorf("wamp: element %d of message type %d is not a dictionary", i+1, m.Type)
	}
	return v, nil
}

// Payload is the message's Arguments and ArgumentsKw from field i on, as
// they came (nil where absent), after checking they are a list and a
// dictionary.
func (m Message) Payload(i int) (args, kwargs json.RawMessage, err error) {
	if i < len(m.Fields) {
		if args = m.Fields[i]; !isJSON(args, '[') {
			return nil, nil, fmt.Errorf("wamp: Arguments of message type %d is not a list", m.Type)
		}
	}
	if i+1 < len(m.Fields) {
		if kwargs = m.Fields[i+1]; !isJSON(kwargs, '{') {
			return nil, nil, fmt.Errorf("wamp: ArgumentsKw of message type %d is not a dictionary", m.Type)
		}
	}
	return args, kwargs, nil
}

// isJSON: raw (valid JSON already) starts with open after white space.
func isJSON(raw json.RawMessage, open byte) bool {
	for _, c := range raw {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c == open
	}
	return false
}

// encode builds a message from its type and elements; json.RawMessage
// elements are written as they are. A nil payload ends the message early
// (WAMP leaves out trailing absent Arguments and ArgumentsKw).
func encode(t int, fields ...any) []byte {
	for len(fields) > 0 {
		if r, ok := fields[len(fields)-1].(json.RawMessage); ok && r == nil {
			fields = fields[:len(fields)-1]
			continue
		}
		break
	}
	// A kwargs with no args: args becomes [].
	for i, f := range fields {
		if r, ok := f.(json.RawMessage); ok && r == nil {
			fields[i] = json.RawMessage("[]")
		}
	}
	return marshal(append([]any{t}, fields...)) // only valid JSON reaches here; nil is never sent
}

// marshal is json.Marshal without its HTML escaping, which rewrites the
// raw elements it copies too ('<' as \u003c, six bytes for one): a
// message would leave up to six times the size it came in at, past its
// receiver's MaxQueueBytes. nil for what does not encode.
func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if enc.Encode(v) != nil {
		return nil
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// details is an empty Details/Options dictionary.
var details = map[string]any{}

// Error URIs the router sends.
const (
	errNoSuchRealm        = "wamp.error.no_such_realm"
	errNotAuthorized      = "wamp.error.not_authorized"
	errAuthFailed         = "wamp.error.authentication_failed"
	errProtocolViolation  = "wamp.error.protocol_violation"
	errNoSuchProcedure    = "wamp.error.no_such_procedure"
	errProcedureExists    = "wamp.error.procedure_already_exists"
	errNoSuchRegistration = "wamp.error.no_such_registration"
	errNoSuchSubscription = "wamp.error.no_such_subscription"
	errInvalidURI         = "wamp.error.invalid_uri"
	errInvalidArgument    = "wamp.error.invalid_argument"
	errOptionNotAllowed   = "wamp.error.option_not_allowed"
	errCanceled           = "wamp.error.canceled"
	errTimeout            = "wamp.error.timeout"
	errLimit              = "meetpoint.error.limit"
	errUnavailable        = "meetpoint.error.unavailable" // the fleet's store failed: try again
	closeNormal           = "wamp.close.normal"
	closeGoodbyeAndOut    = "wamp.close.goodbye_and_out"
	closeShutdown         = "wamp.close.system_shutdown"
)
