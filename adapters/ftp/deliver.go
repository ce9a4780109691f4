package ftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jlaffaye/ftp"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/trouble"
	"github.com/relay1c/relay/exchange"
)

// Publisher is an FTP delivery: Publish returns only after the server holds
// the complete file under its final name. The upload goes to a hidden temp
// name in the same folder (.relay-<name>.part: vsftpd and most servers hide
// dot-files, 1C reads only Message_*), its size is checked with SIZE (where
// the account may ask it), and it is renamed over the final name.
type Publisher struct {
	node string
	c    *client
	log  *slog.Logger
	lim  exchange.Limits
	// noDownloads logs once that the account cannot download; noSize,
	// that it may not ask SIZE.
	noDownloads, noSize sync.Once

	trouble.Last
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher makes the delivery of node into an FTP folder. It does not
// connect: the first delivery does, so a server that is down at start only
// delays that node.
func NewPublisher(node string, cfg Config, log *slog.Logger) (*Publisher, error) {
	c, err := newClient(node, "deliver", cfg, log)
	if err != nil {
		return nil, err
	}
	log = c.log.With("node", node, "adapter", "ftp")
	c.log = log
	return &Publisher{node: node, c: c, log: log, lim: exchange.DefaultLimits()}, nil
}

// Publish delivers each message; the topic is ignored (one destination).
func (p *Publisher) Publish(_ string, msgs ...*message.Message) error {
	for _, m := range msgs {
		err := p.deliver(m.Context(), m)
		p.Last.Set(err)
		if err != nil {
			return err
		}
	}
	return nil
}

// tempName is the upload name of a final name: fixed, so an interrupted
// upload is overwritten by the next one instead of leaving litter.
func tempName(name string) string { return ".relay-" + name + ".part" }

func (p *Publisher) deliver(ctx context.Context, m *message.Message) error {
	d, err := exchange.OpenDelivery(ctx, m, "ftp "+p.node)
	if err != nil {
		return err
	}
	defer d.Body.Close()
	name, h, want, body := d.Name, d.Header, d.Size, d.Body

	final, err := p.c.path(name)
	if err != nil {
		// No retry makes the name writable (see client.remote).
		return exchange.Permanent(p.c.fail(err))
	}
	tmp, err := p.c.path(tempName(name))
	if err != nil {
		return exchange.Permanent(p.c.fail(err))
	}
	return p.c.with(ctx, func(conn *ftp.ServerConn) (err error) {
		mkdirAll(conn, p.c, p.c.t.dir)
		if err := p.checkNotNewer(conn, name, final, h, want, d.Keep, ""); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				// What was sent is of no use (a later delivery would
				// overwrite it, but a stale or dead message has none): it
				// goes while the connection still works.
				_ = conn.Delete(tmp)
			}
		}()
		cr := &countingReader{r: folder.CtxReader{Ctx: ctx, R: body}}
		if err := conn.Stor(tmp, cr); err != nil {
			delete(p.c.made, p.c.t.dir) // the folder may be gone: create it again next time
			return step("upload "+tempName(name), err)
		}
		if cr.n != want {
			return fmt.Errorf("%s: read %d bytes from the object store, want %d", name, cr.n, want)
		}
		switch got, err := conn.FileSize(tmp); {
		case replyCode(err) >= 500:
			// An upload-only account may not ask SIZE either (ProFTPD's
			// <Limit READ> takes RETR, SIZE and STAT away): the server's
			// 226 for the bytes counted out is all there is to go by
			// (found by review: every delivery failed for good).
			p.noSize.Do(func() {
				p.log.Warn("the server refuses SIZE: an upload is trusted by the server's 226 and the bytes sent, not checked", "file", name, "reply", err)
			})
		case err != nil:
			return step("size "+tempName(name), err)
		case got != want:
			return fmt.Errorf("%s: server holds %d bytes after upload, sent %d", tempName(name), got, want)
		}
		// Checked again, last: a newer message may have landed while this
		// one was uploaded (minutes, for a large one).
		if err := p.checkNotNewer(conn, name, final, h, want, d.Keep, tmp); err != nil {
			return err
		}
		if err := p.rename(conn, name, tmp, final); err != nil {
			return err
		}
		p.log.Debug("delivered", "message_id", m.UUID, "file", name, "message_no", h.MessageNo, "bytes", want)
		return nil
	})
}

// rename puts the upload tmp in place as final (name). A server that
// refuses to rename over an existing file (5xx) gets the old file moved
// aside first, not deleted: if the upload cannot take its place either,
// the old file goes back, and the node keeps its message.
func (p *Publisher) rename(conn *ftp.ServerConn, name, tmp, final string) error {
	err := conn.Rename(tmp, final)
	if err == nil {
		return nil
	}
	if replyCode(err) < 500 {
		return step("rename to "+name, err)
	}
	aside, aerr := p.c.path(".relay-" + name + ".old")
	if aerr != nil {
		return step("rename to "+name, err)
	}
	_ = conn.Delete(aside) // left by a delivery cut short in between: older than final
	if aerr := conn.Rename(final, aside); aerr != nil {
		// No old file to move, or no renames at all: the refusal stands.
		return step("rename to "+name, err)
	}
	p.log.Warn("server refused to rename over the existing file; moved it aside first", "file", name, "reply", err)
	if err := conn.Rename(tmp, final); err != nil {
		if berr := conn.Rename(aside, final); berr != nil {
			return step("rename to "+name, fmt.Errorf("%w; the previous file stays as %s: %w", err, path.Base(aside), berr))
		}
		return step("rename to "+name, err)
	}
	_ = conn.Delete(aside)
	return nil
}

// checkNotNewer refuses to replace a file of the same channel with a higher
// MessageNo (DESIGN.md §6.3), and leaves one of the same number and size
// (this message, written by an attempt the relay did not live to record)
// as it is (exchange.CheckReplace). Only .xml files are checked: reading a zip's
// header needs its central directory, i.e. the whole download; for those the
// channel state in JetStream is the guard. A file that is there but cannot
// be read, or whose transfer breaks before its header, fails the delivery
// (it is tried again): only a file that is not there, or that reads whole
// and is not a message, is replaced. The check before the rename has the
// upload (probe) to tell why a file is refused: an account that may not
// download at all (a drop box: vsftpd download_enable=NO) cannot compare,
// and the channel state is the guard there too; the check before the
// upload leaves that question to it. final is name's wire path.
//
// Under k (a sequential channel) a lower number its node has not
// acknowledged is not replaced either (exchange.ErrUnread); a file there
// whose header is not read (a zip, an account that may not download) is
// taken for the last number delivered (exchange.CheckUnknown).
func (p *Publisher) checkNotNewer(conn *ftp.ServerConn, name, final string, h exchange.Header, size int64, k exchange.Keep, probe string) error {
	if !strings.EqualFold(name[len(name)-4:], ".xml") {
		if !k.On {
			return nil
		}
		switch there, err := present(conn, final, true); {
		case err != nil:
			return step("look for "+name, err)
		case !there:
			return nil
		}
		return p.nameNode(exchange.CheckUnknown(name, exchange.WhyZip, h, k))
	}
	resp, err := conn.Retr(final)
	if err != nil {
		if !isReply(err) {
			return step("read "+name, err)
		}
		// Refused: no such file, or one that cannot be read now (a lock,
		// no right to read it). Only a SIZE refused too says there is none;
		// under k, asked of the folder's listing too.
		switch there, serr := present(conn, final, k.On); {
		case serr != nil:
			return step("look for "+name, serr)
		case !there:
			return nil
		}
		if err := exchange.CheckUnknown(name, "RETR refused: "+err.Error(), h, k); err != nil {
			return p.nameNode(err)
		}
		if probe == "" {
			return nil // asked again before the rename, with the upload to tell
		}
		switch downloads, perr := p.canDownload(conn, probe); {
		case perr != nil:
			return step("read "+path.Base(probe), perr)
		case !downloads:
			p.noDownloads.Do(func() {
				p.log.Warn("the account may not download (RETR refused for relay's own upload): the destination's files cannot be compared with the message; JetStream's channel state alone keeps older messages from replacing newer ones", "file", name, "reply", err)
			})
			return nil
		}
		return step("read "+name, fmt.Errorf("the file there cannot be read to compare its number: %w", err))
	}
	have, herr := exchange.ReadHeader(resp, p.lim)
	cerr := resp.Close() // after a header read whole: an aborted transfer, as the server reports closing early
	switch {
	case herr == nil:
	case errors.Is(herr, exchange.ErrIncomplete) && cerr != nil:
		return step("read "+name, fmt.Errorf("the transfer broke before the header was read: %w", cerr))
	case exchange.IsVerdict(herr):
		return nil // not a message (or a truncated one): ours replaces it
	default:
		return step("read "+name, herr)
	}
	haveSize := int64(-1)
	if have.ExchangePlan == h.ExchangePlan && have.From == h.From && have.To == h.To && have.MessageNo == h.MessageNo {
		if n, err := conn.FileSize(final); err == nil {
			haveSize = n
		}
	}
	return p.nameNode(exchange.CheckReplace(name, have, haveSize, h, size, k))
}

// present says whether the file at the wire path final is there: SIZE
// answers it; a refused SIZE says no, or, when list, is asked again of the
// folder's name listing (listed).
func present(conn *ftp.ServerConn, final string, list bool) (bool, error) {
	_, err := conn.FileSize(final)
	switch {
	case err == nil:
		return true, nil
	case !isReply(err):
		return false, err
	case !list:
		return false, nil
	}
	return listed(conn, final)
}

// listed says whether the folder's name listing holds the file at the
// wire path final: asked when SIZE refused it, which may be an account
// that may not ask SIZE (ProFTPD's <Limit READ>, found by review) rather
// than no file. A 450 is an empty folder (ProFTPD's answer to its NLST);
// a listing refused otherwise (an account that may not list either) cannot
// tell, and the file is taken to be there: 1C never removes what it read.
func listed(conn *ftp.ServerConn, final string) (bool, error) {
	names, err := conn.NameList(path.Dir(final))
	switch {
	case err == nil:
	case replyCode(err) == ftp.StatusFileActionIgnored:
		return false, nil
	case isReply(err):
		return true, nil
	default:
		return false, err
	}
	return slices.ContainsFunc(names, func(n string) bool { return path.Base(n) == path.Base(final) }), nil
}

// nameNode names the node in a hold for an unread file, whose words the
// channel's status shows without the wrapping that names the server.
func (p *Publisher) nameNode(err error) error {
	if ue := (*exchange.UnreadError)(nil); errors.As(err, &ue) {
		ue.Where = "ftp " + p.node + ": " + ue.Where
	}
	return err
}

// canDownload says whether the server lets this account download: it
// RETRieves the upload probe (the first bytes only). Only a permanent
// refusal (5xx) says no; a temporary one (450 busy, 421 too many
// transfers) is an error, and the delivery is tried again (found by
// review: taken for "no downloads", it let an older message replace a
// newer one).
func (p *Publisher) canDownload(conn *ftp.ServerConn, probe string) (bool, error) {
	resp, err := conn.Retr(probe)
	switch {
	case replyCode(err) >= 500:
		return false, nil
	case err != nil:
		return false, err
	}
	_ = resp.Close() // closing early: the server reports an aborted transfer
	return true, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// Close drops the control connection.
func (p *Publisher) Close() error {
	p.c.close()
	return nil
}
