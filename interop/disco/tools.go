//go:build tools

package interop

// Babble's own binaries, which scripts/babble-demo.sh builds from this
// module (so their versions are the ones go.sum pins).
import (
	_ "github.com/mosaicnetworks/babble/cmd/babble"
	_ "github.com/mosaicnetworks/babble/cmd/dummy"
)
