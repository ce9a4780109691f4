#!/usr/bin/env bash
# Runs every test of relay: vet and format checks, unit tests (with -race),
# short fuzz runs, the end-to-end tests with the embedded NATS, and the same
# end-to-end tests against Debian's nats-server started here on 127.0.0.1.
# Installs missing servers with apt-get when run as root. Every process it
# starts is stopped by PID on every exit path.
#
#   scripts/test.sh            # everything
#   FUZZTIME=30s scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZTIME=${FUZZTIME:-10s}
tmp=$(mktemp -d -t relay-test.XXXXXX)
# Every test's temp folders (t.TempDir, the servers' folders, the built
# binaries) go under $tmp too, so that removing it removes them also when
# a test binary was killed or timed out, which runs no cleanup. The
# servers' own users (vsftpd's, dovecot's vmail) must pass through it.
chmod 711 "$tmp"
mkdir -m 755 "$tmp/t"
export TMPDIR="$tmp/t"
# Processes to stop on the way out, by PID; a negative entry is a process
# group (a `go test` and the test binaries it runs). watchdogs (see
# watchdog) go first, at once: they ignore TERM.
pids=()
watchdogs=()

cleanup() {
	local rc=$?
	# A second INT or TERM (a double Ctrl-C, a CI cancel's TERM after its
	# INT) would exit here, leaving the rest running (found by review).
	trap '' INT TERM
	for pid in "${watchdogs[@]}"; do
		kill -9 "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		if kill -0 -- "$pid" 2>/dev/null; then
			kill -- "$pid" 2>/dev/null || true
			for _ in $(seq 50); do kill -0 -- "$pid" 2>/dev/null || break; sleep 0.1; done
			kill -9 -- "$pid" 2>/dev/null || true
		fi
		wait "${pid#-}" 2>/dev/null || true
	done
	if [ -n "${policy_rc_made:-}" ]; then
		rm -f /usr/sbin/policy-rc.d
	fi
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run CMD...: runs a long step in a process group of its own and waits for
# it. Bash runs a trap only once the foreground command ends; waiting on a
# background one lets INT/TERM stop the script, and cleanup the step's
# whole group, at once.
run() {
	set -m # job control: the background job leads a process group of its own
	"$@" &
	local child=$!
	set +m
	pids+=("-$child")
	local rc=0
	wait "$child" || rc=$?
	# Whatever of the step outlived it (a test binary that timed out runs
	# no cleanup, and its children stay in the group) goes with it.
	kill -KILL -- "-$child" 2>/dev/null || true
	local keep=() pid
	for pid in "${pids[@]}"; do
		[ "$pid" = "-$child" ] || keep+=("$pid")
	done
	pids=("${keep[@]}")
	return "$rc"
}

# watchdog PID: stops PID once this script is gone, even by SIGKILL (no
# trap runs then).
watchdog() {
	local pid=$1 self=$$
	(
		trap '' INT TERM
		while kill -0 "$self" 2>/dev/null; do sleep 1; done
		kill "$pid" 2>/dev/null || true
	) </dev/null >/dev/null 2>&1 &
	watchdogs+=($!)
}

# step names what comes next and when it starts (seconds since the script
# began): CI is to stay under 15 minutes, and this shows where they go.
step() { printf '\n==> %s (at %ds)\n' "$*" "$SECONDS"; }

# install_missing BIN PKG: apt-get install PKG when BIN is not on PATH.
install_missing() {
	local bin=$1 pkg=$2
	command -v "$bin" >/dev/null 2>&1 && return 0
	if [ "$(id -u)" != 0 ]; then
		echo "missing $bin: install the Debian package $pkg (or run this script as root)" >&2
		exit 1
	fi
	step "installing $pkg"
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		# The packages' scripts would start their daemons, on every
		# interface, and nothing would stop them (found by review): the
		# tests start their own, on 127.0.0.1. Removed on the way out.
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		policy_rc_made=1
	fi
	if [ -z "${apt_updated:-}" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" </dev/null >/dev/null
}

# listen_port LOG WHAT: the port a server started with a random port (-p
# -1) says in LOG it listens on for clients, once it does.
listen_port() {
	local log=$1 what=$2 port
	for _ in $(seq 100); do
		port=$(sed -n 's/.*Listening for client connections on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
		if [ -n "$port" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
		sleep 0.1
	done
	echo "$what did not open a port on 127.0.0.1" >&2
	return 1
}

step "go vet, gofmt, go mod tidy"
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "not gofmt'ed: $unformatted" >&2
	exit 1
fi
# -diff writes nothing: an interrupted tidy left go.mod/go.sum rewritten
# (found by review).
if ! go mod tidy -diff >"$tmp/tidy.diff"; then
	cat "$tmp/tidy.diff" >&2
	echo "go.mod/go.sum are not tidy: run go mod tidy" >&2
	exit 1
fi

# Servers first: test/realserver's own tests run with the unit tests.
# The FTP tests start their own vsftpd (stopped by PID by the tests); here a
# missing server fails them instead of skipping them. vsftpd is in /usr/sbin,
# which need not be on PATH: check it by its path.
install_missing /usr/sbin/vsftpd vsftpd
# The mail tests start their own dovecot (IMAP, LMTP) and postfix (SMTP) the
# same way. The imap and lmtp programs come in their own packages; postfix
# asks debconf questions unless preseeded.
install_missing /usr/lib/dovecot/imap dovecot-imapd
install_missing /usr/lib/dovecot/lmtp dovecot-lmtpd
if [ ! -x /usr/sbin/postfix ] && [ "$(id -u)" = 0 ]; then
	printf '%s\n' 'postfix postfix/main_mailer_type select Local only' \
		'postfix postfix/mailname string localhost' | debconf-set-selections
fi
install_missing /usr/sbin/postfix postfix
install_missing curl curl # the FTP bench's baseline client, the mail tests' independent client
install_missing zip zip # the password-protected zips of the e2e tests, written by an independent tool
# The http tests start their own nginx as a WebDAV target. Debian 12's nginx
# has the DAV module (PUT) built in; nginx-light only adds the echo module.
install_missing /usr/sbin/nginx nginx
install_missing /usr/sbin/nats-server nats-server
install_missing chromium chromium # the dashboard test's real browser (headless)
export RELAY_E2E_REQUIRE_SERVERS=1
# Test traffic goes to 127.0.0.1 only: curl would take even that through
# a proxy named in the environment (Go's client does not).
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY ftp_proxy FTP_PROXY

# -parallel: the tests marked parallel mostly wait (retry delays, a killed
# relay's ack wait, a server's outage), so more of them than the 2 cores
# run side by side.
step "unit tests with the race detector"
run go test -count=1 -race -parallel 4 $(go list ./... | grep -v -e /test/e2e -e /bench)

# fuzz_one PKG DIR TARGET fuzzes one target for $FUZZTIME. A failure counts
# when the fuzzer found something: a failing input written under
# testdata/fuzz/TARGET, or any output besides the bare "context deadline
# exceeded" that Go 1.26's fuzz coordinator sometimes reports when its
# -fuzztime deadline races a worker still finishing its last input
# (go.dev/issue/75804, fixed in Go 1.27). That bare shutdown race, with no
# input written, is reported as such after the target's corpus has been
# replayed without fuzzing and passed.
fuzz_one() {
	local pkg=$1 dir=$2 fz=$3 corpus before after
	corpus="$dir/testdata/fuzz/$fz"
	before=$(ls "$corpus" 2>/dev/null || true)
	if go test -run '^$' -fuzz "^${fz}\$" -fuzztime "$FUZZTIME" "$pkg" >"$tmp/fuzz.log" 2>&1; then
		return 0
	fi
	after=$(ls "$corpus" 2>/dev/null || true)
	if [ "$before" = "$after" ] &&
		grep -qx '    context deadline exceeded' "$tmp/fuzz.log" &&
		! grep -v -x -e 'fuzz: elapsed: .*' -e '--- FAIL: Fuzz[A-Za-z0-9_]* ([0-9.]*s)' \
			-e '    context deadline exceeded' -e 'FAIL' -e 'exit status 1' -e 'FAIL	.*' "$tmp/fuzz.log" | grep -q .; then
		if go test -count=1 -run "^${fz}\$" "$pkg" >"$tmp/fuzz-replay.log" 2>&1; then
			echo "fuzz $pkg $fz: Go's fuzz coordinator reported its own -fuzztime deadline (go.dev/issue/75804); no failing input was written and the corpus replays clean"
			return 0
		fi
		cat "$tmp/fuzz-replay.log"
	fi
	cat "$tmp/fuzz.log"
	return 1
}

step "fuzz targets, $FUZZTIME each"
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for fz in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
		echo "fuzz $pkg $fz"
		fuzz_one "$pkg" "$dir" "$fz" || exit 1
	done
done

step "end-to-end and bench smoke tests, embedded NATS"
# -parallel 4, not 8: with all eight side-by-side tests at once the
# cluster replica test once ran 168 s instead of ~55 s and failed (the load
# widened the window of nats-server 2.9.10's lost compare-and-set writes,
# see bus/serialkv.go; the cluster tests now run a newer server).
run go test -count=1 -timeout 20m -parallel 4 ./test/e2e/... ./bench/...

step "end-to-end tests against Debian's nats-server on 127.0.0.1"
mkdir -p "$tmp/nats"
/usr/sbin/nats-server -a 127.0.0.1 -p -1 -js -sd "$tmp/nats" >"$tmp/nats.log" 2>&1 &
pids+=($!)
watchdog $!
nats_port=$(listen_port "$tmp/nats.log" nats-server) || { cat "$tmp/nats.log"; exit 1; }
# Everything whose NATS side matters: the folder flows, crash and restart
# tests, dead letters, push and pull, the dashboard and metrics. The
# transport adapters' own tests (FTP, mail, HTTP, and the push crash test)
# use the pipeline exactly as the folder tests do; run a second time they
# cost ~4 minutes of CI's 15 and prove nothing the first run did not.
RELAY_TEST_NATS_URL="nats://127.0.0.1:$nats_port" run go test -count=1 -timeout 20m \
	-skip '^Test(FTP|Mail|HTTP|Vsftpd)|^TestPushCrash$' ./test/e2e/... || { tail -50 "$tmp/nats.log"; exit 1; }

step "all tests passed"
