package loopback

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// TestServe: each connection gets the handler; a connection the handler
// left open is closed when the test ends.
func TestServe(t *testing.T) {
	var held net.Conn
	t.Run("inner", func(t *testing.T) {
		addr := Serve(t, func(c net.Conn) { c.Write([]byte("hello\n")) })
		var err error
		if held, err = net.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(held).ReadString('\n')
		if err != nil || line != "hello\n" {
			t.Fatalf("read %q, %v", line, err)
		}
	})
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := held.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes after the test ended: the connection was not closed", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the served connection stayed open after the test ended")
	}
	held.Close()
}
