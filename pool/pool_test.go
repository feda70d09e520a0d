package pool

import (
	"testing"
)

func TestBuffer(t *testing.T) {
	b := Get()
	if b.Len() != 0 {
		t.Fatalf("new buffer has %d bytes", b.Len())
	}
	b.WriteString("hello")
	Put(b)
	b = Get()
	if b.Len() != 0 {
		t.Fatalf("reused buffer has %d bytes", b.Len())
	}
	Put(b)
}

func TestChunkSize(t *testing.T) {
	c := GetChunk()
	if len(*c) != ChunkSize || cap(*c) != ChunkSize {
		t.Fatalf("len %d cap %d, want %d", len(*c), cap(*c), ChunkSize)
	}
	*c = (*c)[:10]
	PutChunk(c)
	for range 10 {
		c := GetChunk()
		if len(*c) != ChunkSize || cap(*c) != ChunkSize {
			t.Fatalf("reused: len %d cap %d, want %d", len(*c), cap(*c), ChunkSize)
		}
		PutChunk(c)
	}
}

func TestChunkForeignDropped(t *testing.T) {
	PutChunk(nil)
	small := make([]byte, 10)
	PutChunk(&small) // must not panic nor come back
	for range 100 {
		c := GetChunk()
		if c == &small {
			t.Fatal("a foreign slice came back from the pool")
		}
		PutChunk(c)
	}
}

func TestChunkReuse(t *testing.T) {
	// sync.Pool gives no guarantee (the goroutine may change P, the race
	// detector drops puts at random), so try a few times.
	for range 100 {
		c := GetChunk()
		PutChunk(c)
		if GetChunk() == c {
			return
		}
	}
	t.Fatal("a chunk put back never came back")
}

func TestChunkNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	PutChunk(GetChunk())
	if n := testing.AllocsPerRun(1000, func() { PutChunk(GetChunk()) }); n != 0 {
		t.Fatalf("%v allocations per Get/Put, want 0", n)
	}
}
