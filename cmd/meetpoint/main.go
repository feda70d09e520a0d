// Command meetpoint is a rendezvous relay wire-compatible with
// nymea-remoteproxy, and a client for it.
//
//	meetpoint serve   [flags]   run the relay
//	meetpoint client  [flags]   connect to a partner, like nc
//	meetpoint token   [flags]   mint an HMAC or one-time token, or generate a key
//	meetpoint monitor [flags]   live view of a running relay
//	meetpoint bench   <scenario> [flags]   benchmark a relay against reference peers
//	meetpoint version           print the version
//	meetpoint help [command]    show usage
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

const usage = `usage: meetpoint <command> [flags]

commands:
  serve     run the relay
  client    connect to a partner through a relay (stdin/stdout, like nc)
  token     mint a token: HMAC (--key FILE, --ttl, --id) or one-time into Redis
            (--redis URL, --user, --ttl); or write a new key (--gen-key FILE) for
            HMAC tokens (--auth hmac:), the admin API (--admin-key-file) or a
            fleet's mesh (--mesh-key-file)
  monitor   live view of a running relay (--socket PATH, the relay's --monitor)
  bench     benchmark a relay side by side with reference peers (quick, full, or one scenario)
  version   print the version
  help      show usage; "meetpoint help <command>" lists its flags
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return runServe(rest, stdin, stdout, stderr)
	case "client":
		return runClient(rest, stdin, stdout, stderr)
	case "token":
		return runToken(rest, stdout, stderr)
	case "monitor":
		return runMonitor(rest, stdout, stderr)
	case "bench":
		return benchMain(rest)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "meetpoint", version)
		return 0
	case "help", "-h", "-help", "--help":
		return runHelp(rest, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "meetpoint: unknown command %q (see \"meetpoint help\")\n", cmd)
		return 2
	}
}

// runHelp prints the usage, or a command's flags.
func runHelp(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stdout, usage)
		return 0
	}
	var fs *flag.FlagSet
	switch args[0] {
	case "serve":
		fs, _ = serveFlags()
	case "client":
		fs, _ = clientFlags()
	case "token":
		fs, _ = tokenFlags()
	case "monitor":
		fs, _ = monitorFlags()
	case "bench":
		return benchMain([]string{"-h"})
	case "version", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "meetpoint: unknown command %q\n", args[0])
		return 2
	}
	printFlags(fs, stdout)
	return 0
}

// printFlags writes a command's usage line and flags to w.
func printFlags(fs *flag.FlagSet, w io.Writer) {
	fmt.Fprintf(w, "usage: meetpoint %s [flags]\n\nflags:\n", fs.Name())
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// parseFlags parses args into fs. It returns the exit status to use when the
// command must stop: 0 after -h (usage printed to stdout), 2 after a bad flag
// (one error line printed to stderr), -1 to go on.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) int {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case err == nil && fs.NArg() > 0:
		fmt.Fprintf(stderr, "meetpoint %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	case err == nil:
		return -1
	case errors.Is(err, flag.ErrHelp):
		printFlags(fs, stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "meetpoint %s: %v\n", fs.Name(), err)
		return 2
	}
}
