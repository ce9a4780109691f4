package exchange

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/url"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Metadata keys of a Watermill message that carries an exchange message
// between adapters and the pipeline. The same keys travel as NATS headers on
// the EXCHANGE stream, so a record there is readable without the payload.
const (
	MetaPlan       = "Relay-Plan"
	MetaFrom       = "Relay-From"
	MetaTo         = "Relay-To"
	MetaMessageNo  = "Relay-Message-No"
	MetaReceivedNo = "Relay-Received-No"
	MetaDialect    = "Relay-Dialect"
	// MetaFileName is the file name the message travels under (Message_A_B.xml).
	MetaFileName = "Relay-File"
	// MetaSize is the payload size in bytes.
	MetaSize = "Relay-Size"
	// MetaSHA256 is the lower-case hex sha256 of the payload.
	MetaSHA256 = "Relay-Sha256"
	// MetaObject is the payload's name in the object store (claim check).
	MetaObject = "Relay-Object"
	// MetaSource says where a pickup found the message (dir:/path/file).
	MetaSource = "Relay-Source"
	// MetaNode is the node whose pickup produced the message.
	MetaNode = "Relay-Node"
	// MetaProblem, set by a pickup, is the one-line reason the file is not a
	// valid message; the pipeline dead-letters such messages.
	MetaProblem = "Relay-Problem"
	// MetaKeepUnread, set by the pipeline on a sequential channel's
	// delivery, is "<acked>/<delivered>": the highest number of the
	// channel the addressee acknowledged and the highest relay delivered
	// (see Keep).
	MetaKeepUnread = "Relay-Keep-Unread"
)

// Keep says which earlier number of a channel a folder destination (one
// file per channel: dir, FTP, WebDAV) must not write over. A sequential
// node needs every message, and 1C never removes what it read: the file
// there is read only once the node acknowledged its number (a ReceivedNo
// on the reverse channel) or someone removed it. Latest mode keeps nothing
// (its next message carries all the earlier one's changes).
type Keep struct {
	// On is set for a sequential channel's message with a number.
	On bool
	// Acked and Delivered are the channel's acknowledged and delivered
	// numbers when the delivery began.
	Acked, Delivered uint64
}

// SetKeep writes k into a delivery's metadata (nothing when k is off).
func SetKeep(m *message.Message, k Keep) {
	if k.On {
		m.Metadata.Set(MetaKeepUnread, strconv.FormatUint(k.Acked, 10)+"/"+strconv.FormatUint(k.Delivered, 10))
	}
}

// KeepOf reads what SetKeep wrote; off when absent or unreadable.
func KeepOf(m *message.Message) Keep {
	acked, delivered, ok := strings.Cut(m.Metadata.Get(MetaKeepUnread), "/")
	if !ok {
		return Keep{}
	}
	a, err1 := strconv.ParseUint(acked, 10, 64)
	d, err2 := strconv.ParseUint(delivered, 10, 64)
	if err1 != nil || err2 != nil {
		return Keep{}
	}
	return Keep{On: true, Acked: a, Delivered: d}
}

// SetHeader writes h into the message metadata.
func SetHeader(m *message.Message, h Header) {
	m.Metadata.Set(MetaPlan, h.ExchangePlan)
	m.Metadata.Set(MetaFrom, h.From)
	m.Metadata.Set(MetaTo, h.To)
	m.Metadata.Set(MetaMessageNo, strconv.FormatUint(h.MessageNo, 10))
	m.Metadata.Set(MetaReceivedNo, strconv.FormatUint(h.ReceivedNo, 10))
	m.Metadata.Set(MetaDialect, string(h.Dialect))
}

// HeaderOf reads the header back from message metadata.
func HeaderOf(m *message.Message) (Header, error) {
	h := Header{
		ExchangePlan: m.Metadata.Get(MetaPlan),
		From:         m.Metadata.Get(MetaFrom),
		To:           m.Metadata.Get(MetaTo),
		Dialect:      Dialect(m.Metadata.Get(MetaDialect)),
	}
	var err error
	if h.Dialect == DialectName {
		// Routed by file name: no plan or numbers to read.
		if h.From == "" || h.To == "" {
			return h, fmt.Errorf("%w: metadata lacks from or to", ErrBadHeader)
		}
		return h, nil
	}
	if h.MessageNo, err = strconv.ParseUint(m.Metadata.Get(MetaMessageNo), 10, 64); err != nil || h.MessageNo == 0 {
		return h, fmt.Errorf("%w: metadata %s %q", ErrBadHeader, MetaMessageNo, m.Metadata.Get(MetaMessageNo))
	}
	if v := m.Metadata.Get(MetaReceivedNo); v != "" {
		if h.ReceivedNo, err = strconv.ParseUint(v, 10, 64); err != nil {
			return h, fmt.Errorf("%w: metadata %s %q", ErrBadHeader, MetaReceivedNo, v)
		}
	}
	if h.ExchangePlan == "" || h.From == "" || h.To == "" {
		return h, fmt.Errorf("%w: metadata lacks plan, from or to", ErrBadHeader)
	}
	return h, nil
}

// Opener opens a fresh stream of a message body; it may be called again for
// a retry, and every returned reader must be closed.
type Opener func(ctx context.Context) (io.ReadCloser, error)

type bodyKey struct{}

// SetBody attaches the body opener to the message. The body never rides in
// the Watermill payload: that would hold gigabytes in memory.
func SetBody(m *message.Message, open Opener) {
	m.SetContext(context.WithValue(m.Context(), bodyKey{}, open))
}

// Rebase moves the message onto ctx (a request's, say) and keeps its body.
func Rebase(m *message.Message, ctx context.Context) {
	open, _ := m.Context().Value(bodyKey{}).(Opener)
	m.SetContext(ctx)
	if open != nil {
		SetBody(m, open)
	}
}

// ErrNoBody is returned by Body for a message without an opener.
var ErrNoBody = errors.New("message has no body opener")

// Body opens the message body attached with SetBody.
func Body(ctx context.Context, m *message.Message) (io.ReadCloser, error) {
	open, ok := m.Context().Value(bodyKey{}).(Opener)
	if !ok || open == nil {
		return nil, ErrNoBody
	}
	return open(ctx)
}

// Delivery is what a delivery adapter reads of a message: the file name,
// header and size from the metadata, checked, and the opened body.
type Delivery struct {
	Name   string
	Header Header
	Size   int64
	SHA256 string
	// Keep is the earlier number the destination must not write over.
	Keep Keep
	// Body streams the payload; the caller closes it.
	Body io.ReadCloser
}

// OpenDelivery checks a message's delivery metadata and opens its body.
// Errors start with who (e.g. "ftp SHOP1"); bad metadata is Permanent, as no
// retry can fix it, while a body that cannot be opened is worth a retry.
func OpenDelivery(ctx context.Context, m *message.Message, who string) (Delivery, error) {
	d := Delivery{Name: m.Metadata.Get(MetaFileName), SHA256: m.Metadata.Get(MetaSHA256), Keep: KeepOf(m)}
	if _, err := ParseName(d.Name); err != nil {
		return d, Permanent(fmt.Errorf("%s: %w", who, err))
	}
	var err error
	if d.Header, err = HeaderOf(m); err != nil {
		return d, Permanent(fmt.Errorf("%s: %s: %w", who, d.Name, err))
	}
	if d.Size, err = strconv.ParseInt(m.Metadata.Get(MetaSize), 10, 64); err != nil || d.Size < 0 {
		return d, Permanent(fmt.Errorf("%s: %s: bad size metadata %q", who, d.Name, m.Metadata.Get(MetaSize)))
	}
	if d.Body, err = Body(ctx, m); err != nil {
		return d, fmt.Errorf("%s: %s: open body: %w", who, d.Name, err)
	}
	return d, nil
}

// EncodeHeaderValue writes a value for an HTTP header relay sends
// (X-Relay-From, X-Relay-File ...): percent-encoded UTF-8 (RFC 3986, as
// url.PathEscape writes it: ЦО is %D0%A6%D0%9E); plain ASCII names and
// numbers stay as they are. 1C decodes it with РаскодироватьСтроку(...,
// СпособКодированияСтроки.КодировкаURL).
func EncodeHeaderValue(s string) string { return url.PathEscape(s) }

// DecodeHeaderValue reads a header value written by EncodeHeaderValue, or
// an RFC 2047 encoded word, or plain text.
func DecodeHeaderValue(s string) string {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "=?") {
		if d, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
			return d
		}
	}
	if d, err := url.PathUnescape(s); err == nil {
		return d
	}
	return s
}

// ErrStale is returned by a delivery when the destination already holds a
// newer message of the same channel; the pipeline drops and counts it.
var ErrStale = errors.New("destination already holds a newer message")

// ErrInPlace is returned by a delivery when the destination already holds
// this very message (same channel and number, same size): an earlier
// attempt wrote it and the relay stopped before recording that. The
// pipeline records it as delivered without writing it a second time.
var ErrInPlace = errors.New("destination already holds this message")

// StaleError is ErrStale with the number the destination holds: the
// channel's delivered number moves up to it, so that in sequential mode the
// numbers up to it (which the destination has by another way) are not
// waited for.
type StaleError struct {
	// Where names the destination file, e.g. "dir B: Message_A_B.xml".
	Where string
	// Have is the MessageNo the destination holds; No is the refused one.
	Have, No uint64
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("%s holds No %d, this is No %d: %s", e.Where, e.Have, e.No, ErrStale)
}

// Unwrap makes errors.Is(err, ErrStale) hold.
func (e *StaleError) Unwrap() error { return ErrStale }

// ErrUnread is returned by a delivery of a sequential channel's message
// into a folder that still holds an earlier number of the channel its node
// has not acknowledged: writing over it would lose it. The pipeline holds
// the message and tries again.
var ErrUnread = errors.New("the node has not read it yet")

// UnreadError is ErrUnread naming the file and numbers, for the operator.
type UnreadError struct {
	// Where names the destination file, e.g. "dir B: Message_A_B.xml".
	Where string
	// Node is the addressee.
	Node string
	// Have is the number there, Acked the highest the node acknowledged,
	// No the one held.
	Have, Acked, No uint64
	// Unseen: the file's header was not read (Why says why); Have is the
	// last number delivered, taken for it.
	Unseen bool
	Why    string
}

func (e *UnreadError) Error() string {
	have, it := "an earlier number", "one"
	switch {
	case e.Unseen && e.Have > 0:
		have, it = fmt.Sprintf("No %d", e.Have), fmt.Sprintf("a file, taken for No %d (its header is not read: %s)", e.Have, e.Why)
	case e.Have > 0:
		have, it = fmt.Sprintf("No %d", e.Have), "it"
	}
	acked := fmt.Sprintf("acknowledged up to No %d", e.Acked)
	if e.Acked == 0 {
		acked = "nothing acknowledged yet"
	}
	return fmt.Sprintf("holding No %d until %s reads %s: %s still holds %s, unacknowledged (%s); written once %s's 1C sends back a message that acknowledges it, or the file is removed (sequential: overwriting it would lose it)", e.No, e.Node, have, e.Where, it, acked, e.Node)
}

// Unwrap makes errors.Is(err, ErrUnread) hold.
func (e *UnreadError) Unwrap() error { return ErrUnread }

// CheckReplace is what a delivery that reads the header of the file it is
// about to replace (have, of haveSize bytes, -1 if unknown; named where)
// makes of it before writing h, of size bytes, under k: a StaleError when
// the file is of the same channel with a higher number (an older message
// never overwrites a newer one, DESIGN §6.3), ErrInPlace when it is of the
// same channel and number and size (this message, written by an attempt
// the relay did not live to record), an UnreadError when k keeps it (a
// lower number its node has not acknowledged), else nil.
func CheckReplace(where string, have Header, haveSize int64, h Header, size int64, k Keep) error {
	if have.ExchangePlan != h.ExchangePlan || have.From != h.From || have.To != h.To || h.ByName() {
		return nil
	}
	switch {
	case have.MessageNo > h.MessageNo:
		return &StaleError{Where: where, Have: have.MessageNo, No: h.MessageNo}
	case have.MessageNo == h.MessageNo && haveSize == size:
		return fmt.Errorf("%s holds No %d already: %w", where, h.MessageNo, ErrInPlace)
	case k.On && have.MessageNo < h.MessageNo && have.MessageNo > k.Acked:
		return &UnreadError{Where: where, Node: h.To, Have: have.MessageNo, Acked: k.Acked, No: h.MessageNo}
	}
	return nil
}

// CheckUnknown is CheckReplace for a file there whose header the delivery
// does not read, for the reason why (a zip over FTP or WebDAV, an account
// that may not download): under k it is taken for the channel's last
// delivered number, kept while the node has not acknowledged that.
func CheckUnknown(where, why string, h Header, k Keep) error {
	if k.On && !h.ByName() && k.Delivered > k.Acked && k.Delivered < h.MessageNo {
		return &UnreadError{Where: where, Node: h.To, Have: k.Delivered, Acked: k.Acked, No: h.MessageNo, Unseen: true, Why: why}
	}
	return nil
}

// WhyZip is CheckUnknown's reason for a zip a remote delivery does not
// download: its header needs the central directory at its end.
const WhyZip = "a zip's header needs the whole download"

// StaleHave is the number the destination holds, if err says it (0 if not).
func StaleHave(err error) uint64 {
	var s *StaleError
	if errors.As(err, &s) {
		return s.Have
	}
	return 0
}

// ErrNotTaken is returned by a delivery that handed the message back
// without trying: its destination did not come for it here (a pulling node
// talking to another relay replica). The pipeline offers it again soon, to
// any replica, without counting a failure.
var ErrNotTaken = errors.New("destination did not take the message here")

// ErrStopping is returned by a delivery cut short because relay is
// stopping: not the destination's trouble, so nothing is held against the
// channel; the message is offered again after the restart.
var ErrStopping = errors.New("relay stopping")

type permanentError struct{ error }

func (p permanentError) Unwrap() error { return p.error }

// Permanent marks a delivery error that no retry can fix (a 5xx SMTP reply, a
// 4xx HTTP status, a name the destination refuses): the pipeline dead-letters
// the message instead of retrying it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

type progressedError struct{ error }

func (p progressedError) Unwrap() error { return p.error }

// Progressed marks a delivery error that came after part of the file
// reached the destination (parts of a split mail accepted): the pipeline
// tries again after its first, shortest wait, not after one grown by the
// earlier failures, so a server that takes a few mails at a time (a rate
// limit) still gets the whole set while the sender goes on with it.
func Progressed(err error) error {
	if err == nil {
		return nil
	}
	return progressedError{err}
}

// HasProgressed reports whether err, or an error it wraps, was marked
// Progressed.
func HasProgressed(err error) bool {
	var p progressedError
	return errors.As(err, &p)
}
