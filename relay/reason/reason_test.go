package reason

import "testing"

// TestEveryReasonNamed: each reason has a metric label of its own (a
// reason added to the constants but not to names would be counted as "").
func TestEveryReasonNamed(t *testing.T) {
	seen := map[string]Reason{}
	for r := Reason(0); r < Count; r++ {
		n := r.String()
		if n == "" || n == "unknown" {
			t.Errorf("reason %d has no name", r)
		}
		if o, dup := seen[n]; dup {
			t.Errorf("reasons %d and %d are both %q", o, r, n)
		}
		seen[n] = r
	}
}
