package redisurl

import (
	"strings"
	"testing"
)

// TestParseErrorsHidePasswords: a URL Parse refuses for its scheme is
// named in the error without its credentials — neither the user:password@
// nor a password in the query (a Sentinel-managed primary's password=,
// whose Sentinels' own password is the user:password@). The error goes to
// stderr at start and to the log on SIGHUP.
func TestParseErrorsHidePasswords(t *testing.T) {
	for _, spec := range []string{
		"redis+sentinal://:SENTINELPW@10.0.0.5:26379?master_name=m&password=MASTERPW",  // a misspelt mode
		"reddis+sentinel://:SENTINELPW@10.0.0.5:26379?master_name=m&password=MASTERPW", // a misspelt scheme
		"reddis://10.0.0.5:6379/0?password=MASTERPW",
	} {
		_, err := Parse("fleet URL", spec)
		if err == nil {
			t.Fatalf("%s: accepted", spec)
		}
		if msg := err.Error(); strings.Contains(msg, "PW") {
			t.Errorf("the error quotes a password: %s", msg)
		} else if !strings.Contains(msg, "10.0.0.5") || !strings.HasPrefix(msg, "fleet URL") {
			t.Errorf("the error names neither the setting nor the server: %s", msg)
		}
	}
}
