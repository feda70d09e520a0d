package client

// TPQueued is how many bytes of c's client wait for Read.
func TPQueued(c *TPConn) int { return c.queuedBytes() }
