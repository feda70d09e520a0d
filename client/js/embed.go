// Package meetpointjs holds meetpoint's JavaScript client (meetpoint.js, an
// ES module for browsers and Node, with TypeScript declarations in
// meetpoint.d.ts) so that a relay can serve it at /meetpoint.js. The same
// files are the npm package "meetpoint" (package.json beside them).
package meetpointjs

import _ "embed"

// Module is meetpoint.js, the ES module.
//
//go:embed meetpoint.js
var Module []byte

// Types is meetpoint.d.ts, the module's TypeScript declarations.
//
//go:embed meetpoint.d.ts
var Types []byte

// PackageJSON is the npm package manifest (its version is the client's).
//
//go:embed package.json
var PackageJSON []byte
