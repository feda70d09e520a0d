package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/meetpoint/meetpoint/relay/auth"
)

// tokenSettings is what the token flags fill in.
type tokenSettings struct {
	key    string
	ttl    time.Duration
	id     string
	genKey string
	redis  string
	user   string
}

// tokenFlags declares the token flags.
func tokenFlags() (*flag.FlagSet, *tokenSettings) {
	v := &tokenSettings{}
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.StringVar(&v.key, "key", "", "hex HMAC key `FILE` to sign with")
	fs.DurationVar(&v.ttl, "ttl", 30*time.Second, "token lifetime")
	fs.StringVar(&v.id, "id", "meetpoint", "token id (1 to 64 of A-Z a-z 0-9 _ -): the token's subject, the identity access rules see")
	fs.StringVar(&v.id, "subject", "meetpoint", "the same as --id")
	fs.StringVar(&v.redis, "redis", "", "mint a one-time token into this Redis (`URL` as for serve --auth redis://…) for --user, good for --ttl")
	fs.StringVar(&v.user, "user", "", "the one-time token's user (its identity on the relay)")
	fs.StringVar(&v.genKey, "gen-key", "", "write a new random 32-byte hex key to `FILE` (mode 0600, must not exist) and exit")
	return fs, v
}

// runToken mints a token, or writes a new key with --gen-key.
func runToken(args []string, stdout, stderr io.Writer) int {
	fs, v := tokenFlags()
	if code := parseFlags(fs, args, stdout, stderr); code >= 0 {
		return code
	}
	if v.genKey != "" {
		if err := writeKey(v.genKey); err != nil {
			fmt.Fprintf(stderr, "meetpoint token: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "meetpoint token: wrote a new key to %[1]s (mode 0600); use it as an HMAC token key (serve --auth hmac:%[1]s, mint with token --key %[1]s), "+
			"an admin key (--admin-key-file %[1]s) or a fleet's mesh key (--mesh-key-file %[1]s, the same file on every node)\n", v.genKey)
		return 0
	}
	if v.redis != "" {
		if err := auth.CheckMint(v.user, v.ttl); err != nil { // a usage error, whatever the Redis's state
			fmt.Fprintf(stderr, "meetpoint token: --%v\n", err)
			return 2
		}
		store, _, err := auth.ParseRedisAuth(v.redis)
		if err != nil {
			fmt.Fprintf(stderr, "meetpoint token: %v\n", err)
			return 2
		}
		defer store.Close()
		quietRedis(slog.New(slog.DiscardHandler)) // its retries would print a line each
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tok, _, err := auth.Mint(ctx, store, v.user, v.ttl)
		if err != nil {
			if pe := store.Ping(ctx); pe != nil {
				err = fmt.Errorf("%s unreachable: %v", store, pe)
			}
			fmt.Fprintf(stderr, "meetpoint token: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, tok)
		return 0
	}
	if v.key == "" {
		fmt.Fprintln(stderr, "meetpoint token: --key, --redis or --gen-key is required")
		return 2
	}
	key, err := auth.LoadHMACKey(v.key)
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint token: %v\n", err)
		return 1
	}
	tok, err := auth.MintHMAC(key, v.id, v.ttl, time.Now())
	if err != nil {
		fmt.Fprintf(stderr, "meetpoint token: %v\n", err)
		return 2
	}
	fmt.Fprintln(stdout, tok)
	return 0
}

// writeKey writes 32 random bytes, hex-encoded, to a new file of mode 0600.
func writeKey(path string) error {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(hex.EncodeToString(key[:]) + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
