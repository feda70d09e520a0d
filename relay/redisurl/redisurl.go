// Package redisurl reads the Redis URLs of meetpoint's flags (--fleet,
// --auth redis://…) into go-redis universal clients: one server, a Redis
// Cluster or a Sentinel-managed primary. It is a leaf: the engine's
// subsystems share it without importing each other.
package redisurl

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Parse reads a Redis URL into a client:
//
//	redis://[USER:PASSWORD@]HOST:PORT/DB        one server (rediss:// for TLS)
//	redis+cluster://HOST:PORT?addr=HOST2:PORT2  Redis Cluster, seed nodes
//	redis+sentinel://HOST:PORT?master_name=M&addr=HOST2:PORT2
//	                                            a Sentinel-managed primary
//
// (rediss+cluster://, rediss+sentinel:// for TLS). Other query parameters
// are go-redis options in snake case (dial_timeout=2s, pool_size=20).
// Timeouts not given are 2 s. what names the flag in errors ("fleet URL"),
// which name the URL as Describe does: a password may be in its query
// (a Sentinel-managed primary's password=) as well as its user:password@.
func Parse(what, spec string) (redis.UniversalClient, error) {
	u, err := url.Parse(spec)
	if err != nil {
		return nil, NotAURL(what, err)
	}
	base, mode, _ := strings.Cut(u.Scheme, "+")
	if base != "redis" && base != "rediss" {
		return nil, fmt.Errorf("%s %q: want redis://, rediss://, redis+cluster:// or redis+sentinel://", what, Describe(spec))
	}
	u.Scheme = base
	plain := u.String()
	timeouts := func(d, r, w *time.Duration) {
		for _, p := range []*time.Duration{d, r, w} {
			if *p == 0 {
				*p = 2 * time.Second
			}
		}
	}
	switch mode {
	case "":
		opt, err := redis.ParseURL(plain)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", what, err)
		}
		timeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
		return redis.NewClient(opt), nil
	case "cluster":
		opt, err := redis.ParseClusterURL(plain)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", what, err)
		}
		timeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
		return redis.NewClusterClient(opt), nil
	case "sentinel":
		opt, err := redis.ParseFailoverURL(plain)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", what, err)
		}
		timeouts(&opt.DialTimeout, &opt.ReadTimeout, &opt.WriteTimeout)
		return redis.NewFailoverClient(opt), nil
	}
	return nil, fmt.Errorf("%s %q: unknown mode %q (cluster or sentinel)", what, Describe(spec), mode)
}

// Describe names the Redis of spec for logs and /readyz: its scheme and
// first address, never a password or query.
func Describe(spec string) string {
	u, err := url.Parse(spec)
	if err != nil {
		return "an unparsable URL"
	}
	return u.Scheme + "://" + u.Host
}

// NotAURL is what's error for a spec url.Parse refused with err, without
// the spec: url.Error quotes it whole, password included, and its inner
// message the piece it choked on (invalid port ":PASSW" after host, for
// a password holding a '/'), so only the words before that quote stay.
func NotAURL(what string, err error) error {
	if ue, ok := err.(*url.Error); ok {
		err = ue.Err
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '"'); i >= 0 {
		msg = strings.TrimSpace(msg[:i]) + " (not quoted: it may be part of a password; percent-encode / # ? % in one)"
	}
	return fmt.Errorf("%s: not a URL: %s", what, msg)
}
