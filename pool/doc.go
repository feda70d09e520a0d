// Package pool holds the relay's reusable buffers and pipes.
package pool
