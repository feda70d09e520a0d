package relaytest

import (
	"strings"
	"testing"
)

// CheckMetrics fails t unless body is valid Prometheus text with metadata:
// each family's # HELP and # TYPE once, before its samples, the samples of
// a family together, every meetpoint_ family with help text, *_active
// families gauges and *_total ones counters. It returns each family's type.
func CheckMetrics(t testing.TB, body string) (typeOf map[string]string) {
	t.Helper()
	typeOf = map[string]string{}
	help := map[string]string{}
	done := map[string]bool{} // families whose samples are over
	cur := ""
	for i, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "# HELP "):
			f := strings.SplitN(line[len("# HELP "):], " ", 2)
			if _, dup := help[f[0]]; dup {
				t.Fatalf("line %d: second HELP for %s", i+1, f[0])
			}
			help[f[0]] = ""
			if len(f) == 2 {
				help[f[0]] = f[1]
			}
		case strings.HasPrefix(line, "# TYPE "):
			f := strings.Fields(line)
			if len(f) != 4 || typeOf[f[2]] != "" {
				t.Fatalf("line %d: bad or second TYPE: %q", i+1, line)
			}
			switch f[3] {
			case "counter", "gauge", "histogram", "summary", "untyped":
			default:
				t.Fatalf("line %d: type %q", i+1, f[3])
			}
			typeOf[f[2]] = f[3]
			if cur != "" {
				done[cur] = true
			}
			cur = f[2]
		case strings.HasPrefix(line, "#") || line == "":
			t.Fatalf("line %d: unexpected %q", i+1, line)
		default:
			name := line[:strings.IndexAny(line, "{ ")]
			fam := name
			if typeOf[fam] == "" {
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if base := strings.TrimSuffix(name, suf); base != name && (typeOf[base] == "histogram" || typeOf[base] == "summary") {
						fam = base
					}
				}
			}
			if typeOf[fam] == "" || fam != cur || done[fam] {
				t.Fatalf("line %d: sample of %s outside its family's block (TYPE %q, current %s)", i+1, name, typeOf[fam], cur)
			}
		}
	}
	for fam, typ := range typeOf {
		if !strings.HasPrefix(fam, "meetpoint_") {
			continue
		}
		if help[fam] == "" {
			t.Errorf("%s has no help text", fam)
		}
		if strings.HasSuffix(fam, "_active") && typ != "gauge" {
			t.Errorf("%s is %s, want gauge", fam, typ)
		}
		if strings.HasSuffix(fam, "_total") && typ != "counter" {
			t.Errorf("%s is %s, want counter", fam, typ)
		}
	}
	return typeOf
}
