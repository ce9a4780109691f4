package api

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/relay1c/relay/adapters/folder"
	"github.com/relay1c/relay/adapters/pull"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/pipeline"
)

// Outbox is a node's http_pull mailbox as the API uses it.
type Outbox interface {
	// Next leases the next waiting message, false when there is none.
	Next() (pull.Offer, bool)
	// Ack completes the delivery of a waiting message.
	Ack(id string) error
	// Release ends the lease of a message that could not be handed over
	// because of err, so the node's next request gets it; a stored file
	// found damaged or gone is not offered again (its delivery fails).
	Release(id string, err error)
	// Touch starts the lease of a message again from now: it is held while
	// the message is being sent, and counts from the end of the transfer.
	Touch(id string)
	// Sent records that a transfer of a message ended whole (only then
	// may the node acknowledge it) and starts its lease again.
	Sent(id string)
}

// PushReply is the answer to an accepted POST /api/v1/messages.
type PushReply struct {
	// ID is the message's relay id (as in `relay status`, dead letters, trace).
	ID        string `json:"id"`
	File      string `json:"file"`
	MessageNo uint64 `json:"message_no"`
	Size      int64  `json:"size"`
	SHA256    string `json:"sha256"`
	// Outcome is what became of it (pipeline.Outcome*): queued,
	// stored_before (the same file was taken in before: not queued
	// again), dropped (the addressee already has this number or a newer
	// one) or dead; Detail says why for all but queued.
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
}

// stallGuard gives each read of a push's body idle to bring data: an
// upload may take hours, a sender that stalls may not hold the connection.
type stallGuard struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (g stallGuard) Read(b []byte) (int, error) {
	_ = g.rc.SetReadDeadline(time.Now().Add(g.idle)) // a test's recorder has none: no limit there
	return g.ReadCloser.Read(b)
}

// formEnvelope is what a multipart/form-data push may add to the file:
// boundaries, part headers, other small fields.
const formEnvelope = 64 << 10

// push takes one message file, raw or as the first file of a multipart
// form, spools it, checks it like a pickup does and answers 202 only once
// JetStream holds it. A bad file is refused with 400 and not stored.
func (s *Server) push(w http.ResponseWriter, r *http.Request) {
	c, ok := s.identify(w, r)
	if !ok {
		return
	}
	if c.node != "" {
		s.nodePushesMu.Lock()
		held := s.nodePushes[c.node]
		if held < maxNodePushes {
			s.nodePushes[c.node]++
		}
		s.nodePushesMu.Unlock()
		if held >= maxNodePushes {
			refuse(w, http.StatusServiceUnavailable, fmt.Sprintf("node %s is sending %d messages already: not stored, try again", c.node, maxNodePushes))
			return
		}
		defer func() {
			s.nodePushesMu.Lock()
			if s.nodePushes[c.node]--; s.nodePushes[c.node] == 0 {
				delete(s.nodePushes, c.node)
			}
			s.nodePushesMu.Unlock()
		}()
	}
	select {
	case s.pushes <- struct{}{}:
		defer func() { <-s.pushes }()
	default:
		refuse(w, http.StatusServiceUnavailable, fmt.Sprintf("relay is taking %d messages already: not stored, try again", maxPushes))
		return
	}
	limit := int64(s.cfg.Relay.MaxMessageSize)
	// A form's envelope adds a little to the file: the early check allows
	// for it, and the spool checks the file itself.
	bodyLimit := limit
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "multipart/form-data" {
		bodyLimit += formEnvelope
	}
	if r.ContentLength > bodyLimit {
		refuse(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("message of %d bytes is larger than relay.max_message_size (%d bytes)", r.ContentLength, limit))
		return
	}
	r.Body = stallGuard{http.MaxBytesReader(w, r.Body, limit+formEnvelope), http.NewResponseController(w), s.pushIdle}
	name, body, rest, err := pushedFile(r)
	if err != nil {
		refuse(w, http.StatusBadRequest, err.Error())
		return
	}
	f, err := folder.Spool(r.Context(), s.spool, body, limit)
	var mbe *http.MaxBytesError
	var local *fs.PathError
	switch {
	case errors.Is(err, exchange.ErrTooLarge) || errors.As(err, &mbe):
		refuse(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("message is larger than relay.max_message_size (%d bytes)", limit))
		return
	case errors.As(err, &local):
		// relay's own trouble (disk full, spool folder unusable): the
		// file is fine and may be sent again; the reply names no path.
		s.log.Error("push: cannot spool the upload", "remote", r.RemoteAddr, "err", err)
		refuse(w, http.StatusServiceUnavailable, "relay cannot store the upload now (its spool folder; see its log): not stored, try again")
		return
	case err != nil:
		// A client that went away or stalled mid-upload: nothing was stored.
		s.log.Warn("push: upload broken off", "remote", r.RemoteAddr, "err", err)
		refuse(w, http.StatusBadRequest, "upload broken off: "+err.Error())
		return
	}
	defer f.Release()
	if err := rest(); err != nil {
		refuse(w, http.StatusBadRequest, err.Error())
		return
	}
	if name == "" {
		// The header names sender and addressee: the usual name follows.
		h, err := exchange.ReadFileHeader(f.File, f.Size, s.cfg.Limits(), "")
		if err != nil {
			writeErr(w, http.StatusBadRequest, oneLine(err.Error()))
			return
		}
		format := exchange.FormatXML
		if f.Ext() == ".zip" {
			format = exchange.FormatZip
		}
		name = exchange.FileName(h.From, h.To, format)
	}
	where := "api:" + r.RemoteAddr
	if c.node != "" {
		where = "api:" + c.node + "@" + r.RemoteAddr
	}
	msg, problem := folder.NewMessage(c.node, s.cfg.IsNode, where, name, f, s.cfg.Limits(), s.cfg.ZipPasswords)
	if problem != nil {
		writeErr(w, http.StatusBadRequest, oneLine(problem.Error()))
		return
	}
	h, err := exchange.HeaderOf(msg)
	if err != nil {
		writeErr(w, http.StatusBadRequest, oneLine(err.Error()))
		return
	}
	if c.node != "" && h.From != c.node {
		writeErr(w, http.StatusForbidden, fmt.Sprintf("the token of node %q cannot send messages from %q", c.node, h.From))
		return
	}
	if s.cfg.Nodes[h.From] == nil {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("unknown sender node %q: not in routing.yaml", h.From))
		return
	}
	// What ingest would dead-letter is the sender's to fix: refused here.
	if reason := pipeline.RouteProblem(s.cfg, h); reason != "" {
		writeErr(w, http.StatusBadRequest, "addressee: "+reason)
		return
	}
	msg.Metadata.Set(exchange.MetaNode, h.From)
	out, err := s.be.Push(r.Context(), msg)
	if err != nil {
		s.log.Error("push: not stored", "file", name, "err", err)
		writeErr(w, http.StatusServiceUnavailable, "not stored, try again: "+err.Error())
		return
	}
	sha := msg.Metadata.Get(exchange.MetaSHA256)
	id := pipeline.MessageID(h, sha)
	s.log.Info("message pushed", "file", name, "message_id", id, "outcome", out.Result, "remote", r.RemoteAddr)
	// The rest of a form (fields after the file: at most the envelope the
	// body's limit allows) is read, so that the connection stays open for
	// the sender's next push (closeUnread closes one with an unread body).
	_, _ = io.Copy(io.Discard, r.Body)
	writeJSON(w, http.StatusAccepted, PushReply{ID: id, File: name, MessageNo: h.MessageNo, Size: f.Size, SHA256: sha,
		Outcome: cmp.Or(out.Result, pipeline.OutcomeQueued), Detail: out.Detail})
}

// pushedFile finds the file in a push: the first file part of a
// multipart/form-data body, or the raw body; its name comes from the part,
// the ?name= query, X-Relay-File or Content-Disposition, or "" (the header
// decides). rest reads what follows the file (once it is read) and fails
// for a form with a second file: one message per push, not one stored and
// one dropped behind a 202 (found by review).
func pushedFile(r *http.Request) (name string, body io.Reader, rest func() error, err error) {
	none := func() error { return nil }
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt == "multipart/form-data" {
		mr, err := r.MultipartReader()
		if err != nil {
			return "", nil, nil, fmt.Errorf("multipart body: %w", err)
		}
		rest := func() error {
			for {
				p, err := mr.NextPart()
				switch {
				case errors.Is(err, io.EOF):
					return nil
				case err != nil:
					return fmt.Errorf("multipart body after the file: %w", err)
				case p.FileName() != "":
					return fmt.Errorf("the form holds a second file (%s): one message per push, nothing stored", filepath.Base(p.FileName()))
				}
				if _, err := io.Copy(io.Discard, p); err != nil {
					return fmt.Errorf("multipart body after the file: %w", err)
				}
			}
		}
		for {
			p, err := mr.NextPart()
			if err != nil {
				return "", nil, nil, errors.New("multipart body has no file part")
			}
			if p.FileName() != "" {
				return filepath.Base(p.FileName()), p, rest, nil
			}
		}
	}
	name = r.URL.Query().Get("name")
	if name == "" {
		name = exchange.DecodeHeaderValue(r.Header.Get("X-Relay-File"))
	}
	if name == "" {
		if _, params, err := mime.ParseMediaType(r.Header.Get("Content-Disposition")); err == nil {
			name = params["filename"]
		}
	}
	if strings.ContainsAny(name, `/\`) {
		return "", nil, nil, fmt.Errorf("file name %q: no folders", name)
	}
	return name, r.Body, none, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// pullNext hands the node its next waiting message: 200 with the file and
// its id in Relay-Message-Id, 204 when nothing waits.
func (s *Server) pullNext(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// The GET route takes HEAD too; a HEAD (a probe, a proxy's check)
		// would lease the message away from the node's next GET.
		w.Header().Set("Allow", http.MethodGet)
		writeErr(w, http.StatusMethodNotAllowed, "GET only: fetching the next message leases it")
		return
	}
	ob, code, ok := s.outbox(w, r)
	if !ok {
		return
	}
	o, any := ob.Next()
	if !any {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// The lease is held from now on while the message is opened and sent
	// (opening may wait on NATS, and a big file to a slow node may take
	// longer than the lease), so no other request gets it meanwhile; it
	// counts from the end of the transfer.
	stop := holdLease(ob, o)
	body, err := o.Open(r.Context())
	if err != nil {
		stop()
		ob.Release(o.ID, err)
		writeErr(w, http.StatusServiceUnavailable, "cannot read the message, try again: "+err.Error())
		return
	}
	defer body.Close()
	ctype := "application/xml"
	if strings.HasSuffix(strings.ToLower(o.Name), ".zip") {
		ctype = "application/zip"
	}
	hd := w.Header()
	hd.Set("Content-Type", ctype)
	hd.Set("Content-Length", strconv.FormatInt(o.Size, 10))
	hd.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": o.Name}))
	hd.Set("Relay-Message-Id", o.ID)
	hd.Set("Relay-Lease-Until", o.LeaseUntil.UTC().Format(time.RFC3339))
	hd.Set("X-Relay-File", exchange.EncodeHeaderValue(o.Name))
	hd.Set("X-Relay-From", exchange.EncodeHeaderValue(o.Header.From))
	hd.Set("X-Relay-To", exchange.EncodeHeaderValue(o.Header.To))
	if !o.Header.ByName() {
		// Routed by its file name: no plan or numbers to tell.
		hd.Set("X-Relay-Plan", exchange.EncodeHeaderValue(o.Header.ExchangePlan))
		hd.Set("X-Relay-Message-No", strconv.FormatUint(o.Header.MessageNo, 10))
		hd.Set("X-Relay-Received-No", strconv.FormatUint(o.Header.ReceivedNo, 10))
	}
	hd.Set("X-Relay-Sha256", o.SHA256)
	w.WriteHeader(http.StatusOK)
	// A node that takes nothing for pullIdle is cut off.
	rc := http.NewResponseController(w)
	// The last byte goes only once the stored file proved whole: the node
	// never holds a complete-looking copy of a damaged one.
	_, err = io.Copy(stallWriter{w, rc, s.pullIdle}, exchange.NewWholeReader(body, o.Size, o.SHA256))
	if err == nil {
		err = rc.Flush() // under the last write's deadline
	}
	_ = rc.SetWriteDeadline(time.Time{}) // the connection may serve more requests
	stop()
	if err != nil {
		ob.Release(o.ID, err)
		s.log.Warn("pull: transfer broken off; the message is offered again", "node", code, "file", o.Name, "err", err)
		return
	}
	ob.Sent(o.ID)
}

// stallWriter gives each write of a pulled file idle to be taken by the
// node: a transfer may take hours, a node that stops reading may not hold
// the handler (and the message's reader) for ever. It writes at most
// stallSlice bytes under one deadline, so that a node reading slowly but
// steadily (a few KiB a minute) is not cut off as one that stopped (found
// by review: io.Copy's 32 KiB writes each had one idle to go).
type stallWriter struct {
	w    io.Writer
	rc   *http.ResponseController
	idle time.Duration
}

// stallSlice is the most a pulled file's write sends under one deadline.
const stallSlice = 4 << 10

func (s stallWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k := min(len(b), stallSlice)
		_ = s.rc.SetWriteDeadline(time.Now().Add(s.idle)) // a test's recorder has none: no limit there
		m, err := s.w.Write(b[:k])
		n += m
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

// leaseRenewal is the longest time between two renewals of a lease held
// during a transfer.
const leaseRenewal = 5 * time.Second

// holdLease keeps the lease of o from running out until stop is called:
// it starts the lease again every third of it (at most leaseRenewal).
func holdLease(ob Outbox, o pull.Offer) (stop func()) {
	every := min(max(time.Until(o.LeaseUntil)/3, 50*time.Millisecond), leaseRenewal)
	t := time.NewTicker(every)
	done, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				ob.Touch(o.ID)
			}
		}
	}()
	return func() { close(done); <-ended }
}

// pullAck completes the delivery of a fetched message.
func (s *Server) pullAck(w http.ResponseWriter, r *http.Request) {
	ob, code, ok := s.outbox(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := ob.Ack(id); err != nil {
		if errors.Is(err, pull.ErrUnknownOffer) {
			writeErr(w, http.StatusNotFound, fmt.Sprintf("no message %q waits for node %q (already acknowledged?)", id, code))
			return
		}
		if errors.Is(err, pull.ErrNotSent) {
			writeErr(w, http.StatusConflict, fmt.Sprintf("message %q is not acknowledged: no transfer of it ended whole; fetch it again and acknowledge it once curl (or the like) succeeded and its sha256 matches X-Relay-Sha256", id))
			return
		}
		if errors.Is(err, pull.ErrWithdrawn) {
			// The relay is stopping, or the message went back to JetStream
			// before the acknowledgement came: not delivered, offered again.
			writeErr(w, http.StatusServiceUnavailable, fmt.Sprintf("message %q is not acknowledged: it is no longer offered here and will be offered again; fetch it again", id))
			return
		}
		writeErr(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log.Info("pulled message acknowledged", "node", code, "id", id)
	writeJSON(w, http.StatusOK, map[string]string{"acked": id})
}

// outbox authenticates a pull: only the node's own token may pull it.
func (s *Server) outbox(w http.ResponseWriter, r *http.Request) (Outbox, string, bool) {
	c, ok := s.identify(w, r)
	if !ok {
		return nil, "", false
	}
	code := r.PathValue("code")
	if c.node != code {
		writeErr(w, http.StatusForbidden, fmt.Sprintf("pulling the messages of node %q needs that node's own token (nodes.%s.api_token_env)", code, code))
		return nil, "", false
	}
	ob := s.be.Outbox(code)
	if ob == nil {
		writeErr(w, http.StatusNotFound, fmt.Sprintf("node %q does not deliver by http_pull on this relay", code))
		return nil, "", false
	}
	return ob, code, true
}
