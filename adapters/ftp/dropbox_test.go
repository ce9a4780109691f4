package ftp

import (
	"context"
	"io"
	"net"
	"testing"
)

// TestCheckDeliverWriteOnlyFolder: a delivery folder the account may
// write into and enter but not list (a drop box, vsftpd with the folder
// 0733): STOR, SIZE, RNFR/RNTO and DELE work, and the delivery needs no
// listing. vsftpd ends its LIST with "226 Transfer done (but failed to
// open directory)." relay check of the deliver endpoint failed with
// "folder not readable" once pickups told that case, telling the operator
// to give the delivery account read permission it does not need (found by
// review): a deliver check passes it.
func TestCheckDeliverWriteOnlyFolder(t *testing.T) {
	s := &scriptedServer{
		feats: []string{"SIZE", "MDTM"},
		cmd: func(verb, arg string, say func(string, ...any), data func() net.Conn) bool {
			switch verb {
			case "LIST":
				say("150 Here comes the directory listing.")
				if d := data(); d != nil {
					d.Close()
				}
				say("226 Transfer done (but failed to open directory).")
			case "STOR":
				say("150 Ok to send data.")
				if d := data(); d != nil {
					io.Copy(io.Discard, d)
					d.Close()
				}
				say("226 Transfer complete.")
			case "DELE":
				say("250 Delete operation successful.")
			case "MKD":
				say("550 Create directory operation failed.")
			default:
				return false
			}
			return true
		},
	}
	cfg := testConfig(s.serve(t, "in"), "deliver")
	if err := Check(context.Background(), "B", "deliver", cfg, nil); err != nil {
		t.Fatalf("relay check of a deliver endpoint whose folder may be written but not listed: %v (hint %q); deliveries there need no listing", err, Hint(err))
	}
}
