package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnit: scripts/meetpoint.service is valid for systemd
// (systemd-analyze verify, where installed) and keeps its confinement:
// these directives are the unit's promise to an operator.
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile("../../scripts/meetpoint.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{
		"NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"SystemCallFilter=@system-service", "SystemCallArchitectures=native",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "StateDirectory=meetpoint", "DynamicUser=yes",
		"--data-dir /var/lib/meetpoint", "StartLimitIntervalSec=0", "Restart=on-failure", "LimitCORE=0",
	} {
		if !strings.Contains(string(unit), "\n"+d) && !strings.Contains(string(unit), " "+d) {
			t.Errorf("the unit lost %q", d)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze (apt-get install systemd): unit not verified")
	}
	// verify checks that ExecStart's program exists: point it at this
	// test binary.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "meetpoint.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/meetpoint", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "meetpoint.service") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestAppArmorProfile: the AppArmor profile parses (apparmor_parser -QT:
// compile only, load nothing), where the parser is installed.
func TestAppArmorProfile(t *testing.T) {
	const profile = "../../scripts/apparmor/usr.local.bin.meetpoint"
	if _, err := os.Stat(profile); err != nil {
		t.Fatal(err)
	}
	parser, err := exec.LookPath("apparmor_parser")
	if err != nil {
		t.Skip("no apparmor_parser (apt-get install apparmor): profile not checked")
	}
	if out, err := exec.Command(parser, "-QT", profile).CombinedOutput(); err != nil {
		t.Fatalf("apparmor_parser -QT: %v\n%s", err, out)
	}
}
