// Package interop runs code meetpoint did not write against `meetpoint
// serve`, and the same tests against Disco's own server as a baseline:
// Disco's client (github.com/mosaicnetworks/disco/client), Babble's WAMP
// signalling client and Babble's WebRTC transport (both from
// github.com/mosaicnetworks/babble, which speak through the nexus WAMP
// client). It is a module of its own so that meetpoint's module depends on
// none of them; Disco, which the Go module proxy does not serve, comes
// from its unmodified source archive through a replace (./.disco, a link
// that scripts/interop-disco.sh makes to the unpacked archive in a cache
// outside the repository). Run it with `make interop-disco`
// (docs/discovery.md).
package interop
