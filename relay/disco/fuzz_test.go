package disco

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meetpoint/meetpoint/relay/relaytest"
)

// FuzzGroupBody: any body to POST /group and PATCH answers a status with a
// JSON body, never a panic, and a stored group always has its AppID.
func FuzzGroupBody(f *testing.F) {
	for _, s := range []string{babbleGroup, `{"AppID":"a","TTL":1}`, `{"AppID":""}`, `[]`, `{"Peers":[{"NetAddr":1}]}`, `{"AppID":"a","ID":"x"}`} {
		f.Add(s)
	}
	s, err := New(relaytest.New(f, nil), Config{MaxGroups: 50})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, body string) {
		w := httptest.NewRecorder()
		s.create(w, httptest.NewRequest("POST", "/group", strings.NewReader(body)))
		if w.Code != 201 && (w.Code < 400 || !strings.Contains(w.Body.String(), `"error"`)) {
			t.Fatalf("POST %q: %d %q", body, w.Code, w.Body.String())
		}
		st := s.st.(*localStore)
		st.mu.Lock()
		defer st.mu.Unlock()
		for id, r := range st.groups {
			if r.Group.AppID == "" || r.Group.ID != id {
				t.Fatalf("stored %+v under %q", r.Group, id)
			}
		}
	})
}

// FuzzLoadApps: any apps file loads or fails with an error, never a panic,
// and a loaded one has no empty id or short key.
func FuzzLoadApps(f *testing.F) {
	for _, s := range []string{"chat 0123456789abcdef\n", "# x\n\n a b c\n", "a 0123456789abcdef\na 0123456789abcdef"} {
		f.Add(s)
	}
	p := filepath.Join(f.TempDir(), "apps")
	f.Fuzz(func(t *testing.T, content string) {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		apps, err := LoadApps(p)
		if err != nil {
			return
		}
		for id, key := range apps {
			if id == "" || len(key) < 16 {
				t.Fatalf("loaded %q → %q", id, key)
			}
		}
	})
}
