package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/meetpoint/meetpoint/client"
)

// clientTLS builds the TLS configuration for wss:// and tls:// from --ca,
// --fingerprint and --insecure; nil means the system roots.
func clientTLS(caFile, fingerprint string, insecure bool, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && fingerprint == "" && !insecure && certFile == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	if caFile != "" {
		pemData, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("ca: no certificate in %s", caFile)
		}
	}
	if fingerprint != "" {
		want, err := hex.DecodeString(strings.ReplaceAll(fingerprint, ":", ""))
		if err != nil || len(want) != sha256.Size {
			return nil, errors.New("fingerprint: want 64 hex digits (SHA-256)")
		}
		// The pin replaces chain verification: a self-signed relay works.
		conf.InsecureSkipVerify = true
		conf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) > 0 {
				sum := sha256.Sum256(raw[0])
				if string(sum[:]) == string(want) {
					return nil
				}
			}
			return errors.New("relay certificate does not match --fingerprint")
		}
	}
	if insecure {
		conf.InsecureSkipVerify = true
	}
	return conf, nil
}

// runTunnelProxy runs the TunnelProxy modes of `meetpoint client`:
//
//	--serve ADDR [--server-uuid U]  register as server U, bridge clients to ADDR
//	--server-uuid U --listen ADDR   carry each local connection to server U
//	--server-uuid U                 one client of U on stdin/stdout
func runTunnelProxy(ctx context.Context, v *clientSettings, stdin io.Reader, stdout, stderr io.Writer) int {
	o := client.TPOptions{URL: v.opts.URL, UUID: v.opts.UUID, Name: v.opts.Name, ServerUUID: v.serverUUID,
		Timeout: v.opts.Timeout, TLSConfig: v.opts.TLSConfig, Verbose: v.opts.Verbose}
	switch {
	case v.serve != "":
		o.UUID = v.serverUUID
		if o.UUID == "" {
			o.UUID = client.NewUUID()
		}
		srv, err := client.RegisterTPServer(ctx, o)
		if err != nil {
			return tpFail(stderr, err, v)
		}
		context.AfterFunc(ctx, func() { srv.Close() })
		fmt.Fprintf(stderr, "meetpoint: registered as TunnelProxy server %s, bridging clients to %s\n", o.UUID, v.serve)
		err = srv.Bridge(v.serve)
		if ctx.Err() != nil {
			return 130
		}
		fmt.Fprintf(stderr, "meetpoint: relay connection lost: %v\n", err)
		return 1
	case v.listen != "":
		ln, err := net.Listen("tcp", v.listen)
		if err != nil {
			fmt.Fprintf(stderr, "meetpoint: listen: %v\n", err)
			return 1
		}
		context.AfterFunc(ctx, func() { ln.Close() })
		fmt.Fprintf(stderr, "meetpoint: carrying connections to %s to TunnelProxy server %s\n", ln.Addr(), v.serverUUID)
		var mu sync.Mutex
		o.Refused = func(local net.Addr, err error) {
			var te *client.TPError
			hint := ""
			if errors.As(err, &te) && te.Value == "TunnelProxyErrorServerNotFound" {
				hint = " (no server is registered with that uuid: start it with --serve first)"
			}
			mu.Lock()
			fmt.Fprintf(stderr, "meetpoint: connection from %s refused: %v%s\n", local, err, hint)
			mu.Unlock()
		}
		if err := client.ServeTPClients(ctx, ln, o); err != nil {
			fmt.Fprintf(stderr, "meetpoint: %v\n", err)
			return 1
		}
		return 130
	default:
		tun, err := client.DialTPClient(ctx, o)
		if err != nil {
			return tpFail(stderr, err, v)
		}
		defer tun.Close()
		interrupted := context.AfterFunc(ctx, func() { tun.Close() }) // SIGINT, SIGTERM
		defer interrupted()
		go io.Copy(tun, stdin)
		_, err = io.Copy(stdout, tun)
		switch {
		case ctx.Err() != nil:
			fmt.Fprintln(stderr, "meetpoint: interrupted")
			return 130
		case err != nil:
			fmt.Fprintf(stderr, "meetpoint: server lost: %v\n", err)
			return 1
		}
		return 0
	}
}

func tpFail(stderr io.Writer, err error, v *clientSettings) int {
	var te *client.TPError
	if errors.As(err, &te) {
		fmt.Fprintf(stderr, "meetpoint: tunnelproxy: %s\n", te.Value)
		return 1
	}
	return clientFail(stderr, err, v.opts, false)
}
