package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"
)

// Configuration files. Precedence, highest first: command-line flags, the
// TOML file (--config), the nymea INI file (--nymea-config), the defaults.
//
// The TOML file uses the serve flag names as keys (every flag can be set):
//
//	listen = ["0.0.0.0:443", "[::]:443"]
//	name = "relay-eu-1"
//	inactive-timeout = "8s"
//	max-buffer = 65536
//
// Tables are allowed and join with "-": [tls] cert = "..." is tls-cert.

// setting is one value from a configuration file, in flag syntax.
type setting struct {
	flag   string   // the serve flag it sets
	values []string // one flag Set each (several for a repeatable flag)
	where  string   // where it came from, for errors: `config FILE: key`
}

// fileOnly are the flags a configuration file may not set.
var fileOnly = map[string]bool{"config": true, "nymea-config": true, "print-config": true}

// repeatable reports whether a flag takes several values (listen).
func repeatable(f *flag.Flag) bool {
	_, ok := f.Value.(*listFlag)
	return ok
}

// readTOMLConfig reads a TOML configuration file into settings for fs.
func readTOMLConfig(path string, fs *flag.FlagSet, stdin *stdinConfig) ([]setting, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = stdin.read()
		path = "(stdin)"
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var raw map[string]any
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if name := strings.ReplaceAll(pe.LastKey, ".", "-"); configOnly[name] {
				// The parser's message quotes what it read of the value.
				return nil, fmt.Errorf("config %s: line %d: %s: not a valid TOML value (not shown: key material; write it as a string)", path, pe.Position.Line, name)
			}
			return nil, fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("config %s: %v", path, err)
	}
	var out []setting
	spelt := map[string]string{} // setting → the key that set it
	for _, key := range md.Keys() {
		v, ok := lookupKey(raw, key)
		if !ok {
			continue
		}
		if _, isTable := v.(map[string]any); isTable {
			continue // its keys follow
		}
		name := strings.Join(key, "-")
		where := fmt.Sprintf("config %s: %s", path, name)
		// TOML refuses a key given twice, but tables make several keys of
		// one setting (tls-only, [tls] only): the later would win unseen.
		if first, twice := spelt[name]; twice {
			return nil, fmt.Errorf("%s: set twice, as %s and as %s", where, first, key)
		}
		spelt[name] = key.String()
		f := fs.Lookup(name)
		if f == nil || fileOnly[name] {
			return nil, fmt.Errorf("%s: unknown setting (the keys are the serve flag names, see \"meetpoint help serve\")", where)
		}
		s := setting{flag: name, where: where}
		if list, ok := v.([]any); ok {
			if !repeatable(f) {
				return nil, fmt.Errorf("%s: takes one value, not a list", where)
			}
			for _, e := range list {
				str, err := tomlScalar(e)
				if err != nil {
					return nil, fmt.Errorf("%s: %v", where, err)
				}
				s.values = append(s.values, str)
			}
		} else {
			str, err := tomlScalar(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", where, err)
			}
			s.values = []string{str}
		}
		out = append(out, s)
	}
	return out, nil
}

func lookupKey(m map[string]any, key toml.Key) (any, bool) {
	var cur any = m
	for _, k := range key {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = mm[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func tomlScalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64), nil
	case bool:
		return strconv.FormatBool(v), nil
	default:
		return "", fmt.Errorf("unsupported value %v (%T): use a string, number or boolean", v, v)
	}
}

// applySettings sets each setting's flag unless the command line set it.
// Later settings for the same flag replace earlier ones entirely.
func applySettings(fs *flag.FlagSet, explicit map[string]bool, ss []setting) error {
	last := make(map[string]int)
	for i, s := range ss {
		last[s.flag] = i
	}
	for i, s := range ss {
		if explicit[s.flag] || last[s.flag] != i {
			continue
		}
		f := fs.Lookup(s.flag)
		if f == nil {
			return fmt.Errorf("%s: unknown setting", s.where)
		}
		if lf, ok := f.Value.(*listFlag); ok {
			// The file's list replaces the default, an empty one too.
			lf.vals, lf.set = nil, true
		}
		for _, v := range s.values {
			if err := fs.Set(s.flag, v); err != nil {
				return fmt.Errorf("%s: invalid value %q%s", s.where, v, valueHint(f, err))
			}
		}
	}
	return nil
}

// valueHint explains a rejected value by the flag's type.
func valueHint(f *flag.Flag, err error) string {
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			return `: want a duration such as "30s" or "1m30s"`
		case bool:
			return ": want true or false"
		case int, int64, uint, uint64:
			return ": want an integer"
		case float64:
			return ": want a number"
		}
	}
	return ": " + err.Error()
}

// writeConfig prints the effective configuration of fs as TOML that
// --config reads back, after warnings (what a --nymea-config migration
// dropped or defaulted) as comments.
func writeConfig(w io.Writer, fs *flag.FlagSet, warnings []string) error {
	var buf bytes.Buffer
	buf.WriteString("# meetpoint serve: effective configuration (meetpoint serve --print-config).\n")
	buf.WriteString("# Use it as --config FILE; command-line flags override it.\n")
	if len(warnings) > 0 {
		buf.WriteString("#\n# Migrated from nymea-remoteproxy's configuration; check these:\n")
		for _, wn := range warnings {
			fmt.Fprintf(&buf, "# WARNING: %s\n", wn)
		}
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || fileOnly[f.Name] {
			return
		}
		var v any
		switch val := f.Value.(type) {
		case *listFlag:
			v = append([]string{}, val.vals...)
			if !val.set && len(val.vals) == 0 && val.def != nil {
				v = append([]string{}, val.def...) // what applies, not an empty list
			}
		case flag.Getter:
			switch g := val.Get().(type) {
			case time.Duration:
				v = g.String()
			case bool, string, int, int64, uint, uint64, float64:
				v = g
			default:
				v = f.Value.String()
			}
		default:
			v = f.Value.String()
		}
		if _, isBool := v.(bool); secretFlag(f.Name) && f.Value.String() != "" && !isBool { // a switch carries no secret
			v = "(redacted)"
		}
		switch val := v.(type) { // credentials in a URL (--fleet redis://:PASSWORD@…, a webhook's user:password@ or key)
		case string:
			v = hideCredentials(val)
		case []string:
			for i := range val {
				val[i] = hideCredentials(val[i])
			}
		}
		_, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&buf, "\n# %s\n", strings.ReplaceAll(usage, "\n", "\n# "))
		enc := toml.NewEncoder(&buf)
		err = enc.Encode(map[string]any{f.Name: v})
	})
	if err != nil {
		return err
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// urlPasswords finds the password of a URL's user:password@ in a value
// (its first group is what comes before it).
var urlPasswords = regexp.MustCompile(`(://[^/@:\s]*:)[^/@\s]*@`)

// hideCredentials writes xxxxx for the credentials a URL in a value
// carries (docs/security.md, "Secrets"): the password of its
// user:password@; every query value of a webhook's URL (its key, whatever
// its name); and in any other URL the query parameters named for a
// password, secret, token or key (a Redis URL's password=).
func hideCredentials(s string) string {
	s = urlPasswords.ReplaceAllString(s, "${1}xxxxx@")
	if !strings.Contains(s, "://") {
		return s
	}
	base, query, ok := strings.Cut(s, "?")
	if !ok {
		return s
	}
	query, frag, hasFrag := strings.Cut(query, "#")
	webhook := strings.HasPrefix(s, "webhook:")
	params := strings.Split(query, "&")
	for i, p := range params {
		name, _, hasValue := strings.Cut(p, "=")
		switch {
		case webhook && !hasValue && p != "":
			params[i] = "xxxxx"
		case hasValue && (webhook || secretParam(name)):
			params[i] = name + "=xxxxx"
		}
	}
	s = base + "?" + strings.Join(params, "&")
	if hasFrag {
		s += "#" + frag
	}
	return s
}

// hiddenArgs is a command line as the admin listener shows it
// (/debug/pprof/cmdline): each argument, or a flag's value after its
// "=", with the credentials of a URL in it written xxxxx
// (hideCredentials).
func hiddenArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if name, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(name, "-") {
			out[i] = name + "=" + hideCredentials(v)
		} else {
			out[i] = hideCredentials(a)
		}
	}
	return out
}

// secretParam reports whether a URL query parameter's name says it holds
// a credential.
func secretParam(name string) bool {
	name = strings.ToLower(name)
	for _, w := range []string{"password", "secret", "token", "key"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// maxStdinConfig bounds a configuration read from stdin.
const maxStdinConfig = 1 << 20

// stdinConfig is `--config -`: the configuration on standard input (a
// parent process writes it into a pipe and closes it), read once and kept
// for SIGHUP's re-parse.
type stdinConfig struct {
	r    io.Reader
	once sync.Once
	data []byte
	err  error
}

func (s *stdinConfig) read() ([]byte, error) {
	if s == nil || s.r == nil {
		return nil, errors.New("--config -: no standard input")
	}
	s.once.Do(func() {
		s.data, s.err = io.ReadAll(io.LimitReader(s.r, maxStdinConfig+1))
		if s.err == nil && len(s.data) > maxStdinConfig {
			s.data, s.err = nil, fmt.Errorf("--config -: more than %d bytes on stdin", maxStdinConfig)
		}
	})
	return s.data, s.err
}

// secretFlag names flags whose values must not be printed. A -file flag
// (turn-secret-file) names where a secret is, which is no secret.
func secretFlag(name string) bool {
	if configOnly[name] {
		return true
	}
	if strings.HasSuffix(name, "-file") {
		return false
	}
	for _, s := range []string{"token", "secret", "password"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// nymea-remoteproxy's INI configuration (/etc/nymea/nymea-remoteproxy.conf),
// as read by its ProxyConfiguration (QSettings, IniFormat). Keys meetpoint
// takes over:
//
//	[ProxyServer]  name, monitorSocket, jsonRpcTimeout, inactiveTimeout,
//	               aloneTimeout, authenticationTimeout (milliseconds)
//	[SSL]          enabled, certificate, certificateKey, certificateChain
//	[WebSocketServer] [TcpServer]                       host, port (1.x legacy API)
//	[WebSocketServerTunnelProxy] [TcpServerTunnelProxy] host, port
//
// meetpoint serves WebSocket and raw TCP on every listen address, so each
// host:port pair becomes one listen address. Keys with no meetpoint
// equivalent (log files, AWS, unix socket servers) produce warnings.

// nymeaListenSections are the server sections, in listen order.
var nymeaListenSections = []struct{ section, defHost, defPort string }{
	{"WebSocketServer", "127.0.0.1", "1212"},
	{"TcpServer", "127.0.0.1", "1213"},
	{"WebSocketServerTunnelProxy", "127.0.0.1", "2212"},
	{"TcpServerTunnelProxy", "127.0.0.1", "2213"},
}

// readNymeaConfig converts a nymea-remoteproxy configuration file into
// settings, and warnings for what it does not carry over.
func readNymeaConfig(path string, fs *flag.FlagSet) ([]setting, []string, error) {
	ini, err := parseINI(path)
	if err != nil {
		return nil, nil, fmt.Errorf("nymea-config: %w", err)
	}
	var warn []string
	var ss []setting
	add := func(flagName, section, key string, values ...string) {
		ss = append(ss, setting{flag: flagName, values: values,
			where: fmt.Sprintf("nymea-config %s: [%s] %s", path, section, key)})
	}
	where := func(section, key string) string {
		return fmt.Sprintf("nymea-config %s: [%s] %s", path, section, key)
	}

	if v, ok := ini.get("ProxyServer", "name"); ok && v != "" {
		add("name", "ProxyServer", "name", v)
	}
	if v, ok := ini.get("ProxyServer", "monitorSocket"); ok && v != "" {
		add("monitor", "ProxyServer", "monitorSocket", v)
	}
	for _, t := range []struct{ key, flag string }{
		{"inactiveTimeout", "inactive-timeout"},
		{"aloneTimeout", "alone-timeout"},
		{"authenticationTimeout", "auth-timeout"},
		{"jsonRpcTimeout", "rpc-timeout"},
	} {
		v, ok := ini.get("ProxyServer", t.key)
		if !ok {
			continue
		}
		ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		// Beyond math.MaxInt64/1e6 ms (~292 years) the conversion to a
		// Duration would wrap around to a tiny or negative timeout.
		if err != nil || ms <= 0 || ms > math.MaxInt64/int64(time.Millisecond) {
			return nil, nil, fmt.Errorf("%s: invalid value %q: want a positive number of milliseconds", where("ProxyServer", t.key), v)
		}
		add(t.flag, "ProxyServer", t.key, (time.Duration(ms) * time.Millisecond).String())
	}
	var logKeys []string
	for _, k := range []string{"writeLogs", "logFile", "logEngineEnabled"} {
		if _, ok := ini.get("ProxyServer", k); ok {
			logKeys = append(logKeys, k)
		}
	}
	if len(logKeys) > 0 {
		warn = append(warn, fmt.Sprintf("[ProxyServer] %s ignored: meetpoint logs to stderr (the journal under systemd), see log-format; statistics are in /metrics",
			strings.Join(logKeys, ", ")))
	}

	// TLS: nymea's default for [SSL] enabled is true.
	sslOn := true
	if v, ok := ini.get("SSL", "enabled"); ok {
		b, err := parseQtBool(v)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: invalid value %q: want true or false", where("SSL", "enabled"), v)
		}
		sslOn = b
	}
	if !ini.has("SSL") {
		warn = append(warn, "no [SSL] section: nymea would serve TLS with the snakeoil certificate; meetpoint serves plaintext unless tls-cert and tls-key (or tls) are set")
	}
	if sslOn && ini.has("SSL") {
		cert, _ := ini.get("SSL", "certificate")
		key, _ := ini.get("SSL", "certificateKey")
		if cert == "" || key == "" {
			return nil, nil, fmt.Errorf("%s: TLS is enabled but certificate or certificateKey is empty", where("SSL", "certificate"))
		}
		add("tls-cert", "SSL", "certificate", cert)
		add("tls-key", "SSL", "certificateKey", key)
		if chain, _ := ini.get("SSL", "certificateChain"); chain != "" && chain != cert {
			if fs.Lookup("tls-chain") != nil {
				add("tls-chain", "SSL", "certificateChain", chain)
			} else {
				warn = append(warn, fmt.Sprintf("[SSL] certificateChain %s not loaded: append its certificates to the certificate file %s", chain, cert))
			}
		}
	}

	// Listen addresses.
	var listen []string
	seen := map[string]bool{}
	anyServer := false
	for _, sec := range nymeaListenSections {
		if ini.has(sec.section) {
			anyServer = true
		}
	}
	for i, sec := range nymeaListenSections {
		if !ini.has(sec.section) && (anyServer || i >= 2) {
			// Without any server section, nymea 1.x listens on its legacy
			// defaults (WebSocket 1212, TCP 1213).
			continue
		}
		host, _ := ini.get(sec.section, "host")
		if host == "" {
			host = sec.defHost
		}
		port, ok := ini.get(sec.section, "port")
		if !ok || port == "" {
			port = sec.defPort
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return nil, nil, fmt.Errorf("%s: invalid value %q: want a port number", where(sec.section, "port"), port)
		}
		if ip := net.ParseIP(host); ip == nil && host != "localhost" {
			return nil, nil, fmt.Errorf("%s: invalid value %q: want an IP address", where(sec.section, "host"), host)
		}
		addr := net.JoinHostPort(host, port)
		if !seen[addr] {
			seen[addr] = true
			listen = append(listen, addr)
		}
	}
	if len(listen) > 0 {
		ss = append(ss, setting{flag: "listen", values: listen, where: fmt.Sprintf("nymea-config %s: [*Server*] host/port", path)})
	}
	for _, sec := range []string{"UnixSocketServer", "UnixSocketServerTunnelProxy"} {
		if ini.has(sec) {
			warn = append(warn, fmt.Sprintf("[%s] ignored: meetpoint serves TCP and WebSocket on the listen addresses only", sec))
		}
	}
	if ini.has("AWS") {
		warn = append(warn, "[AWS] ignored: meetpoint asks no AWS Lambda; choose an authenticator with auth: webhook:URL (your own HTTP service answers the same question), file:PATH or hmac:KEYFILE")
	}
	return ss, warn, nil
}

// parseQtBool reads a QSettings boolean.
func parseQtBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "1", "yes", "on":
		return true, nil
	case "false", "0", "no", "off", "":
		return false, nil
	}
	return false, errors.New("not a boolean")
}

// iniFile is a parsed INI file: section → key → value. Keys outside any
// section are in "General" (as QSettings puts them).
type iniFile map[string]map[string]string

func (f iniFile) get(section, key string) (string, bool) {
	v, ok := f[section][key]
	return v, ok
}

func (f iniFile) has(section string) bool {
	_, ok := f[section]
	return ok
}

// parseINI reads the subset of QSettings' INI format nymea's files use:
// [Section] headers, key=value lines, ';' and '#' comments, values
// optionally in double quotes (with backslash escapes).
func parseINI(path string) (iniFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	out := iniFile{}
	section := "General"
	sc := bufio.NewScanner(fh)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if n == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		switch {
		case line == "" || line[0] == ';' || line[0] == '#':
			continue
		case line[0] == '[':
			end := strings.IndexByte(line, ']')
			if end < 0 {
				return nil, fmt.Errorf("%s:%d: unterminated section header", path, n)
			}
			section = strings.TrimSpace(line[1:end])
			if out[section] == nil {
				out[section] = map[string]string{}
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want key=value, got %q", path, n, line)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			if uq, err := strconv.Unquote(val); err == nil {
				val = uq
			} else {
				val = val[1 : len(val)-1]
			}
		}
		if out[section] == nil {
			out[section] = map[string]string{}
		}
		out[section][key] = val
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}
