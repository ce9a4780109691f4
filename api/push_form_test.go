package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/relay1c/relay/config"
	"github.com/relay1c/relay/exchange"
	"github.com/relay1c/relay/pipeline"
)

// storedFiles records the files of the messages it stored.
type storedFiles struct {
	*fakeBackend
	mu    sync.Mutex
	files []string
}

func (b *storedFiles) Push(_ context.Context, m *message.Message) (pipeline.Outcome, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.files = append(b.files, m.Metadata.Get(exchange.MetaFileName))
	return pipeline.Outcome{}, nil
}

// TestPushFormSecondFileRefused: a form with two files (curl -F
// a=@Message_CO_SHOP1.xml -F b=@Message_SHOP1_CO.xml) was answered 202
// while only the first file was stored, the second read into io.Discard
// (found by review). It is refused now, nothing stored: one message per
// push.
func TestPushFormSecondFileRefused(t *testing.T) {
	cfg, err := config.Parse([]byte(fmt.Sprintf("relay: { data_dir: %s }\nnodes:\n  CO:\n    pickup: { dir: a }\n    deliver: { dir: c }\n  SHOP1:\n    pickup: { dir: d }\n    deliver: { dir: b }\n", t.TempDir())))
	if err != nil {
		t.Fatal(err)
	}
	be := &storedFiles{fakeBackend: &fakeBackend{ready: true}}
	s := NewServer(cfg, be, "", slog.New(slog.DiscardHandler))
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, name := range []string{"Message_CO_SHOP1.xml", "Message_SHOP1_CO.xml"} {
		file, err := os.ReadFile("../testdata/fixtures/good/" + name)
		if err != nil {
			t.Fatal(err)
		}
		fw, _ := mw.CreateFormFile(strings.TrimSuffix(name, ".xml"), name)
		fw.Write(file)
	}
	mw.Close()
	r := httptest.NewRequest("POST", "http://127.0.0.1:8088/api/v1/messages", bytes.NewReader(buf.Bytes()))
	r.Header.Set("Content-Type", mw.FormDataContentType())
	r.RemoteAddr = "127.0.0.1:5000"
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusBadRequest || len(be.files) != 0 || !strings.Contains(w.Body.String(), "second file (Message_SHOP1_CO.xml)") {
		t.Errorf("form with two message files: %d %s, stored %v: want 400 naming the second file, nothing stored",
			w.Code, strings.TrimSpace(w.Body.String()), be.files)
	}
}

// TestPushNodeCannotHoldEverySlot: the 16 push slots are shared by
// everyone and an upload keeps its slot as long as each read brings
// something within pushIdle. A node with its own token trickling a byte
// per pushIdle/3 on 16 connections held every slot for as long as it
// liked: every other node's and the operator's push was 503 for ever
// (found by review). A node holds at most 4 now.
func TestPushNodeCannotHoldEverySlot(t *testing.T) {
	t.Setenv("RELAY_TEST_MOB_TOKEN", "mob-secret")
	s, srv, file := shopServer(t, "  MOB:\n    api_token_env: RELAY_TEST_MOB_TOKEN\n    deliver: { dir: m }\n")
	s.pushIdle = 300 * time.Millisecond // stands for the minute
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	for range maxPushes {
		pr, pw := io.Pipe()
		wg.Go(func() {
			req, _ := http.NewRequest("POST", srv.URL+"/api/v1/messages?name=Message_MOB_CO.xml", pr)
			req.Header.Set("Authorization", "Bearer mob-secret")
			if resp, err := srv.Client().Do(req); err == nil {
				resp.Body.Close()
			}
		})
		wg.Go(func() {
			defer pw.CloseWithError(io.ErrUnexpectedEOF)
			t := time.NewTicker(s.pushIdle / 3)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					if _, err := pw.Write([]byte(" ")); err != nil {
						return
					}
				}
			}
		})
	}
	// Long after pushIdle (here 10x; in production, any time at all).
	time.Sleep(10 * s.pushIdle)
	resp, err := srv.Client().Post(srv.URL+"/api/v1/messages?name=Message_CO_SHOP1.xml", "application/xml", bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("operator's push after %s of node MOB trickling a byte per %s on %d uploads: %d %s; every slot is still held (%d of %d) by uploads that brought ~%d bytes each: one node locks everyone out of the push API for as long as it trickles",
			10*s.pushIdle, s.pushIdle/3, maxPushes, resp.StatusCode, strings.TrimSpace(string(body)), len(s.pushes), maxPushes, 30)
	}
}
