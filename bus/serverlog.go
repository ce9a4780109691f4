package bus

import (
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"time"
)

// serverLog is the embedded server's logger. nats-server reports what
// stops its start (JetStream cannot use the store, nats.listen's port is
// taken) only by logging it and giving up, so the first fatal line ends
// startEmbedded's wait at once with the server's own words (found by
// review: 30 s, then a guess about another relay). Errors and warnings —
// a leaf link refused, say — reach relay's log, each kind at most once a
// minute: a link that is down is tried every 2 s.
type serverLog struct {
	log   *slog.Logger
	fatal chan string // the first fatal line; buffered

	mu   sync.Mutex
	last map[string]time.Time // format → when last logged
}

func newServerLog(log *slog.Logger) *serverLog {
	return &serverLog{log: log, fatal: make(chan string, 1), last: map[string]time.Time{}}
}

// serverLogEvery is how often one kind of server warning or error is logged.
const serverLogEvery = time.Minute

func (l *serverLog) Noticef(format string, v ...any) {
	l.log.Debug("nats-server: " + fmt.Sprintf(format, v...))
}

func (l *serverLog) Warnf(format string, v ...any) {
	if l.due(format) {
		l.log.Warn("nats-server: " + fmt.Sprintf(format, v...))
	}
}

func (l *serverLog) Errorf(format string, v ...any) {
	if l.due(format) {
		l.log.Error("nats-server: " + fmt.Sprintf(format, v...))
	}
}

func (l *serverLog) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.log.Error("nats-server: " + msg)
	select {
	case l.fatal <- msg:
	default:
	}
}

func (l *serverLog) Debugf(string, ...any) {}

func (l *serverLog) Tracef(string, ...any) {}

// connID is the connection's address and id nats-server writes into the
// format of a line about one connection ("127.0.0.1:7422 - lid:5 - "):
// each reconnect is a new one, not a new kind (found by review: a refused
// leaf link logged every 2 s).
var connID = regexp.MustCompile(`^\S+ - [a-z]{3}:\d+ - `)

// maxKinds bounds what serverLog remembers.
const maxKinds = 256

// due says whether a line of this format may be logged now.
func (l *serverLog) due(format string) bool {
	kind := connID.ReplaceAllString(format, "")
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if t, ok := l.last[kind]; ok && now.Sub(t) < serverLogEvery {
		return false
	}
	if len(l.last) >= maxKinds {
		clear(l.last)
	}
	l.last[kind] = now
	return true
}
