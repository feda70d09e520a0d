package fleet

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestParseURL: each --fleet form gives its kind of client; other schemes
// and bad options are refused naming the setting, without the password.
func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		url  string
		want string // the client's type
	}{
		{"redis://127.0.0.1:6379/0", "*redis.Client"},
		{"rediss://user:secret@127.0.0.1:6380/2", "*redis.Client"},
		{"redis+cluster://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002", "*redis.ClusterClient"},
		{"redis+sentinel://127.0.0.1:26379?master_name=mymaster&addr=127.0.0.1:26380", "*redis.Client"},
	} {
		rdb, err := ParseURL(c.url)
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		if got := typeName(rdb); got != c.want {
			t.Errorf("%s: %s, want %s", c.url, got, c.want)
		}
		rdb.Close()
	}
	for _, bad := range []string{"http://127.0.0.1:6379", "redis+mesh://127.0.0.1:6379", "redis://u:hunter2@127.0.0.1:6379?bogus_option=1", "::"} {
		_, err := ParseURL(bad)
		if err == nil {
			t.Errorf("%s: accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), "fleet URL") || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: error %q (want it to name the fleet URL, never the password)", bad, err)
		}
	}
}

func typeName(c redis.UniversalClient) string {
	switch c.(type) {
	case *redis.ClusterClient:
		return "*redis.ClusterClient"
	case *redis.Client:
		return "*redis.Client"
	}
	return "other"
}
