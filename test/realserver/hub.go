package realserver

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// HubDomain is the JetStream domain of StartHub's server: the head office
// relay's id in the tests that use it.
const HubDomain = "hq"

// StartHub starts an in-process head office nats-server for the fast tests
// of office links: JetStream in domain HubDomain stored under dir, a client
// port and a leaf node port on 127.0.0.1. adjust, if set, changes the
// options before the start (operator-mode trust, say). The caller stops it
// with Shutdown and WaitForShutdown.
func StartHub(dir string, adjust func(*server.Options)) (ns *server.Server, leafURL string, err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	leafPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	opts := &server.Options{
		ServerName: "hub", Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		JetStream: true, JetStreamDomain: HubDomain, StoreDir: dir,
		LeafNode: server.LeafNodeOpts{Host: "127.0.0.1", Port: leafPort},
	}
	if adjust != nil {
		adjust(opts)
	}
	if ns, err = server.NewServer(opts); err != nil {
		return nil, "", fmt.Errorf("hub: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, "", errors.New("hub: not ready within 10s")
	}
	return ns, fmt.Sprintf("nats-leaf://127.0.0.1:%d", leafPort), nil
}
