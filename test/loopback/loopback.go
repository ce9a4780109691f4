// Package loopback serves TCP on 127.0.0.1 for tests that need a server or
// a proxy no library provides: a scripted FTP reply, a connection cut at a
// chosen byte, a silent or trickling peer.
package loopback

import (
	"net"
	"sync"
	"testing"
)

// Serve listens on 127.0.0.1 and runs handle in a goroutine of its own for
// every connection until the test ends; then the listener and every
// connection it accepted are closed (a handler that returns leaves its
// connection open until then unless it closes it). It returns the address.
func Serve(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := false
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		done = true
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if done {
				mu.Unlock()
				c.Close()
				return
			}
			conns = append(conns, c)
			mu.Unlock()
			go handle(c)
		}
	}()
	return ln.Addr().String()
}
