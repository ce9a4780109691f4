// Package folder is the drop-folder pickup that the dir and ftp adapters
// share: a 1C node writes Message_<FROM>_<TO> files into a folder, and relay
// takes each one once it is stable and complete, hands it to the pipeline,
// and commits it (delete, move, keep) only when JetStream holds it. The
// transport (local disk, FTP) is a Source; everything that decides when a
// file is safe to take lives here once.
package folder

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/relay1c/relay/exchange"
	"golang.org/x/text/encoding/charmap"
)

// File is one regular file of a pickup folder as a listing shows it.
type File struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// Fetched is a local, random-access copy of one file's content: the open
// file itself for a local folder, a spooled download for a remote one. What
// is inspected is exactly what the pipeline reads, even if the source changes.
type Fetched struct {
	File *os.File
	Size int64
	// Release closes File and removes a spool copy; called once the pipeline
	// has answered.
	Release func()
	// Copy says File is a copy (Spool): what the pipeline stores is what
	// was copied, so the pickup compares the source with its listing after
	// the copy (a local file is read again by the pipeline, whose size and
	// sha256 check catches a rewrite instead).
	Copy bool
}

// Ext is the extension a spooled file's content calls for, ".zip" or
// ".xml", for a file that came without a name (a mail subject without its
// extension, a push without a name): the format is told by content.
func (f Fetched) Ext() string {
	var b [4]byte
	if n, _ := f.File.ReadAt(b[:], 0); n == 4 && exchange.IsZip(b[:]) {
		return ".zip"
	}
	return ".xml"
}

// Source is a folder the pickup reads: local disk or an FTP server.
type Source interface {
	// List returns the regular files directly in the folder.
	List(ctx context.Context) ([]File, error)
	// Fetch makes the content of f available locally; an error is transient
	// (the file is looked at again later), never a verdict on the content.
	Fetch(ctx context.Context, f File) (Fetched, error)
	// Stat returns name as it is now.
	Stat(ctx context.Context, name string) (File, error)
	// Remove deletes name from the folder.
	Remove(ctx context.Context, name string) error
	// Move moves name into folder (relative to the pickup folder, or
	// absolute) as the file as, never overwriting an earlier moved file.
	Move(ctx context.Context, name, as, folder string) error
	// Rename renames a file of the folder: the commit takes the file out
	// of its name before it looks at it (see HeldName).
	Rename(ctx context.Context, from, to string) error
	// Where names a file for logs, metadata and keep-memory keys, e.g.
	// "dir:/srv/out/Message_A_B.xml" or "ftp://shop1@host:21/out/Message_A_B.xml".
	Where(name string) string
}

// Notifier is implemented by sources that can tell when the folder changed
// (fsnotify); others are polled every poll_interval.
type Notifier interface {
	// Notify returns a channel that receives after changes to Message_*
	// files; it closes when ctx ends.
	Notify(ctx context.Context) (<-chan struct{}, error)
}

// Memory remembers what a pickup already took: under `after: keep`, so a
// file left in place is not taken twice; for mail, the sets of parts taken
// whole, so a late copy of a part is known. Keys and fingerprints are
// opaque strings.
type Memory interface {
	Seen(ctx context.Context, key, fingerprint string) (bool, error)
	Remember(ctx context.Context, key, fingerprint string) error
}

// KeepMemory is the memory of an `after: keep` folder pickup: under each
// file's key, the fingerprint of the version taken last (size, mtime and
// sha256, in the pickup's own format). The pickup reads the fingerprint
// back rather than asking whether one matches: with a coarse mtime, equal
// size and mtime only say that the content must be compared.
type KeepMemory interface {
	// Recall returns the fingerprint remembered under key, "" if none.
	Recall(ctx context.Context, key string) (string, error)
	// Remember stores fingerprint under key, replacing what was there.
	Remember(ctx context.Context, key, fingerprint string) error
}

// ForAnotherNode says the name makes the file a message of another node than
// node (exchange.Name.MayBeFrom): a pickup leaves it alone, as in a folder
// or mailbox shared with what is delivered to the node. A name that does
// not parse is not judged here: the content check says what is wrong; nor
// one that names no node (nobodys: the pickup shows it).
func ForAnotherNode(name, node string, isNode func(string) bool) bool {
	n, err := exchange.ParseName(name)
	return err == nil && !n.MayBeFrom(node, isNode) && (isNode == nil || n.NamesANode(isNode))
}

// Stranded says a name a pickup leaves to another node (ForAnotherNode)
// has a sender routing.yaml does not have: no pickup anywhere takes it
// (found walking through the quick start: Message_CO_SHOP1.xml in ЦО's
// outbox, CO no node, waited unseen). isNode nil: any code is a node.
func Stranded(name string, isNode func(string) bool) bool {
	n, err := exchange.ParseName(name)
	// No reading's sender is a node: a name a node's pickup reads as its
	// own (Message_A_X_Y.xml, A's to X_Y) is no stranger's (found by
	// review).
	return err == nil && isNode != nil && !slices.ContainsFunc(n.Senders(), isNode)
}

// Nobodys says why a Message_ name is no node's relay knows, "" when it is
// some node's: not UTF-8 (read in the wrong encoding), or no node's code
// at either end (isNode nil: any code is a node).
func Nobodys(name string, isNode func(string) bool) string {
	if !utf8.ValidString(name) {
		as1251, _ := charmap.Windows1251.NewDecoder().String(name)
		return fmt.Sprintf("the name is not UTF-8 (as Windows-1251 it reads %s: for an FTP folder, set encoding: cp1251)", as1251)
	}
	n, err := exchange.ParseName(name)
	if err != nil || isNode == nil || n.NamesANode(isNode) {
		return ""
	}
	return "neither code of the name is a node of routing.yaml (a code 1C writes otherwise, or for an FTP folder the wrong encoding?)"
}

// heldPrefix starts the name a commit holds a file under (HeldName).
const heldPrefix = "relay-commit-"

// HeldName is the name a commit gives the file name before it looks at it
// and deletes or moves it: 1C's next message written under name meanwhile
// is a new file, never the one deleted (found by review: between the look
// and the DELE an FTP commit deleted 1C's newer file unread). 1C reads no
// such name. One a commit leaves (the file changed, the delete failed, the
// relay stopped) is taken as the message name it holds (MessageName).
func HeldName(name string) string { return heldPrefix + name }

// IsHeldName says base is a HeldName, and of which file.
func IsHeldName(base string) (name string, ok bool) {
	name, ok = strings.CutPrefix(base, heldPrefix)
	return name, ok && IsMessageName(name)
}

// MessageName is the message file name a folder entry holds: its own, or
// the one a HeldName holds.
func MessageName(base string) string {
	if name, ok := IsHeldName(base); ok {
		return name
	}
	return base
}

// Listed says a source hands the folder entry base to the pickup: a
// message file, a commit's held one (MessageName), or a name the pickup
// tells of as passed over (PassedOver).
func Listed(base string) bool { return IsMessageName(MessageName(base)) || PassedOver(base) }

// IsMessageName is the cheap filter: Message_*.xml|.zip, extension in any case.
func IsMessageName(base string) bool {
	if !strings.HasPrefix(base, "Message_") {
		return false
	}
	ext := strings.ToLower(path.Ext(base))
	return ext == ".xml" || ext == ".zip"
}

// Spool downloads r into a new file in dir and returns it positioned for
// random access; at most limit bytes are accepted. The file is removed by
// Release.
func Spool(ctx context.Context, dir string, r io.Reader, limit int64) (Fetched, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return Fetched{}, err
	}
	f, err := os.CreateTemp(dir, spoolPattern)
	if err != nil {
		return Fetched{}, err
	}
	release := func() { f.Close(); os.Remove(f.Name()) }
	n, err := io.CopyBuffer(f, io.LimitReader(CtxReader{Ctx: ctx, R: r}, limit+1), make([]byte, 256<<10))
	if err == nil && n > limit {
		err = errTooBig{limit}
	}
	if err != nil {
		release()
		return Fetched{}, err
	}
	return Fetched{File: f, Size: n, Release: release, Copy: true}, nil
}

// ClearSpool removes the spool copies a killed relay left in dir: a
// download cut off by SIGKILL or a power loss is never released, and each
// one is as large as its message. dir belongs to one pickup, which calls
// this before it starts.
func ClearSpool(dir string, log *slog.Logger) {
	olds, _ := filepath.Glob(filepath.Join(dir, spoolPattern))
	for _, f := range olds {
		if err := os.Remove(f); err != nil {
			log.Warn("cannot remove a spool file left by an earlier run", "file", f, "err", err)
			continue
		}
		log.Info("removed a spool file left by an earlier run", "file", f)
	}
}

// spoolPattern names spool files (os.CreateTemp pattern and glob alike).
const spoolPattern = "pickup-*.spool"

type errTooBig struct{ limit int64 }

func (e errTooBig) Error() string {
	return fmt.Sprintf("file is larger than the %d-byte limit", e.limit)
}

// Unwrap makes errors.Is(err, exchange.ErrTooLarge) true.
func (e errTooBig) Unwrap() error { return exchange.ErrTooLarge }

// CtxReader stops a copy when the context ends.
type CtxReader struct {
	Ctx context.Context
	R   io.Reader
}

// Read fails with the context's error once it is done.
func (c CtxReader) Read(b []byte) (int, error) {
	if err := c.Ctx.Err(); err != nil {
		return 0, err
	}
	return c.R.Read(b)
}
