package handshake

import (
	"errors"

	"github.com/gobwas/ws"
)

// Stream is the inbound side of one WebSocket client in the server role,
// the friendly API over Decoder: it decodes frames, answers control frames
// itself and keeps the close handshake; data fragments go back to the
// caller, whose stage decides what data means. A relay moves one Stream
// with its socket from stage to stage (pre-tunnel connection, tunnel
// endpoint, TunnelProxy end), so a frame split across a hand-over decodes
// whole.
//
// Replies (pongs, the close reply) are queued on the caller's Queue, which
// is bounded: a client that pings faster than it reads meets ErrQueueFull,
// and its owner stops reading it or closes it.
type Stream struct {
	// Dec decodes the frames; set its MaxFrame as the stage requires.
	Dec Decoder
	// CloseRecv is set once the client's close frame arrived: nothing more
	// is read.
	CloseRecv bool
	// CloseSent is set once our close frame is queued.
	CloseSent bool

	ctrlOp ws.OpCode
	ctrlIn []byte // control payload being assembled (≤ 125 B)
}

// Event is what one Stream step produced.
type Event uint8

// The events of Stream.Step.
const (
	EventMore    Event = iota // the input is used up (part of a header may be buffered)
	EventData                 // the fragment is a data frame's header or payload chunk
	EventControl              // a control frame was handled (ping answered, pong ignored)
	EventClose                // the client sent a valid close frame; the reply is queued
)

// ErrQueueFull: a Queue is over its bound.
var ErrQueueFull = errors.New("output toward the client over its budget")

// Step decodes the next part of p. Control frames are consumed here: a
// ping queues a pong with the same payload on q, a close frame queues the
// close reply (with the client's code) once. A protocol violation returns
// the decoder's *CloseError (the caller closes with its code); a full q
// returns ErrQueueFull. n is how much of p was used.
//
// Cost: no allocation beyond growing the control payload buffer (once,
// 125 B) and q.
func (s *Stream) Step(p []byte, q *Queue) (ev Event, frag Fragment, n int, err error) {
	frag, n, err = s.Dec.Decode(p)
	if err != nil {
		return EventMore, frag, 0, err
	}
	switch frag.Kind {
	case FragNone:
		return EventMore, frag, n, nil
	case FragHeader:
		if !frag.Header.OpCode.IsControl() {
			return EventData, frag, n, nil
		}
		s.ctrlOp, s.ctrlIn = frag.Header.OpCode, s.ctrlIn[:0]
	case FragPayload:
		if !frag.Header.OpCode.IsControl() {
			return EventData, frag, n, nil
		}
		s.ctrlIn = append(s.ctrlIn, frag.Data...)
	}
	if !frag.FrameEnd {
		return EventControl, frag, n, nil
	}
	return s.control(q, frag, n)
}

// control acts on a complete control frame.
func (s *Stream) control(q *Queue, frag Fragment, n int) (Event, Fragment, int, error) {
	switch s.ctrlOp {
	case ws.OpPing:
		if !q.PushFrame(ws.OpPong, s.ctrlIn) {
			return EventControl, frag, n, ErrQueueFull
		}
	case ws.OpClose:
		if err := CheckClosePayload(s.ctrlIn); err != nil {
			return EventMore, frag, n, err
		}
		s.CloseRecv = true
		code, _ := ws.ParseCloseFrameDataUnsafe(s.ctrlIn)
		if code == 0 {
			code = ws.StatusNormalClosure
		}
		s.SendClose(q, code, "")
		return EventClose, frag, n, nil
	}
	return EventControl, frag, n, nil
}

// SendClose queues our close frame, once. It goes past the queue's bound:
// it is the last thing the client gets.
func (s *Stream) SendClose(q *Queue, code ws.StatusCode, reason string) {
	if s.CloseSent {
		return
	}
	s.CloseSent = true
	q.B = AppendClose(q.B, code, reason)
}

// InMessage reports whether a data frame or message is partly received
// (a control frame partly received is not: it is the Stream's own).
func (s *Stream) InMessage() bool {
	_, in := s.Dec.InMessage()
	return in || s.Dec.InDataFrame()
}

// CloseCodeOf is the close code and reason for an error from Step or
// Decode: the code a *CloseError carries, else 1002.
func CloseCodeOf(err error) (ws.StatusCode, string) {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Reason
	}
	return ws.StatusProtocolError, "protocol error"
}

// Queue is output a server generates for one client, sent at a frame (or
// message) boundary: JSON-RPC replies and notifications, pongs, close
// frames. It is bounded — Push and PushFrame refuse once it would exceed
// QueueMax — so it can be charged to the client's budget. An empty queue
// holds no memory. B is the queued bytes: owners write from it and call
// Consumed.
type Queue struct {
	B []byte
}

// QueueMax bounds a Queue: a tunnel endpoint's pongs, a pre-tunnel
// connection's replies to one batch of requests. Introspect, the largest
// reply, is 3.6 KiB.
const QueueMax = 64 << 10

// Push queues p, or reports false if that would exceed QueueMax.
func (q *Queue) Push(p []byte) bool {
	if len(q.B)+len(p) > QueueMax {
		return false
	}
	q.B = append(q.B, p...)
	return true
}

// PushFrame queues one unmasked, final frame, or reports false if that
// would exceed QueueMax. It allocates only to grow the queue.
func (q *Queue) PushFrame(op ws.OpCode, payload []byte) bool {
	if len(q.B)+len(payload)+ws.MaxHeaderSize > QueueMax {
		return false
	}
	q.B = AppendFrame(q.B, op, true, payload)
	return true
}

// Len is the number of queued bytes.
func (q *Queue) Len() int { return len(q.B) }

// Take removes and returns everything queued.
func (q *Queue) Take() []byte {
	b := q.B
	q.B = nil
	return b
}

// Consumed drops the first n queued bytes; the memory goes once empty.
func (q *Queue) Consumed(n int) {
	if n >= len(q.B) {
		q.B = nil
		return
	}
	q.B = q.B[n:]
}
