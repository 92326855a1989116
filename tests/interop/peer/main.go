// Command peer is the HashiCorp yamux side of Runewarp's mux interop test
// (tests/interop/test_yamux_interop.py).
//
// It dials the Python side over plain TCP, runs yamux.Client or yamux.Server on
// that connection and reports on stdout, one line per result:
//
//	ok-open <id> <sha256>        a stream we opened was echoed back intact
//	echo <id> <bytes> <sha256>   a stream the Python side opened was echoed to its FIN
//	ok-ping <rtt>                our ping was answered
//	ok-goaway <error>            Open failed because the Python side sent go away
//	done                         all of the above finished; now waiting for the
//	                             Python side to close the connection
//
// Errors go to stderr and exit 1.  Exit 0 needs, in addition, every stream to
// have been closed by both sides when the Python side hangs up.
package main

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// payload is what we send on stream id: SHA-256 of "<id>:<counter>" blocks,
// cheap to recompute in Python and different on every stream.
func payload(id uint32, size int) []byte {
	out := make([]byte, 0, size+sha256.Size)
	for k := 0; len(out) < size; k++ {
		sum := sha256.Sum256([]byte(fmt.Sprintf("%d:%d", id, k)))
		out = append(out, sum[:]...)
	}
	return out[:size]
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "peer: "+format+"\n", args...)
	os.Exit(1)
}

// sendAndVerify writes the stream's payload while reading its echo, then closes.
//
// The FIN goes out only after the whole echo has arrived: this yamux's Read
// returns EOF as soon as the local side has closed and nothing is buffered,
// even though the remote side may still be sending, so closing first would
// cut the echo short on our side.
func sendAndVerify(stream *yamux.Stream, size int) {
	id := stream.StreamID()
	data := payload(id, size)
	written := make(chan error, 1)
	go func() {
		_, err := stream.Write(data)
		written <- err
	}()
	echo := make([]byte, size)
	if _, err := io.ReadFull(stream, echo); err != nil {
		fail("stream %d: reading the echo: %v", id, err)
	}
	if err := <-written; err != nil {
		fail("stream %d: writing: %v", id, err)
	}
	if err := stream.Close(); err != nil {
		fail("stream %d: close: %v", id, err)
	}
	if !bytes.Equal(echo, data) {
		fail("stream %d: the echo differs from what we sent", id)
	}
	fmt.Printf("ok-open %d %x\n", id, sha256.Sum256(data))
}

// echo copies a stream opened by the Python side back to it until its FIN, then sends ours.
func echo(stream *yamux.Stream) {
	id := stream.StreamID()
	digest := sha256.New()
	n, err := io.Copy(stream, io.TeeReader(stream, digest))
	if err != nil {
		fail("stream %d: echo: %v", id, err)
	}
	if err := stream.Close(); err != nil {
		fail("stream %d: close: %v", id, err)
	}
	fmt.Printf("echo %d %d %x\n", id, n, digest.Sum(nil))
}

func main() {
	mode := flag.String("mode", "client", "yamux role: client or server")
	addr := flag.String("addr", "", "host:port of the Python side")
	open := flag.Int("open", 0, "streams to open, send -size bytes on and verify the echo of")
	size := flag.Int("size", 1<<20, "bytes to send on each stream we open")
	accept := flag.Int("accept", 0, "streams opened by the Python side to echo")
	ping := flag.Bool("ping", false, "ping the Python side once")
	expectReset := flag.Int("expect-reset", 0,
		"streams to open first, each of which the Python side must reset (with a reset code)")
	expectGoAway := flag.Bool("expect-goaway", false,
		"after the echoes, require Open to fail because the Python side sent go away")
	timeout := flag.Duration("timeout", 60*time.Second, "exit 1 after this long")
	flag.Parse()
	time.AfterFunc(*timeout, func() { fail("timed out after %v", *timeout) })

	conn, err := net.Dial("tcp", *addr)
	if err != nil {
		fail("dial %s: %v", *addr, err)
	}
	config := yamux.DefaultConfig()
	config.EnableKeepAlive = true
	config.LogOutput = os.Stderr
	var session *yamux.Session
	switch *mode {
	case "client":
		session, err = yamux.Client(conn, config)
	case "server":
		session, err = yamux.Server(conn, config)
	default:
		fail("unknown -mode %q", *mode)
	}
	if err != nil {
		fail("yamux %s: %v", *mode, err)
	}

	for i := 0; i < *expectReset; i++ {
		stream, err := session.OpenStream()
		if err != nil {
			fail("open: %v", err)
		}
		if _, err := stream.Read(make([]byte, 1)); err != yamux.ErrConnectionReset {
			fail("stream %d: read: got %v, want %v", stream.StreamID(), err, yamux.ErrConnectionReset)
		}
		stream.Close()
		fmt.Printf("ok-reset %d\n", stream.StreamID())
	}
	var wg sync.WaitGroup
	for i := 0; i < *open; i++ {
		stream, err := session.OpenStream()
		if err != nil {
			fail("open: %v", err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); sendAndVerify(stream, *size) }()
	}
	wg.Add(*accept)
	go func() {
		for i := 0; i < *accept; i++ {
			stream, err := session.AcceptStream()
			if err != nil {
				fail("accept: %v", err)
			}
			go func() { defer wg.Done(); echo(stream) }()
		}
	}()
	if *ping {
		rtt, err := session.Ping()
		if err != nil {
			fail("ping: %v", err)
		}
		fmt.Printf("ok-ping %v\n", rtt)
	}
	wg.Wait()
	if *expectGoAway {
		if _, err := session.Open(); err != yamux.ErrRemoteGoAway {
			fail("open after go away: got %v, want %v", err, yamux.ErrRemoteGoAway)
		}
		fmt.Printf("ok-goaway %v\n", yamux.ErrRemoteGoAway)
	}
	fmt.Println("done")

	<-session.CloseChan()
	if n := session.NumStreams(); n != 0 {
		fail("%d streams were not closed by both sides", n)
	}
}
