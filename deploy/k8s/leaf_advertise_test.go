package k8s

import (
	"bufio"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLeafPortDoesNotAdvertisePodAddresses: the offices reach HQ only
// through the LoadBalancer nats-leaf (nats.leaf.url). nats-server tells
// every leaf node that connects the leaf URLs of all cluster servers (their
// pod IPs, the leafnodes block listening on 0.0.0.0) unless `advertise` or
// `no_advertise` is set; an office's server puts those URLs first and,
// after every link loss, dialled the unreachable pod IPs (1 s dial timeout
// and 2..4 s reconnect wait each) before the LoadBalancer (found by
// review).
func TestLeafPortDoesNotAdvertisePodAddresses(t *testing.T) {
	n, err := built(t, dirHQ).nats()
	if err != nil || n == nil {
		t.Fatalf("nats: %v", err)
	}
	// What a real server would advertise: the shipped block listens on any
	// address and says nothing about advertising.
	host, adv, noAdv := n.Opts.LeafNode.Host, n.Opts.LeafNode.Advertise, n.Opts.LeafNode.NoAdvertise

	// Evidence on the wire (127.0.0.1 only): the server running the shipped
	// nats.conf hands a connecting leaf node its own listen address.
	_, leafPort := hqServer(t)
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(leafPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		LeafNodeURLs []string `json:"leafnode_urls"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(line), "INFO ")), &info); err != nil {
		t.Fatalf("INFO %q: %v", line, err)
	}
	t.Logf("leafnodes host %q (empty = 0.0.0.0 = the pod IP is advertised), advertise %q, no_advertise %v; INFO leafnode_urls %v",
		host, adv, noAdv, info.LeafNodeURLs)
	if adv == "" && !noAdv && len(info.LeafNodeURLs) > 0 {
		t.Errorf("nats.conf leafnodes {} advertises each server's own address %v to the offices (in the cluster: the pods' IPs, unreachable from an office); "+
			"an office tries them before nats-leaf after every link loss. Set `no_advertise: true` (or `advertise: <nats-leaf address>`) in leafnodes {}", info.LeafNodeURLs)
	}
}
