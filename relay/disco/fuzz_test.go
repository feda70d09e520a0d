package disco

import (
	"encoding/json"
	"fmt"
	"net/http"
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

// FuzzGroupsListQuery: any query to GET /groups (limit, after, app-id)
// answers 200 with a JSON object of at most the page's groups or an error
// with a JSON body, never a panic; a Link names a next page only when
// there is one.
func FuzzGroupsListQuery(f *testing.F) {
	for _, q := range []string{"", "limit=2", "limit=0", "limit=1001", "after=zzz", "app-id=a&limit=1&after=", "limit=-1&after=%00", "app-id=chat"} {
		f.Add(q)
	}
	s, err := New(relaytest.New(f, nil), Config{Apps: map[string]string{"chat": "chat-key-0123456789abcdef"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	for i := range 5 {
		w := httptest.NewRecorder()
		s.create(w, httptest.NewRequest("POST", "/group", strings.NewReader(fmt.Sprintf(`{"AppID":"a","Name":"g%d"}`, i))))
	}
	f.Fuzz(func(t *testing.T, q string) {
		r, err := http.NewRequest("GET", "/groups?"+q, nil)
		if err != nil {
			return
		}
		w := httptest.NewRecorder()
		s.list(w, r)
		var page map[string]any
		switch {
		case w.Code == 200 && json.Unmarshal(w.Body.Bytes(), &page) == nil && len(page) <= MaxPageSize:
			if w.Header().Get("Link") != "" && len(page) == 0 {
				t.Fatalf("%q: a Link after an empty page", q)
			}
		case w.Code >= 400 && strings.Contains(w.Body.String(), `"error"`):
		default:
			t.Fatalf("%q: %d %q", q, w.Code, w.Body.String())
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
