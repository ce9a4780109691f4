package ftp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jlaffaye/ftp"
)

// Check proves an endpoint usable the way relay will use it: connect, log in,
// list the folder, upload and delete a probe file. The error names the step
// that failed and ends with a hint for the administrator.
func Check(ctx context.Context, node, role string, cfg Config, log *slog.Logger) error {
	c, err := newClient(node, role, cfg, log)
	if err != nil {
		return err
	}
	defer c.close()
	c.retryAt = time.Time{}
	probe := ".relay-check-" + strconv.FormatInt(time.Now().UnixNano(), 36) + ".tmp"
	rprobe, err := c.path(probe)
	if err != nil {
		return c.fail(step("upload probe file", err))
	}
	err = c.with(ctx, func(conn *ftp.ServerConn) error {
		if role == "deliver" {
			mkdirAll(conn, c, c.t.dir)
		}
		if _, err := c.listDir(conn, c.t.dir); err != nil && !(role == "deliver" && errors.Is(err, errFolderNotReadable)) {
			// A deliver folder may be write-only (a drop box): a
			// delivery never lists it (found by review).
			return step("list "+orLogin(c.t.dir), err)
		}
		if err := conn.Stor(rprobe, strings.NewReader("relay check\n")); err != nil {
			// The server may have made the file before the upload
			// failed (a full disk, a quota): it is not left behind. Only
			// after the server's reply: a connection that broke or timed
			// out would only wait once more.
			if isReply(err) {
				_ = conn.Delete(rprobe)
			}
			return step("upload probe file", err)
		}
		if err := conn.Delete(rprobe); err != nil {
			return step("delete probe file", err)
		}
		return nil
	})
	if err != nil {
		if h := Hint(err); h != "" {
			return fmt.Errorf("%w (hint: %s)", err, h)
		}
	}
	return err
}

// Hint turns a failed step into advice for the administrator, "" if none fits.
func Hint(err error) string {
	var se *stepError
	stepName := ""
	if errors.As(err, &se) {
		stepName = se.step
	}
	code := replyCode(err)
	msg := err.Error()
	var nerr net.Error
	switch {
	case errors.Is(err, os.ErrNotExist) && strings.Contains(msg, "password_env"),
		strings.Contains(msg, "(password_env) is not set"):
		return "export the password in the environment variable named by password_env"
	case stepName == "login" && code == 530:
		return "wrong user or password"
	case code == 421:
		return "the server takes no more connections now: a limit per address (vsftpd max_per_ip, max_clients) that relay's nodes and other programs sharing it reach, or it is going down; raise the limit or spread the nodes"
	case stepName == "tls handshake":
		return "check tls: explicit (port 21) vs implicit (port 990), ca_file, and that the certificate names the host in the URL"
	case code == 522 || strings.Contains(msg, "session reuse"):
		return "the server requires TLS session reuse on data connections; relay does it, so a proxy in between may break it"
	case strings.Contains(msg, "data connection (passive mode)"), code == 425:
		return "passive mode blocked: open the server's passive port range in the firewall, or fix pasv_address"
	case strings.HasPrefix(stepName, "list") && code == 550:
		return "folder missing (or not readable by this user)"
	case strings.HasPrefix(stepName, "list") && strings.Contains(msg, "folder not readable"):
		return "the user may enter the folder but not list it: give it read permission for this user"
	case (strings.HasPrefix(stepName, "upload") || strings.HasPrefix(stepName, "delete") || strings.HasPrefix(stepName, "rename")) && (code == 550 || code == 553 || code == 532):
		return "permission denied: the user cannot write to this folder"
	case code == 552 || code == 452:
		return "the server is out of disk space or quota"
	case stepName == "connect" && strings.Contains(msg, "connection refused"):
		return "nothing listens there: wrong host or port, or the server is down"
	case stepName == "connect" && (errors.As(err, &nerr) && nerr.Timeout() || strings.Contains(msg, "no answer")):
		return "no answer: a firewall drops the connection, or the host is wrong"
	case stepName == "connect" && strings.Contains(msg, "no such host"):
		return "the host name does not resolve"
	}
	return ""
}
