package relay

import (
	"errors"

	"github.com/gobwas/ws"

	"github.com/meetpoint/meetpoint/handshake"
)

// wsStream is the inbound side of one WebSocket client at every stage: the
// pre-tunnel connection, a tunnel endpoint and a TunnelProxy end each hold
// one (moved from stage to stage with the socket, so a frame split across
// the hand-over decodes whole). It decodes frames, answers control frames
// itself and keeps the close handshake; data fragments go back to the
// caller, whose stage decides what data means.
//
// Replies (pongs, the close reply) are queued on the caller's ctrlQueue,
// which is bounded: a client that pings faster than it reads meets
// errCtrlFull and its owner stops reading it (tunnels) or closes it as
// slow_reader.
type wsStream struct {
	dec       handshake.Decoder
	ctrlOp    ws.OpCode
	ctrlIn    []byte // control payload being assembled (≤ 125 B)
	closeRecv bool   // the client's close frame arrived: read nothing more
	closeSent bool   // our close frame is queued or written
}

// wsEvent is what one decoding step produced.
type wsEvent uint8

const (
	wsMore    wsEvent = iota // the input is used up (part of a header may be buffered)
	wsData                   // frag is a data frame's header or payload chunk
	wsControl                // a control frame was handled (ping answered, pong ignored)
	wsClose                  // the client sent a valid close frame; the reply is queued
)

// errCtrlFull: the control queue toward the client is over its bound.
var errCtrlFull = errors.New("control frames toward the client over budget")

// step decodes the next part of p. Control frames are consumed here: a
// ping queues a pong with the same payload on q, a close frame queues the
// close reply (with the client's code) once. A protocol violation returns
// the decoder's *handshake.CloseError (the caller closes with its code);
// a full q returns errCtrlFull. n is how much of p was used.
//
// Cost: no allocation beyond growing ctrlIn (once, 125 B) and q.
func (s *wsStream) step(p []byte, q *ctrlQueue) (ev wsEvent, frag handshake.Fragment, n int, err error) {
	frag, n, err = s.dec.Decode(p)
	if err != nil {
		return wsMore, frag, 0, err
	}
	switch frag.Kind {
	case handshake.FragNone:
		return wsMore, frag, n, nil
	case handshake.FragHeader:
		if !frag.Header.OpCode.IsControl() {
			return wsData, frag, n, nil
		}
		s.ctrlOp, s.ctrlIn = frag.Header.OpCode, s.ctrlIn[:0]
	case handshake.FragPayload:
		if !frag.Header.OpCode.IsControl() {
			return wsData, frag, n, nil
		}
		s.ctrlIn = append(s.ctrlIn, frag.Data...)
	}
	if !frag.FrameEnd {
		return wsControl, frag, n, nil
	}
	return s.control(q, frag, n)
}

// control acts on a complete control frame.
func (s *wsStream) control(q *ctrlQueue, frag handshake.Fragment, n int) (wsEvent, handshake.Fragment, int, error) {
	switch s.ctrlOp {
	case ws.OpPing:
		if !q.pushFrame(ws.OpPong, s.ctrlIn) {
			return wsControl, frag, n, errCtrlFull
		}
	case ws.OpClose:
		if err := handshake.CheckClosePayload(s.ctrlIn); err != nil {
			return wsMore, frag, n, err
		}
		s.closeRecv = true
		code, _ := ws.ParseCloseFrameDataUnsafe(s.ctrlIn)
		if code == 0 {
			code = ws.StatusNormalClosure
		}
		s.sendClose(q, code, "")
		return wsClose, frag, n, nil
	}
	return wsControl, frag, n, nil
}

// sendClose queues our close frame once. The close frame is allowed past
// the queue's bound: it is the last thing the client gets.
func (s *wsStream) sendClose(q *ctrlQueue, code ws.StatusCode, reason string) {
	if s.closeSent {
		return
	}
	s.closeSent = true
	q.b = handshake.AppendClose(q.b, code, reason)
}

// inMessage reports whether a data frame or message is partly received.
func (s *wsStream) inMessage() bool {
	_, in := s.dec.InMessage()
	return in || s.dec.InFrame()
}

// closeCodeOf is the WebSocket close code and reason for a decoder error:
// the code a *handshake.CloseError carries, else 1002.
func closeCodeOf(err error) (ws.StatusCode, string) {
	var ce *handshake.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Reason
	}
	return ws.StatusProtocolError, "protocol error"
}

// ctrlQueue is relay-generated output waiting for one client at a frame
// (or message) boundary: JSON-RPC replies and notifications, pongs, close
// frames. It is charged to the client's budget: push refuses once the
// queue would exceed ctrlMax, and the owner then stops reading the client
// or closes it (slow_reader). An empty queue holds no memory.
type ctrlQueue struct {
	b []byte
}

// ctrlMax bounds a ctrlQueue: a tunnel endpoint's pongs, a pre-tunnel
// connection's replies to one batch of requests. Introspect, the largest
// reply, is 3.6 KiB.
const ctrlMax = 64 << 10

// ctrlSoft is the queue length above which a tunnel stops reading a
// client's input until the queue drains (backpressure on ping floods).
const ctrlSoft = 1 << 10

// push queues p, or reports false if that would exceed ctrlMax.
func (q *ctrlQueue) push(p []byte) bool {
	if len(q.b)+len(p) > ctrlMax {
		return false
	}
	q.b = append(q.b, p...)
	return true
}

// pushFrame queues one unmasked, final WebSocket frame, or reports false
// if that would exceed ctrlMax. It allocates only to grow the queue.
func (q *ctrlQueue) pushFrame(op ws.OpCode, payload []byte) bool {
	if len(q.b)+len(payload)+ws.MaxHeaderSize > ctrlMax {
		return false
	}
	q.b = handshake.AppendFrame(q.b, op, true, payload)
	return true
}

// len is the number of queued bytes.
func (q *ctrlQueue) len() int { return len(q.b) }

// take removes and returns everything queued.
func (q *ctrlQueue) take() []byte {
	b := q.b
	q.b = nil
	return b
}

// consumed drops the first n queued bytes; the memory goes once empty.
func (q *ctrlQueue) consumed(n int) {
	if n >= len(q.b) {
		q.b = nil
		return
	}
	q.b = q.b[n:]
}
