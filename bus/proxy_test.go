package bus

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// tcpProxy forwards 127.0.0.1 connections to upstream. toClient copies a
// connection's server side to its client (nth counts connections from 1),
// so that a test can rewrite or drop what the server says; what the client
// says goes up as it is. drop cuts every connection there is.
type tcpProxy struct {
	ln    net.Listener
	conns atomic.Int32
	mu    sync.Mutex
	open  []net.Conn
	wg    sync.WaitGroup
}

func newTCPProxy(t *testing.T, upstream string, toClient func(nth int32, c, up net.Conn)) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln}
	t.Cleanup(func() { ln.Close(); p.drop(); p.wg.Wait() })
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.open = append(p.open, c, up)
			p.mu.Unlock()
			nth := p.conns.Add(1)
			p.wg.Go(func() {
				defer c.Close()
				toClient(nth, c, up)
			})
			p.wg.Go(func() {
				defer up.Close()
				_, _ = io.Copy(up, c)
			})
		}
	})
	return p
}

func (p *tcpProxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.open {
		c.Close()
	}
	p.open = nil
}
