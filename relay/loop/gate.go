package loop

import (
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Gate bounds blocking work that needs a goroutine each (a TLS handshake:
// crypto/tls cannot resume one interrupted by "would block"): at most Max
// jobs run at once, up to 4×Max more wait in a FIFO, and beyond that — or
// once a waiting job's deadline has passed — a job is refused. A storm of
// jobs therefore costs a bounded number of goroutines. Safe for concurrent
// use.
type Gate[J any] struct {
	// Max is the most jobs run at once.
	Max int
	// Run does one job (on a goroutine of the gate's).
	Run func(J)
	// Refuse is called instead of Run for a job turned away.
	Refuse func(J)
	// Deadline is when a waiting job stops being worth running.
	Deadline func(J) time.Time
	// Queued, if set, counts the jobs waiting (a gauge).
	Queued *metrics.Counter

	mu     sync.Mutex
	active int
	queue  []J
}

// Submit runs j now, queues it, or refuses it.
func (g *Gate[J]) Submit(j J) {
	g.mu.Lock()
	switch {
	case g.active < g.Max:
		g.active++
		g.mu.Unlock()
		go g.run(j)
		return
	case len(g.queue) < 4*g.Max:
		g.queue = append(g.queue, j)
		g.mu.Unlock()
		if g.Queued != nil {
			g.Queued.Inc()
		}
		return
	}
	g.mu.Unlock()
	g.Refuse(j)
}

// run does j, then whatever waits, until the queue is empty.
func (g *Gate[J]) run(j J) {
	var zero J
	for {
		g.Run(j)
		g.mu.Lock()
		for {
			if len(g.queue) == 0 {
				g.active--
				g.mu.Unlock()
				return
			}
			j = g.queue[0]
			g.queue[0] = zero
			g.queue = g.queue[1:]
			if g.Queued != nil {
				g.Queued.Dec()
			}
			if time.Now().Before(g.Deadline(j)) {
				break
			}
			g.mu.Unlock()
			g.Refuse(j) // waited past its deadline
			g.mu.Lock()
		}
		g.mu.Unlock()
	}
}
