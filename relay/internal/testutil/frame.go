package testutil

import (
	"fmt"
	"io"

	"github.com/gobwas/ws"
)

// ReadFrame reads one WebSocket frame, refusing payloads over 64 MiB
// (ws.ReadFrame would trust the declared length).
func ReadFrame(r io.Reader) (ws.Frame, error) {
	h, err := ws.ReadHeader(r)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length > 64<<20 {
		return ws.Frame{}, fmt.Errorf("frame of %d bytes", h.Length)
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return ws.Frame{}, err
	}
	return ws.Frame{Header: h, Payload: p}, nil
}
