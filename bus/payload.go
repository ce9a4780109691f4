package bus

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/relay1c/relay/exchange"
)

// OpenPayload streams an object of EXCHANGE_PAYLOADS one chunk at a time and
// checks its digest at the end. ObjectStore.Get instead creates a push
// consumer per read that sends the whole object as fast as the server can,
// so a slow writer holds hundreds of MiB of chunks, and a busy relay churns
// through consumers until the server's consumer limit refuses new ones. Here
// each chunk is one direct get (next message on the chunk subject): no
// consumer, at most one chunk (128 KiB) in memory.
func (b *Bus) OpenPayload(ctx context.Context, name string) (io.ReadCloser, error) {
	info, err := b.Payloads.GetInfo(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("payload %s: %w", name, err)
	}
	return &payloadReader{
		ctx: ctx, s: b.payloadStream, objects: b.Payloads, name: name,
		subject: chunkSubject(info.NUID),
		want:    info.Digest, left: int64(info.Size), sum: sha256.New(),
	}, nil
}

// PutPayload stores the payload name from r, which holds about size bytes
// (-1: unknown). A payload that fits one chunk (up to 128 KiB, the size of
// nearly every exchange message) is written as ObjectStore.Put would write it
// (a chunk, then the meta with a rollup), but on a chunk subject derived from
// the name and in one round trip: Put also reads the old meta first and
// opens a reply subscription of its own per call, three of the handful of
// requests a message costs. The name must identify the content (ingest
// names a payload by its message and sha256): the chunk is written only if
// its subject is empty, so a second put of the same name finds its chunk
// there and rewrites only the meta. Larger payloads go through putChunks.
//
// It returns what it stored: the size and the sha256 (hex) of the bytes it
// read, which the caller compares with what it expected.
func (b *Bus) PutPayload(ctx context.Context, name string, size int64, r io.Reader) (stored int64, sha256hex string, err error) {
	// An ended ctx stores nothing: the answers to a small put's two
	// publishes can be in before the wait for them looks at ctx.
	if err := ctx.Err(); err != nil {
		return 0, "", fmt.Errorf("payload %s: %w", name, err)
	}
	buf := make([]byte, exchange.BufferSize(size, maxChunk))
	n, err := readChunk(r, buf)
	switch {
	case err != nil:
		return 0, "", fmt.Errorf("payload %s: read: %w", name, err)
	case n == len(buf):
		// Larger than one chunk (or than size said): stream the rest.
		return b.putChunks(ctx, name, io.MultiReader(bytes.NewReader(buf), r))
	}
	data := buf[:n]
	nuid := payloadNUID(name)
	sum := sha256.Sum256(data)
	info := jetstream.ObjectInfo{
		ObjectMeta: payloadMeta(name, int64(n)), Bucket: BucketPayloads, NUID: nuid,
		Size: uint64(n), Digest: digestOf(sum[:]),
	}
	var chunk jetstream.PubAckFuture
	if n > 0 {
		info.Chunks = 1
		chunk, err = b.JS.PublishAsync(chunkSubject(nuid), data, jetstream.WithExpectLastSequencePerSubject(0), jetstream.WithStallWait(putAckWait))
		if err != nil {
			return 0, "", fmt.Errorf("payload %s: chunk: %w", name, err)
		}
	}
	f, err := b.publishMeta(&info)
	if err != nil {
		return 0, "", err
	}
	if chunk != nil {
		if err := ackedWithin(ctx, chunk, putAckWait); err != nil && !wrongLastSeq(err) {
			// The meta went out with the chunk, unanswered: it must not
			// stand over a chunk that is not there (HasPayload would take
			// the payload for stored).
			b.undoMeta(ctx, name, f)
			return 0, "", fmt.Errorf("payload %s: chunk: %w", name, err)
		}
	}
	if err := ackedWithin(ctx, f, putAckWait); err != nil {
		return 0, "", fmt.Errorf("payload %s: meta: %w", name, err)
	}
	return int64(n), hex.EncodeToString(sum[:]), nil
}

// readChunk fills buf from r, stopping early only at the end of r (io.EOF,
// which it does not return). Any other error fails the read: a truncated
// stream (io.ErrUnexpectedEOF from a cut HTTP body, a base64 part, a flate
// stream) is not the end of a payload, as io.ReadFull would have it.
func readChunk(r io.Reader, buf []byte) (int, error) {
	n, idle := 0, 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		if k < 0 || k > len(buf)-n {
			return n, fmt.Errorf("reader returned %d bytes for %d", k, len(buf)-n)
		}
		n += k
		switch {
		case err == io.EOF:
			return n, nil
		case err != nil:
			return n, err
		case k > 0:
			idle = 0
		default:
			if idle++; idle >= 100 {
				return n, io.ErrNoProgress
			}
		}
	}
	return n, nil
}

// undoMeta removes the meta of name that publish f sent, once its answer is
// in (or the wait is over), by its sequence when it came, else by subject.
// It is for a put that failed after sending the meta: a meta that stands
// over missing chunks is a payload that fails only when read.
func (b *Bus) undoMeta(ctx context.Context, name string, f jetstream.PubAckFuture) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	ack, err := ackOf(dctx, f, 5*time.Second)
	if err != nil {
		_ = b.payloadStream.Purge(dctx, jetstream.WithPurgeSubject(metaSubject(name)))
		return
	}
	b.deleteMeta(ctx, ack.Sequence)
}

// deleteMeta deletes the meta stored at seq, and nothing else: a later meta
// of the same name (another put's) stands. It has a short time of its own,
// as ctx may be what ended the put.
func (b *Bus) deleteMeta(ctx context.Context, seq uint64) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = b.payloadStream.DeleteMsg(dctx, seq)
}

// HasPayload says the payload name is stored whole with size bytes of
// sha256 sha256hex (its meta says so; the chunks were written before it).
func (b *Bus) HasPayload(ctx context.Context, name string, size int64, sha256hex string) (bool, error) {
	sum, err := hex.DecodeString(sha256hex)
	if err != nil || len(sum) != sha256.Size || size < 0 {
		return false, nil
	}
	info, err := b.Payloads.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("payload %s: %w", name, err)
	}
	return !info.Deleted && info.Size == uint64(size) && info.Digest == digestOf(sum), nil
}

// publishMeta publishes an object's meta, replacing the one before it.
func (b *Bus) publishMeta(info *jetstream.ObjectInfo) (jetstream.PubAckFuture, error) {
	meta := nats.NewMsg(metaSubject(info.Name))
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	var err error
	if meta.Data, err = json.Marshal(info); err != nil {
		return nil, fmt.Errorf("payload %s: meta: %w", info.Name, err)
	}
	f, err := b.JS.PublishMsgAsync(meta, jetstream.WithStallWait(putAckWait))
	if err != nil {
		return nil, fmt.Errorf("payload %s: meta: %w", info.Name, err)
	}
	return f, nil
}

// putWindow is how many chunks of one payload may await JetStream's answer
// at once. ObjectStore.Put publishes on a JetStream context of its own that
// allows 4,000 unanswered publishes: reading a large file faster than the
// server stores it, it held ~130 MiB of chunks on the way for a 1 GiB
// message. Eight chunks (1 MiB) keep the server busy and the memory flat.
const putWindow = 8

// putChunks stores a payload of any size as ObjectStore.Put would (its
// chunks on a subject of their own, then the meta, and the chunks of the
// payload it replaces purged), with at most putWindow chunks in flight,
// each in a buffer of its own that is reused only once it is answered. The
// meta is written once every chunk is stored; a failure before that purges
// the chunks written so far. A put cut short by a crash cannot purge
// anything: before its first chunk it leaves a marker (a meta marked
// deleted, under partialName) that names its chunks, and the next put of
// the same name (the file taken again after the restart) purges them.
func (b *Bus) putChunks(ctx context.Context, name string, r io.Reader) (stored int64, sha256hex string, err error) {
	old, err := b.Payloads.GetInfo(ctx, name, jetstream.GetObjectInfoShowDeleted())
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, "", fmt.Errorf("payload %s: %w", name, err)
	}
	info := jetstream.ObjectInfo{ObjectMeta: payloadMeta(name, -1), Bucket: BucketPayloads, NUID: nuid.Next()}
	subj := chunkSubject(info.NUID)
	if err := b.markPartial(ctx, name, info.NUID); err != nil {
		return 0, "", err
	}
	type pending struct {
		f   jetstream.PubAckFuture
		buf []byte
	}
	var inflight []pending // unanswered, oldest first
	// next waits for the oldest unanswered publish and takes it off the list.
	next := func(ctx context.Context) (buf []byte, err error) {
		p := inflight[0]
		inflight = inflight[1:]
		// A slow store is fine as long as it moves: the time limit is
		// for one answer, not for the whole payload.
		return p.buf, ackedWithin(ctx, p.f, putAckWait)
	}
	var meta jetstream.PubAckFuture // the meta's publish, once sent
	defer func() {
		if err == nil {
			return
		}
		// The chunks written so far are of no use. Those still on their
		// way would land after a purge: wait for their answers first. ctx
		// may be what ended, so this has a short time of its own.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for len(inflight) > 0 && pctx.Err() == nil {
			_, _ = next(pctx)
		}
		if meta != nil {
			// The meta went out unanswered. Stored, it stands over these
			// chunks: they are the payload, whole. Whether it was cannot
			// be told: they stay with the marker, and the sweep looks
			// again (liveChunks).
			_, aerr := ackOf(pctx, meta, 5*time.Second)
			var api *jetstream.APIError
			switch {
			case aerr == nil:
				b.dropMarker(pctx, name, info.NUID)
				return
			case !errors.As(aerr, &api):
				return
			}
		}
		if b.payloadStream.Purge(pctx, jetstream.WithPurgeSubject(subj)) == nil {
			b.dropMarker(pctx, name, info.NUID)
		}
	}()
	markEvery := b.markEvery
	if markEvery <= 0 {
		markEvery = markRefresh
	}
	marked := time.Now()
	sum := sha256.New()
	for {
		if time.Since(marked) >= markEvery {
			// A put that moves is not unfinished: its marker's age is
			// what SweepPartial goes by.
			if !b.ownsMarker(ctx, name, info.NUID) {
				return 0, "", fmt.Errorf("payload %s: another put of it took over", name)
			}
			if err = b.writeMarker(ctx, name, info.NUID); err != nil {
				return 0, "", err
			}
			marked = time.Now()
		}
		var buf []byte
		if len(inflight) < putWindow {
			buf = make([]byte, maxChunk)
		} else {
			// The window is full: wait for the oldest chunk's answer.
			n := info.Chunks - uint32(len(inflight)) + 1
			if buf, err = next(ctx); err != nil {
				return 0, "", fmt.Errorf("payload %s: chunk %d: %w", name, n, err)
			}
		}
		n, rerr := readChunk(r, buf)
		if n > 0 {
			sum.Write(buf[:n])
			f, err := b.JS.PublishAsync(subj, buf[:n], jetstream.WithStallWait(putAckWait))
			if err != nil {
				return 0, "", fmt.Errorf("payload %s: chunk %d: %w", name, info.Chunks+1, err)
			}
			inflight = append(inflight, pending{f, buf})
			info.Chunks++
			info.Size += uint64(n)
		}
		if rerr != nil {
			return 0, "", fmt.Errorf("payload %s: read: %w", name, rerr)
		}
		if n < len(buf) {
			break // the end of r
		}
	}
	// Every chunk is stored before the meta names them: a meta over a
	// missing chunk would be a payload that fails only when read.
	for len(inflight) > 0 {
		n := info.Chunks - uint32(len(inflight)) + 1
		if _, err = next(ctx); err != nil {
			return 0, "", fmt.Errorf("payload %s: chunk %d: %w", name, n, err)
		}
	}
	// Another put of the same name (the same bytes: names identify their
	// content) that began after this one has purged these chunks, taking
	// them for a crash's leftovers; its meta, not this one's, must stand.
	if !b.ownsMarker(ctx, name, info.NUID) {
		return 0, "", fmt.Errorf("payload %s: another put of it took over", name)
	}
	digest := sum.Sum(nil)
	info.Digest = digestOf(digest)
	f, err := b.publishMeta(&info)
	if err != nil {
		return 0, "", err
	}
	meta = f
	ack, err := ackOf(ctx, f, putAckWait)
	if err != nil {
		if api := (*jetstream.APIError)(nil); errors.As(err, &api) {
			meta = nil // refused: not stored, and its answer is taken
		}
		return 0, "", fmt.Errorf("payload %s: meta: %w", name, err)
	}
	// A put of the same name that began between the marker check above
	// and the meta's write has purged these chunks: the meta, which names
	// them, goes again, and the other put's stands.
	if st, err := b.payloadStream.Info(ctx, jetstream.WithSubjectFilter(subj)); err != nil || st.State.Subjects[subj] != uint64(info.Chunks) {
		b.deleteMeta(ctx, ack.Sequence)
		meta = nil
		if err != nil {
			return 0, "", fmt.Errorf("payload %s: count chunks: %w", name, err)
		}
		return 0, "", fmt.Errorf("payload %s: another put of it took over", name)
	}
	b.dropMarker(ctx, name, info.NUID)
	if old != nil && old.NUID != info.NUID {
		// The payload it replaces: its chunks are unreachable now.
		_ = b.payloadStream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubject(old.NUID)))
	}
	return int64(info.Size), hex.EncodeToString(digest), nil
}

// putAckWait bounds the wait for JetStream's answers to a payload's writes.
const putAckWait = 30 * time.Second

// markRefresh is how often a put rewrites its marker: far below the
// sweep's age (a day).
const markRefresh = 10 * time.Minute

// partialName is the name of the marker a put of name leaves while it
// writes its chunks. Object names are "<plan>/<from>/<to>/<no>/<sha256>" or
// "dead/<uuid>", so this one is never a payload's.
func partialName(name string) string { return "partial:" + name }

// markPartial records that the chunks of the payload name are being written
// on nuid's subject, after purging the chunks of an earlier put of the same
// name that a crash cut short. The marker is a meta marked deleted: the
// object store's own reads and listings do not see it.
func (b *Bus) markPartial(ctx context.Context, name, nuid string) error {
	marker := partialName(name)
	prev, err := b.Payloads.GetInfo(ctx, marker, jetstream.GetObjectInfoShowDeleted())
	switch {
	case err == nil:
		live, err := b.liveChunks(ctx, name, prev.NUID)
		if err != nil {
			return err
		}
		if !live {
			if err := b.payloadStream.Purge(ctx, jetstream.WithPurgeSubject(chunkSubject(prev.NUID))); err != nil {
				return fmt.Errorf("payload %s: purge the chunks of a put cut short: %w", name, err)
			}
		}
	case !errors.Is(err, jetstream.ErrObjectNotFound):
		return fmt.Errorf("payload %s: %w", name, err)
	}
	return b.writeMarker(ctx, name, nuid)
}

// liveChunks says the stored meta of name names nuid's chunks: a marker
// left over them (its put succeeded, but the marker's removal did not) must
// not take them away.
func (b *Bus) liveChunks(ctx context.Context, name, nuid string) (bool, error) {
	m, err := b.Payloads.GetInfo(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("payload %s: %w", name, err)
	}
	return m.NUID == nuid, nil
}

// writeMarker writes (or rewrites, for its age) the partial-put marker of
// name, naming nuid's chunks.
func (b *Bus) writeMarker(ctx context.Context, name, nuid string) error {
	marker := partialName(name)
	info := jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: marker}, Bucket: BucketPayloads, NUID: nuid, Deleted: true}
	f, err := b.publishMeta(&info)
	if err != nil {
		return err
	}
	if err := ackedWithin(ctx, f, putAckWait); err != nil {
		return fmt.Errorf("payload %s: marker: %w", name, err)
	}
	return nil
}

// ownsMarker says the partial-put marker of name still names nuid's chunks.
func (b *Bus) ownsMarker(ctx context.Context, name, nuid string) bool {
	m, err := b.Payloads.GetInfo(ctx, partialName(name), jetstream.GetObjectInfoShowDeleted())
	return err == nil && m.NUID == nuid
}

// dropMarker removes the partial-put marker of name if it is still the one
// naming nuid's chunks (another put of the same name may have replaced it).
func (b *Bus) dropMarker(ctx context.Context, name, nuid string) {
	if b.ownsMarker(ctx, name, nuid) {
		_ = b.payloadStream.Purge(ctx, jetstream.WithPurgeSubject(metaSubject(partialName(name))))
	}
}

// ackedWithin waits for an asynchronous publish's answer, for at most d:
// an answer lost without a reconnect (which fails the futures) would leave
// the wait to ctx alone, and the ingest's ctx has no deadline.
func ackedWithin(ctx context.Context, f jetstream.PubAckFuture, d time.Duration) error {
	_, err := ackOf(ctx, f, d)
	return err
}

// ackOf is ackedWithin that also returns the answer.
func ackOf(ctx context.Context, f jetstream.PubAckFuture, d time.Duration) (*jetstream.PubAck, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case a := <-f.Ok():
		return a, nil
	case err := <-f.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("no answer from JetStream within %s", d)
	}
}

// wrongLastSeq says a publish was refused because its subject was not as
// expected (for a chunk: it is there already).
func wrongLastSeq(err error) bool {
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// OpenKnownPayload is OpenPayload for a payload whose size and sha256 (hex)
// the caller knows from the record: it reads the chunk subject PutPayload
// wrote without looking the object up first, and falls back to OpenPayload
// when that subject is empty (a payload stored by Put, or replaced).
func (b *Bus) OpenKnownPayload(ctx context.Context, name string, size int64, sha256hex string) (io.ReadCloser, error) {
	sum, err := hex.DecodeString(sha256hex)
	if err != nil || len(sum) != sha256.Size || size < 0 || size > maxChunk {
		return b.OpenPayload(ctx, name)
	}
	r := &payloadReader{
		ctx: ctx, s: b.payloadStream, objects: b.Payloads, name: name,
		subject: chunkSubject(payloadNUID(name)),
		want:    digestOf(sum), left: size, sum: sha256.New(),
	}
	if size == 0 {
		return r, nil
	}
	if err := r.fill(); err != nil {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return b.OpenPayload(ctx, name)
		}
		return nil, err
	}
	return r, nil
}

// DeletePayload removes a payload and leaves nothing of it: its chunks and
// its meta are purged. ObjectStore.Delete instead leaves a delete marker on
// the meta subject for good, one per message in a bucket without a max age
// (the store and the server's per-subject index would grow for ever), and
// that marker, a publish, would not cross a leaf connection to another
// relay's domain either. A payload already marked deleted is purged too.
func (b *Bus) DeletePayload(ctx context.Context, name string) error {
	info, err := b.Payloads.GetInfo(ctx, name, jetstream.GetObjectInfoShowDeleted())
	if err != nil {
		return fmt.Errorf("payload %s: %w", name, err)
	}
	// The meta goes first: chunks left by a failure in between are only
	// space (a one-chunk payload's are found again by a put of the same
	// name), while a meta left over missing chunks would say "stored".
	return b.purge(ctx, name, metaSubject(name), chunkSubject(info.NUID))
}

// purgeObject purges the chunks (on nuid's subject) and then the meta of
// the object name.
func (b *Bus) purgeObject(ctx context.Context, name, nuid string) error {
	return b.purge(ctx, name, chunkSubject(nuid), metaSubject(name))
}

// purge purges the subjects of object name in EXCHANGE_PAYLOADS, in order,
// stopping at the first that fails.
func (b *Bus) purge(ctx context.Context, name string, subjects ...string) error {
	for _, subj := range subjects {
		if err := b.payloadStream.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return fmt.Errorf("payload %s: purge %s: %w", name, subj, err)
		}
	}
	return nil
}

// maxChunk is the largest chunk a payload is stored in (ObjectStore's default).
const maxChunk = 128 << 10

// payloadNUID is the chunk subject token PutPayload uses for name.
func payloadNUID(name string) string {
	sum := sha256.Sum256([]byte("relay payload " + name))
	return hex.EncodeToString(sum[:16])
}

// digestOf is an object's digest as the object store writes it.
func digestOf(sum []byte) string {
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum)
}

// metaSubject is the subject of an object's meta in EXCHANGE_PAYLOADS.
func metaSubject(name string) string {
	return metaPrefix + base64.URLEncoding.EncodeToString([]byte(name))
}

// metaPrefix begins every meta subject of EXCHANGE_PAYLOADS.
const metaPrefix = "$O." + BucketPayloads + ".M."

// payloadMeta is the object meta of a payload of size bytes (-1: unknown):
// its chunk size is what the payload needs, up to maxChunk (the chunk size
// ends up in the meta, and Put allocates one chunk buffer of it per call).
func payloadMeta(name string, size int64) jetstream.ObjectMeta {
	return jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: uint32(exchange.BufferSize(size, maxChunk))}}
}

// chunkSubject is the subject of an object's chunks in EXCHANGE_PAYLOADS.
func chunkSubject(nuid string) string { return "$O." + BucketPayloads + ".C." + nuid }

type payloadReader struct {
	ctx     context.Context
	s       jetstream.Stream
	objects jetstream.ObjectStore // tells a payload gone from one stored again
	name    string
	subject string
	next    uint64 // stream sequence to look from
	want    string
	left    int64
	cur     []byte
	sum     hash.Hash
	err     error
}

func (r *payloadReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(r.cur) == 0 {
		if r.left == 0 {
			got := digestOf(r.sum.Sum(nil))
			if r.want != "" && got != r.want {
				r.err = exchange.Permanent(fmt.Errorf("payload %s: %w: digest %s, want %s", r.name, exchange.ErrDamaged, got, r.want))
			} else {
				r.err = io.EOF
			}
			return 0, r.err
		}
		if err := r.fill(); err != nil {
			r.err = err
			return 0, err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// fill reads the next chunk into cur.
func (r *payloadReader) fill() error {
	m, err := r.s.GetMsg(r.ctx, max(r.next, 1), jetstream.WithGetMsgSubject(r.subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Its chunks are gone under the reader: deleted with the payload
		// (gone, as one whose meta is), replaced by a put of the same name
		// (stored again: a read from the start finds it), or missing under
		// the very record being read (damaged: no read ever finds them).
		info, ierr := r.objects.GetInfo(r.ctx, r.name)
		switch {
		case errors.Is(ierr, jetstream.ErrObjectNotFound):
			return fmt.Errorf("payload %s: chunk after seq %d: %w (%w)", r.name, r.next, jetstream.ErrObjectNotFound, err)
		case ierr == nil && chunkSubject(info.NUID) == r.subject:
			// A one-chunk payload stored again keeps its NUID
			// (payloadNUID): its chunk, written before its meta, is
			// there now. Only a chunk still missing is damage.
			_, again := r.s.GetMsg(r.ctx, max(r.next, 1), jetstream.WithGetMsgSubject(r.subject))
			if errors.Is(again, jetstream.ErrMsgNotFound) {
				return exchange.Permanent(fmt.Errorf("payload %s: %w: its data ends %d bytes before its size (no chunk after seq %d)", r.name, exchange.ErrDamaged, r.left, r.next))
			}
			return fmt.Errorf("payload %s: chunk after seq %d: stored again while read: %w", r.name, r.next, err)
		}
	}
	if err != nil {
		return fmt.Errorf("payload %s: chunk after seq %d: %w", r.name, r.next, err)
	}
	r.next = m.Sequence + 1
	r.cur = m.Data
	if int64(len(r.cur)) > r.left {
		return exchange.Permanent(fmt.Errorf("payload %s: %w: more data than its size", r.name, exchange.ErrDamaged))
	}
	r.left -= int64(len(r.cur))
	r.sum.Write(r.cur)
	return nil
}

// Close releases nothing: a payload reader holds no server resources.
func (r *payloadReader) Close() error { return nil }

// SweepPartial removes what puts cut short by a crash left behind and no
// later put of the same name cleared (a dead letter's payload, or a file
// that was gone when the relay came back): markers older than olderThan,
// with their chunks. A put still writing is younger than any sensible
// olderThan (a day: a 16 GiB message at 1 MB/s takes under five hours).
// It returns how many it removed.
func (b *Bus) SweepPartial(ctx context.Context, olderThan time.Duration) (int, error) {
	info, err := b.payloadStream.Info(ctx, jetstream.WithSubjectFilter(metaPrefix+">"))
	if err != nil {
		return 0, fmt.Errorf("payloads: list metas: %w", err)
	}
	n := 0
	for subj := range info.State.Subjects {
		raw, err := base64.URLEncoding.DecodeString(strings.TrimPrefix(subj, metaPrefix))
		if err != nil || !strings.HasPrefix(string(raw), partialName("")) {
			continue
		}
		m, err := b.Payloads.GetInfo(ctx, string(raw), jetstream.GetObjectInfoShowDeleted())
		if err != nil || time.Since(m.ModTime) < olderThan {
			continue
		}
		live, err := b.liveChunks(ctx, strings.TrimPrefix(string(raw), partialName("")), m.NUID)
		if err != nil {
			continue // looked at again at the next sweep
		}
		if live {
			// The put succeeded; only its marker was left behind.
			if err := b.purge(ctx, string(raw), subj); err != nil {
				return n, err
			}
			continue
		}
		if err := b.purgeObject(ctx, string(raw), m.NUID); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}
