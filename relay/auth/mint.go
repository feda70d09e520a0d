package auth

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/meetpoint/meetpoint/relay"
)

// MintHandler serves POST /v1/tokens on the relay's port for backends that
// do not speak Redis: with "Authorization: Bearer ADMINKEY" and a body
// {"user": "alice", "ttl": "20s"} (ttl optional: the authenticator's max
// age, at most MaxMintTTL) it mints a one-time token into o's store and answers 201
// {"token": T, "expires": UNIX_SECONDS}. A wrong or missing key is 401,
// a bad body 400 (413 over --http-max-body, 408 too slow), the store
// failing 503. The key is compared in constant
// time; tokens are never logged.
func MintHandler(o *OneTime, adminKey string) http.Handler {
	return relay.RequireBearer(adminKey, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reply := func(status int, v any) { relay.WriteJSON(w, status, v) }
		var req struct {
			User string `json:"user"`
			TTL  string `json:"ttl"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			if st := relay.BodyStatus(err); st != http.StatusBadRequest { // over --http-max-body, or too slow
				reply(st, map[string]string{"error": "body: " + err.Error()})
				return
			}
			reply(http.StatusBadRequest, map[string]string{"error": "body: want {\"user\": NAME, \"ttl\": \"20s\"}"})
			return
		}
		ttl := min(o.MaxAge(), MaxMintTTL)
		if req.TTL != "" {
			d, err := time.ParseDuration(req.TTL)
			if err != nil {
				reply(http.StatusBadRequest, map[string]string{"error": "ttl: want a duration such as \"20s\""})
				return
			}
			ttl = d
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		tok, exp, err := Mint(ctx, o.Store(), req.User, ttl)
		switch {
		case err != nil && CheckMint(req.User, ttl) != nil:
			reply(http.StatusBadRequest, map[string]string{"error": err.Error()})
		case err != nil:
			reply(http.StatusServiceUnavailable, map[string]string{"error": "the token store is unavailable"})
		default:
			reply(http.StatusCreated, map[string]any{"token": tok, "expires": exp.Unix()})
		}
	}))
}
