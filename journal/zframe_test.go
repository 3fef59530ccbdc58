package journal

import (
	"bytes"
	"fmt"
	"testing"
)

// Frames that alternate between a few KiB and tens of KiB, as group
// commits do, compress without allocating the encoder's tables again, and
// come back as they went in.
func TestZipAlternatingSizesReusesTables(t *testing.T) {
	frame := func(n int) []byte {
		var b bytes.Buffer
		for i := 0; b.Len() < n; i++ {
			fmt.Fprintf(&b, `{"seq":%d,"type":"Deferred","envelope":"E%07d","reason":"451 4.3.0 try again later"}`+"\n", i, i)
		}
		return b.Bytes()[:n]
	}
	small, large := frame(8<<10), frame(40<<10)
	dst := make([]byte, 0, 64<<10)
	for _, b := range [][]byte{small, large} {
		out, err := unzip(zip(dst, b))
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("a %d-byte frame did not come back (%v)", len(b), err)
		}
	}
	// With the tables shared by mistake this is 2 (two 576 KiB tables a
	// round); the race detector's pools drop a quarter of what they are
	// given, so it is about 0.5 there and 0 otherwise.
	if n := testing.AllocsPerRun(200, func() {
		zip(dst, small)
		zip(dst, large)
	}); n >= 1 {
		t.Fatalf("%.2f allocations per small+large pair of frames, want < 1", n)
	}
}
