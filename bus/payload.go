package bus

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"io"

	"github.com/nats-io/nats.go/jetstream"

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
		ctx: ctx, s: b.payloadStream, name: name,
		subject: chunkSubject(info.NUID),
		want:    info.Digest, left: int64(info.Size), sum: sha256.New(),
	}, nil
}

// PayloadMeta names a payload of size bytes (-1: unknown) for
// ObjectStore.Put. Put allocates one chunk buffer per call, 128 KiB by
// default; a smaller payload gets a chunk of exchange.BufferSize (its size
// plus one byte, so a file that grew meanwhile still reads past its size)
// and is stored as one chunk.
func PayloadMeta(name string, size int64) jetstream.ObjectMeta {
	return jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: uint32(exchange.BufferSize(size, 128<<10))}}
}

// chunkSubject is the subject of an object's chunks in EXCHANGE_PAYLOADS.
func chunkSubject(nuid string) string { return "$O." + BucketPayloads + ".C." + nuid }

type payloadReader struct {
	ctx     context.Context
	s       jetstream.Stream
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
			got := "SHA-256=" + base64.URLEncoding.EncodeToString(r.sum.Sum(nil))
			if r.want != "" && got != r.want {
				r.err = fmt.Errorf("payload %s: digest %s, want %s", r.name, got, r.want)
			} else {
				r.err = io.EOF
			}
			return 0, r.err
		}
		m, err := r.s.GetMsg(r.ctx, max(r.next, 1), jetstream.WithGetMsgSubject(r.subject))
		if err != nil {
			r.err = fmt.Errorf("payload %s: chunk after seq %d: %w", r.name, r.next, err)
			return 0, r.err
		}
		r.next = m.Sequence + 1
		r.cur = m.Data
		if int64(len(r.cur)) > r.left {
			r.err = fmt.Errorf("payload %s: more data than its size", r.name)
			return 0, r.err
		}
		r.left -= int64(len(r.cur))
		r.sum.Write(r.cur)
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close releases nothing: a payload reader holds no server resources.
func (r *payloadReader) Close() error { return nil }
