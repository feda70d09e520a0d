package bench

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseCPUs(t *testing.T) {
	set, err := parseCPUs("0")
	if err != nil || !set.IsSet(0) || set.Count() != 1 {
		t.Fatalf("parseCPUs(0) = %v, %v", set, err)
	}
	for _, bad := range []string{"", "x", "1-0", "-1", "0,", "0-", "1023"} {
		if _, err := parseCPUs(bad); err == nil {
			t.Errorf("parseCPUs(%q): no error", bad)
		}
	}
}

// allowed is the Cpus_allowed_list line of a /proc status file.
func allowed(t *testing.T, status string) string {
	t.Helper()
	b, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s: no Cpus_allowed_list", status)
	return ""
}

// TestPinCommand: a pinned command runs on the list, as its own program.
func TestPinCommand(t *testing.T) {
	if _, err := exec.LookPath("taskset"); err != nil {
		t.Skip("no taskset")
	}
	cmd := exec.Command("sh", "-c", `grep Cpus_allowed_list /proc/self/status; echo "$0"`)
	if err := pinCommand(cmd, "0"); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); len(got) != 3 || got[1] != "0" || !strings.HasSuffix(got[2], "sh") {
		t.Fatalf("pinned sh printed %q", out)
	}
	plain := exec.Command("true")
	if err := pinCommand(plain, ""); err != nil || plain.Args[0] != "true" {
		t.Fatalf("empty list changed the command: %v %v", plain.Args, err)
	}
}

// TestPinRun: the harness's threads go to ClientCPUs and come back; a
// relay that would share the harness's process is refused PeerCPUs.
func TestPinRun(t *testing.T) {
	var was unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		t.Fatal(err)
	}
	want := allowed(t, "/proc/self/status")
	unpin, err := pinRun(&Options{ClientCPUs: "0"})
	if err != nil {
		t.Fatal(err)
	}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, tk := range tasks {
		if got := allowed(t, "/proc/self/task/"+tk.Name()+"/status"); got != "0" {
			t.Errorf("thread %s on %s while pinned", tk.Name(), got)
		}
	}
	unpin()
	if got := allowed(t, "/proc/self/status"); got != want {
		t.Errorf("after unpin: %s, want %s", got, want)
	}
	if _, err := exec.LookPath("taskset"); err != nil {
		return
	}
	for _, o := range []Options{
		{PeerCPUs: "0"}, // the relay in process
		{PeerCPUs: "0", SpawnRelay: true, Transports: []string{"tls"}}, // tls relays in process
		{PeerCPUs: "0", SpawnRelay: true, Fleet: "local"},              // fleet relays in process
	} {
		if _, err := pinRun(&o); err == nil {
			t.Errorf("pinRun(%+v): no error", o)
		}
	}
	if _, err := pinRun(&Options{PeerCPUs: "0", SpawnRelay: true}); err != nil {
		t.Errorf("spawned relay: %v", err)
	}
	if _, err := pinRun(&Options{PeerCPUs: "0", Peers: []string{"haproxy"}}); err != nil {
		t.Errorf("no meetpoint peer: %v", err)
	}
}

// TestLatencyPinned: a latency run with the forwarders and the harness
// pinned starts the spawned relay under taskset and says so in its notes.
func TestLatencyPinned(t *testing.T) {
	if _, err := exec.LookPath("taskset"); err != nil {
		t.Skip("no taskset")
	}
	o := tiny(t, "latency")
	o.Peers, o.Transports, o.SpawnRelay = []string{"meetpoint"}, []string{"tcp"}, true
	o.PeerCPUs, o.ClientCPUs = "0", "0"
	mk := o.ChildCommand
	var relayCmd *exec.Cmd
	o.ChildCommand = func(args []string) (*exec.Cmd, error) {
		cmd, err := mk(args)
		if args[0] == "relay" {
			relayCmd = cmd
		}
		return cmd, err
	}
	rep, tab := runTiny(t, o)
	wantRows(t, tab, "meetpoint tcp")
	if relayCmd == nil || len(relayCmd.Args) < 4 || !strings.HasSuffix(relayCmd.Args[0], "taskset") || relayCmd.Args[2] != "0" {
		t.Errorf("relay child not started under taskset -c 0: %v", relayCmd)
	}
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "CPUs: forwarders on 0 (taskset -c), the harness on 0") {
		t.Errorf("notes do not say where it ran: %q", rep.Notes)
	}
}
