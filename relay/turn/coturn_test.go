package turn

import (
	"context"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestCoturnClient: coturn's own test client (turnutils_uclient, Debian
// package coturn) allocates on meetpoint's TURN with TURN REST credentials
// derived from the shared secret (-W), in client-to-client mode (-y: its
// sessions' allocations relay to each other), and loses nothing. Skips
// without the binary unless MEETPOINT_REQUIRE_COTURN is set (CI).
func TestCoturnClient(t *testing.T) {
	bin, err := exec.LookPath("turnutils_uclient")
	if err != nil {
		if os.Getenv("MEETPOINT_REQUIRE_COTURN") != "" {
			t.Fatal("no turnutils_uclient and MEETPOINT_REQUIRE_COTURN is set (apt-get install coturn)")
		}
		t.Skip("no turnutils_uclient: apt-get install coturn to run coturn's client against meetpoint's TURN")
	}
	s, _ := start(t, Config{})
	port := strconv.Itoa(s.Addr().(*net.UDPAddr).Port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-y", "-c", "-W", string(secret), "-u", "uclient", "-p", port,
		"-n", "100", "-m", "4", "-l", "500", "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("turnutils_uclient: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Total lost packets (\d+) \(([0-9.]+)%\)`).FindSubmatch(out)
	sent := regexp.MustCompile(`Total send dropped (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no loss figure in turnutils_uclient's output:\n%s", out)
	}
	if string(m[1]) != "0" || (sent != nil && string(sent[1]) != "0") {
		t.Errorf("coturn's client lost packets through meetpoint's TURN:\n%s", out)
	}
	if s.allocsTotal.Get() < 4 {
		t.Errorf("%d allocations for 4 coturn sessions", s.allocsTotal.Get())
	}
	t.Logf("coturn client: %s, %d allocations", m[0], s.allocsTotal.Get())
}
