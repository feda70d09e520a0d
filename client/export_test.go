package client

import "time"

// TPQueued is how many bytes of c's client wait for Read.
func TPQueued(c *TPConn) int { return c.queuedBytes() }

// SetReplyIdle sets how long ServeTPClients waits for a device's reply
// after its local client's FIN; the returned func restores it.
func SetReplyIdle(d time.Duration) func() {
	old := replyIdle.Swap(int64(d))
	return func() { replyIdle.Store(old) }
}
