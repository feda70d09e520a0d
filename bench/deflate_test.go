package bench

// The measurement behind declining permessage-deflate (docs/protocol.md,
// docs/BENCHMARKS.md): what one compression context costs in memory, and
// how fast one core compresses and inflates, next to what a tunnel costs
// today. Run:
//
//	go test -run '^$' -bench Deflate -benchmem ./bench/

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

// uiMessage is a remote-UI-like JSON message (a state update of a device
// list), about 16 KiB, deterministic for a seed.
func uiMessage(seed uint64) []byte {
	r := rand.New(rand.NewPCG(1, seed))
	var b bytes.Buffer
	b.WriteString(`{"notification":"Integrations.StateChanged","params":{"things":[`)
	for i := 0; b.Len() < 16<<10; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"%08x-%04x-4%03x-8%03x-%012x","name":"Sensor %d","state":{"temperature":%.2f,"humidity":%d,"battery":%d,"online":%v}}`,
			r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xfff, r.Uint32()&0xfff, r.Uint64()&0xffffffffffff,
			i, 15+r.Float64()*10, r.IntN(100), r.IntN(100), r.IntN(2) == 0)
	}
	b.WriteString(`]}}`)
	return b.Bytes()
}

// BenchmarkDeflateContext: the memory one end's compression context takes
// (a writer for what the relay sends, a reader for what it receives), per
// level. B/op is the cost per WebSocket end with context takeover, which
// a relay would hold for as long as the tunnel lives.
func BenchmarkDeflateContext(b *testing.B) {
	msg := uiMessage(0)
	for _, lv := range []struct {
		name  string
		level int
	}{{"huffman-only", flate.HuffmanOnly}, {"best-speed", flate.BestSpeed}, {"default", flate.DefaultCompression}} {
		b.Run("writer/"+lv.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				w, _ := flate.NewWriter(io.Discard, lv.level)
				_, _ = w.Write(msg)
				_ = w.Flush()
			}
		})
	}
	var comp bytes.Buffer
	w, _ := flate.NewWriter(&comp, flate.BestSpeed)
	_, _ = w.Write(msg)
	_ = w.Flush()
	b.Run("reader", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := flate.NewReader(bytes.NewReader(comp.Bytes()))
			_, _ = io.Copy(io.Discard, r)
		}
	})
}

// BenchmarkDeflateThroughput: MB/s of one core compressing and inflating
// 16 KiB messages with a kept context (uncompressed bytes per second;
// ratio = compressed / uncompressed).
func BenchmarkDeflateThroughput(b *testing.B) {
	// 32 different messages of each kind, sent in turn: repeating one
	// message would let the kept window find it whole every time.
	var ui, rnd [][]byte
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 32 {
		ui = append(ui, uiMessage(uint64(i)))
		m := make([]byte, 16<<10)
		for j := range m {
			m[j] = byte(r.Uint32())
		}
		rnd = append(rnd, m)
	}
	for _, p := range []struct {
		name string
		msgs [][]byte
	}{{"ui-json", ui}, {"random", rnd}} {
		for _, lv := range []struct {
			name  string
			level int
		}{{"best-speed", flate.BestSpeed}, {"default", flate.DefaultCompression}} {
			b.Run("compress/"+p.name+"/"+lv.name, func(b *testing.B) {
				var out countWriter
				w, _ := flate.NewWriter(&out, lv.level)
				in, i := 0, 0
				for b.Loop() {
					m := p.msgs[i%len(p.msgs)]
					i++
					_, _ = w.Write(m)
					_ = w.Flush() // a message boundary, as permessage-deflate does
					in += len(m)
				}
				b.SetBytes(int64(in / i))
				b.ReportMetric(float64(out)/float64(in), "ratio")
			})
		}
		b.Run("inflate/"+p.name, func(b *testing.B) {
			// One stream of all the messages, compressed with a kept context.
			var comp bytes.Buffer
			w, _ := flate.NewWriter(&comp, flate.BestSpeed)
			total := 0
			for _, m := range p.msgs {
				_, _ = w.Write(m)
				_ = w.Flush()
				total += len(m)
			}
			_ = w.Close()
			rd := flate.NewReader(nil)
			b.SetBytes(int64(total))
			for b.Loop() {
				_ = rd.(flate.Resetter).Reset(bytes.NewReader(comp.Bytes()), nil)
				_, _ = io.Copy(io.Discard, rd)
			}
		})
	}
}

type countWriter int

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }
