package tunnelproxy

// The hub's hand-over, second look: a server whose socket cannot be
// registered, and the barrier's cleanup of a newcomer the hub does not
// hold yet.

import (
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meetpoint/meetpoint/client"
	"github.com/meetpoint/meetpoint/relay/reason"
	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// fakeSock is a loop.Sock on no descriptor (-1): EPOLL_CTL_ADD refuses it.
type fakeSock struct{ closes *atomic.Int32 }

func (fakeSock) Read([]byte) (int, error)    { return 0, io.EOF }
func (fakeSock) Write(p []byte) (int, error) { return len(p), nil }
func (fakeSock) Flush() error                { return nil }
func (s fakeSock) Close() error              { s.closes.Add(1); return nil }
func (fakeSock) Fd() int                     { return -1 }

// ender records the reasons it is told.
type ender struct{ ends chan reason.Reason }

func (e ender) End(r reason.Reason) { e.ends <- r }

// expectEnd waits for e's first end and checks its reason; who names the
// end in failures.
func (e ender) expectEnd(t *testing.T, want reason.Reason, who string) {
	t.Helper()
	select {
	case r := <-e.ends:
		if r != want {
			t.Errorf("%s closed for %v, want %v", who, r, want)
		}
	case <-time.After(relaytest.Patience):
		t.Fatalf("%s's ticket was not ended", who)
	}
}

// TestTPServerRegisterFailureGauge: a server whose socket the hub's loop
// cannot register (start: Register fails) is closed, and
// meetpoint_tunnelproxy_servers_active does not go below 0 (close counts
// a server out that start had not counted in yet).
func TestTPServerRegisterFailureGauge(t *testing.T) {
	s := server(t, nil)
	svc := serviceOf(s)
	su := client.NewUUID()
	h := svc.reg.addServer(svc, su, "dev")
	var closes atomic.Int32
	en := ender{make(chan reason.Reason, 4)}
	e := &tpEnd{h: h, sock: fakeSock{&closes}, fd: -1, tk: en, server: true, uuid: h.uuid, readable: true, writable: true}
	hubOf(t, svc, su, func(h *hub) { h.start(e, []byte("{}\n")) })
	en.expectEnd(t, reason.IOError, "the server")
	if g := relaytest.Metric(t, s, `meetpoint_tunnelproxy_servers_active`); g != 0 {
		t.Fatalf("meetpoint_tunnelproxy_servers_active = %v after a server whose Register failed, want 0", g)
	}
}

// TestTPContainExtra pins contain's cleanup of a newcomer the hub does not
// hold yet (extra): no panic the tests can inject reaches it (the
// hand-overs read what a newcomer sent only once the hub holds it), so
// TestTPFaultOnHandOver passes with contain(nil) in the Ready closures or
// the extra block deleted. Here the panic comes before the hub holds it.
func TestTPContainExtra(t *testing.T) {
	s := containing(t)
	svc := serviceOf(s)
	su, cu := client.NewUUID(), client.NewUUID()
	registerServer(t, s, su, false)
	h, res := svc.reg.addClient(cu, su)
	if h == nil {
		t.Fatal(res)
	}
	var closes atomic.Int32
	en := ender{make(chan reason.Reason, 4)}
	e := &tpEnd{h: h, sock: fakeSock{&closes}, fd: -1, tk: en, uuid: cu, readable: true, writable: true}
	hubOf(t, svc, su, func(h *hub) {
		defer h.contain(e)
		panic("before the hub holds the newcomer")
	})
	en.expectEnd(t, reason.Fault, "the newcomer")
	if n := closes.Load(); n != 1 {
		t.Errorf("newcomer's socket closed %d times", n)
	}
	if n := h.nclients.Load(); n != 0 {
		t.Errorf("hub's nclients = %d", n)
	}
	svc.reg.mu.Lock()
	held := svc.reg.uuids[cu]
	svc.reg.mu.Unlock()
	if held {
		t.Error("the newcomer's uuid is still registered")
	}
}
