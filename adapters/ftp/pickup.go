package ftp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/jlaffaye/ftp"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
)

// NewSubscriber makes the pickup of node from an FTP folder: a folder.Pickup
// that lists the folder every poll_interval (MLSD where the server has it,
// LIST otherwise) and downloads each settled file into spoolDir before it is
// inspected and streamed to the object store.
func NewSubscriber(node string, cfg Config, after config.After, mem folder.KeepMemory, pw folder.Passwords, spoolDir string, log *slog.Logger) (*folder.Pickup, error) {
	c, err := newClient(node, "pickup", cfg, log)
	if err != nil {
		return nil, err
	}
	// The folder pickup names the node in its own log; the client's lines
	// (spool, TLS, passive mode) name it too (found by review).
	base := c.log
	c.log = base.With("node", node, "adapter", "ftp")
	folder.ClearSpool(spoolDir, c.log)
	lim := cfg.Limits.WithDefaults()
	src := &source{c: c, spool: spoolDir, lim: lim}
	return folder.NewPickup(src, folder.Options{
		Node: node, IsNode: cfg.IsNode, Adapter: "ftp", Limits: lim,
		Settle: cfg.Settle.Std(), PollInterval: cfg.PollInterval.Std(), IncompleteTimeout: cfg.IncompleteTimeout.Std(),
		After: after, Memory: mem, Passwords: pw, Log: base,
	})
}

// source is an FTP pickup folder.
type source struct {
	c     *client
	spool string
	lim   exchange.Limits
}

// list lists dir. A name the server sends in UTF-8 though encoding: cp1251
// is set is listed as Windows-1251 reads it, for the pickup to tell whose
// file it is (TestWrongEncodingShown), but never downloaded, renamed or
// deleted: see file.
func (s *source) list(conn *ftp.ServerConn, dir string) ([]folder.File, error) {
	entries, err := s.c.listDir(conn, dir)
	if err != nil {
		return nil, step("list "+orLogin(dir), err)
	}
	var files []folder.File
	for _, e := range entries {
		if e.Type != ftp.EntryTypeFile {
			continue
		}
		name := path.Base(s.c.local(e.Name))
		files = append(files, folder.File{Name: name, Size: int64(e.Size), ModTime: e.Time})
	}
	return files, nil
}

// errFolderNotReadable is listDir's answer for a folder the server could
// not open, though it exists: a pickup sees nothing there.
var errFolderNotReadable = errors.New("folder not readable")

// listDir lists dir (relative to the login folder). vsftpd answers LIST of
// a folder that does not exist with an empty listing and "226 Transfer done
// (but failed to open directory)", so an empty answer is confirmed by
// changing into the folder and back; a missing folder then fails with the
// server's 550 instead of looking like an empty one. Other servers answer
// LIST of an empty folder with "550 No files found" (or a 450): a folder
// the same test enters is empty, not missing (found by review: an empty
// outbox showed as the pickup's error).
//
// vsftpd answers so for a folder it can change into but not read (mode
// 0711 or 0733 for the user) too: only the 226 reply's text, "Transfer done
// (but failed to open directory)", tells it from an empty folder, and such
// an outbox looked empty for good, its files never taken and nothing shown
// (found by review). The dialer notes that reply; an empty listing that
// ended so fails with "folder not readable".
func (c *client) listDir(conn *ftp.ServerConn, dir string) ([]*ftp.Entry, error) {
	rdir, err := c.remote(dir)
	if err != nil {
		return nil, err
	}
	c.sockets.listNext(true)
	entries, err := conn.List(rdir)
	c.sockets.listNext(false)
	var unreadable error
	if reply := c.sockets.replies.take226(); err == nil && len(entries) == 0 && strings.Contains(strings.ToLower(reply), "failed to open directory") {
		unreadable = fmt.Errorf("%w: the server lists it as empty, but says %q", errFolderNotReadable, reply)
	}
	code := replyCode(err)
	refused := code == 550 || code == 450
	switch {
	case err != nil && !refused || len(entries) > 0:
		return entries, err
	case dir == "" && refused:
		return nil, nil // the login folder, relay is in it: empty
	case dir == "" && unreadable != nil:
		return nil, unreadable
	case dir == "":
		return entries, err
	}
	listErr := err
	home, err := conn.CurrentDir()
	if err != nil {
		return nil, err
	}
	if err := conn.ChangeDir(rdir); err != nil {
		if listErr != nil {
			return nil, listErr
		}
		return nil, err
	}
	if err := conn.ChangeDir(home); err != nil {
		// Every path is relative to the login folder: this connection is
		// no use any more. Not a server reply, so with() drops it.
		c.sockets.closeAll()
		return nil, fmt.Errorf("back to the login folder %s: %s", home, err.Error())
	}
	if unreadable != nil {
		return nil, unreadable
	}
	return entries, nil
}

func orLogin(dir string) string {
	if dir == "" {
		return "login folder"
	}
	return dir
}

func (s *source) List(ctx context.Context) ([]folder.File, error) {
	var files []folder.File
	err := s.c.with(ctx, func(conn *ftp.ServerConn) error {
		all, err := s.list(conn, s.c.t.dir)
		if err != nil {
			return err
		}
		mdtm := useMDTM(conn)
		for _, f := range all {
			name := folder.MessageName(f.Name) // a commit's held file is taken as its message
			if !folder.IsMessageName(name) {
				if folder.PassedOver(f.Name) {
					files = append(files, f) // told of, never read
				}
				continue
			}
			if folder.ForAnotherNode(name, s.c.node, s.c.cfg.IsNode) && folder.Nobodys(name, s.c.cfg.IsNode) == "" {
				continue // another node's file: spare it the MDTM (the pickup skips it too)
			}
			p, err := s.file(f.Name)
			if err != nil {
				// Never read (Fetch says why): the listing's time will do.
				files = append(files, f)
				continue
			}
			if mdtm {
				t, err := conn.GetTime(p)
				if err != nil {
					if isReply(err) {
						continue // gone since the listing
					}
					return step("mdtm "+f.Name, err)
				}
				f.ModTime = t
			}
			files = append(files, f)
		}
		return nil
	})
	return files, err
}

// useMDTM reports whether file times come from MDTM instead of the listing.
// LIST times have minute precision on many servers (vsftpd): a file
// rewritten with the same size within that minute would look unchanged
// between download and commit. MDTM has seconds.
func useMDTM(conn *ftp.ServerConn) bool {
	return !conn.IsTimePreciseInList() && conn.IsGetTimeSupported()
}

// Stat asks for one file with SIZE and MDTM where the listing's times come
// from MDTM anyway, so a commit costs two commands, not a listing of the
// whole folder.
func (s *source) Stat(ctx context.Context, name string) (folder.File, error) {
	p, err := s.file(name)
	if err != nil {
		return folder.File{}, s.c.fail(step("look at "+name, err))
	}
	var f *folder.File
	err = s.c.with(ctx, func(conn *ftp.ServerConn) error {
		if useMDTM(conn) {
			size, err := conn.FileSize(p)
			if isReply(err) {
				return nil // no such file
			} else if err != nil {
				return step("size "+name, err)
			}
			t, err := conn.GetTime(p)
			if isReply(err) {
				return nil
			} else if err != nil {
				return step("mdtm "+name, err)
			}
			f = &folder.File{Name: name, Size: size, ModTime: t}
			return nil
		}
		all, err := s.list(conn, s.c.t.dir)
		for i := range all {
			if all[i].Name == name {
				f = &all[i]
			}
		}
		return err
	})
	if err != nil {
		return folder.File{}, err
	}
	if f == nil {
		return folder.File{}, fmt.Errorf("ftp %s: %s: %w", s.c.node, name, fs.ErrNotExist)
	}
	return *f, nil
}

// Fetch downloads the file into the spool: one transfer serves both the
// completeness check and the upload to the object store.
func (s *source) Fetch(ctx context.Context, f folder.File) (folder.Fetched, error) {
	p, err := s.file(f.Name)
	if err != nil {
		return folder.Fetched{}, s.c.fail(step("download "+f.Name, err))
	}
	var out folder.Fetched
	err = s.c.with(ctx, func(conn *ftp.ServerConn) error {
		resp, err := conn.Retr(p)
		if err != nil {
			return step("download "+f.Name, err)
		}
		got, err := folder.Spool(ctx, s.spool, resp, s.lim.MaxSize)
		cerr := resp.Close()
		if err != nil {
			return step("download "+f.Name, err)
		}
		if cerr != nil {
			got.Release()
			return step("download "+f.Name, cerr)
		}
		out = got
		return nil
	})
	return out, err
}

func (s *source) Remove(ctx context.Context, name string) error {
	p, err := s.file(name)
	if err != nil {
		return s.c.fail(step("delete "+name, err))
	}
	return s.c.with(ctx, func(conn *ftp.ServerConn) error {
		return step("delete "+name, conn.Delete(p))
	})
}

// Rename renames a file of the folder.
func (s *source) Rename(ctx context.Context, from, to string) error {
	pf, err := s.file(from)
	if err != nil {
		return s.c.fail(step("rename "+from+" to "+to, err))
	}
	pt, err := s.file(to)
	if err != nil {
		return s.c.fail(step("rename "+from+" to "+to, err))
	}
	return s.c.with(ctx, func(conn *ftp.ServerConn) error {
		return step("rename "+from+" to "+to, conn.Rename(pf, pt))
	})
}

// Move renames name into folder (relative to the pickup folder unless it
// starts with /) as the file as, creating the folder, and never overwrites
// an earlier moved file.
func (s *source) Move(ctx context.Context, name, as, to string) error {
	if !path.IsAbs(to) && s.c.t.dir != "" {
		to = s.c.t.dir + "/" + to
	}
	from, err := s.file(name)
	if err != nil {
		return s.c.fail(step("move "+as+" to "+to, err))
	}
	return s.c.with(ctx, func(conn *ftp.ServerConn) error {
		mkdirAll(conn, s.c, to)
		// A name the archive holds already gets a time stamp; so does any
		// name when the archive's listing fails (one grown past the
		// listing's bounds in a few years, a passing error): the rename
		// must not replace an earlier moved file.
		dst := to + "/" + time.Now().UTC().Format("20060102T150405.000000000Z") + "_" + as
		if existing, err := s.list(conn, to); err == nil && !slices.ContainsFunc(existing, func(f folder.File) bool { return f.Name == as }) {
			dst = to + "/" + as
		}
		rdst, err := s.c.remote(dst)
		if err != nil {
			return step("move "+as+" to "+to, err)
		}
		if err := conn.Rename(from, rdst); err != nil {
			delete(s.c.made, to) // the folder may be gone: create it again next time
			return step("move "+as+" to "+to, err)
		}
		return nil
	})
}

// Close drops the control connection: a closed pickup (a lease handed
// over, a restart) does not hold one of the server's per-address
// connections until its idle timer.
// file is the wire path of the folder's file name. It fails for a name the
// server sent in UTF-8 though encoding: cp1251 is set (client.listedInUTF8):
// the name relay has is mojibake that may name a node (Message_A_ОП.xml
// read as Message_A_РћРџ.xml), and the file was taken under it,
// dead-lettered and deleted (found by review). It is left alone now, and
// its failed download is the pickup's error, with the hint; so is a name
// Windows-1251 cannot write.
func (s *source) file(name string) (string, error) {
	p, err := s.c.path(name)
	if err != nil {
		return "", err
	}
	if raw, _ := s.c.remote(name); s.c.listedInUTF8(raw) {
		return "", fmt.Errorf("the server lists this name in UTF-8, as %s, not in Windows-1251 as encoding: cp1251 says (set encoding: utf-8 for this endpoint); left alone", raw)
	}
	return p, nil
}

func (s *source) Close() error {
	s.c.close()
	return nil
}

func (s *source) Where(name string) string {
	if s.c.t.dir == "" {
		return s.c.t.display + name
	}
	return s.c.t.display + "/" + name
}

// mkdirAll creates dir and its parents, ignoring "exists" replies: FTP has no
// portable way to ask, and a real problem shows on the next command.
func mkdirAll(conn *ftp.ServerConn, c *client, dir string) {
	if dir == "" || c.made[dir] {
		return
	}
	defer func() { c.made[dir] = true }()
	prefix := ""
	if path.IsAbs(dir) {
		prefix = "/"
	}
	var parts []string
	for _, p := range strings.Split(dir, "/") {
		if p != "" && p != "." {
			parts = append(parts, p)
		}
	}
	for i := range parts {
		if p, err := c.remote(prefix + path.Join(parts[:i+1]...)); err == nil {
			_ = conn.MakeDir(p)
		}
	}
}
