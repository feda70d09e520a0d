package pool

import (
	"sync"

	"github.com/valyala/bytebufferpool"
)

// bufs is the relay's own byte buffer pool, so that its size calibration
// follows the relay's messages only.
var bufs bytebufferpool.Pool

// Get returns an empty byte buffer. Return it with Put when done.
func Get() *bytebufferpool.ByteBuffer { return bufs.Get() }

// Put returns b to the pool. b must not be used afterwards.
func Put(b *bytebufferpool.ByteBuffer) { bufs.Put(b) }

// ChunkSize is the length and capacity of every chunk from GetChunk.
const ChunkSize = 64 << 10

var chunks = sync.Pool{New: func() any {
	b := make([]byte, ChunkSize)
	return &b
}}

// GetChunk returns a buffer whose length and capacity are both ChunkSize.
// Its contents are undefined. Return it with PutChunk when done.
//
// In steady state, when every chunk taken is put back, GetChunk and PutChunk
// allocate nothing: the pointer is what travels through the pool, not the
// slice header.
func GetChunk() *[]byte { return chunks.Get().(*[]byte) }

// PutChunk returns a chunk from GetChunk to the pool, restoring its length to
// ChunkSize. A nil pointer or a slice of another capacity is dropped. The
// chunk must not be used afterwards.
func PutChunk(b *[]byte) {
	if b == nil || cap(*b) != ChunkSize {
		return
	}
	*b = (*b)[:ChunkSize]
	chunks.Put(b)
}
