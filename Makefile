# ledgermail — see README.md. `make run` and `make test` are all a new
# machine needs.
GO       ?= go
BIN      ?= bin/mta
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)

.PHONY: profile crashtest build run test test-unit test-e2e bench bench-postfix bench-large bench-deferred bench-wamp bench-submission bench-cluster screens lint deps fmt fuzz fuzz-brief

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/mta

# Starts the MTA on its embedded defaults (./mta-data, 127.0.0.1:2587 and :2465, admin :8025).
run: build
	./$(BIN) serve

# Installs the Debian packages the tests drive (swaks, smtp-sink from postfix,
# openssl, dnsmasq, spamd) when they are missing, then runs every test with -race.
test: deps lint
	$(GO) test -race -count=1 -timeout 20m ./...
	# The cluster's in-process tests, without -race: protoactor-go's cluster
	# has data races of its own (scaleout/node_test.go).
	$(GO) test -count=1 -timeout 5m ./scaleout/
	$(MAKE) fuzz-brief

# A few seconds of coverage-guided fuzzing of the SMTP session (go-smtp's
# command parser and DATA reader with our session), of the line-ending
# normaliser and the DATA spool, and of the events' fast JSON codec against
# encoding/json; `make fuzz` runs them longer.
FUZZTIME ?= 5s
fuzz-brief:
	$(GO) test -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./smtpedge/
	$(GO) test -run '^$$' -fuzz '^FuzzNormalizeLineEndings$$' -fuzztime $(FUZZTIME) ./smtpedge/
	$(GO) test -run '^$$' -fuzz '^FuzzSpool$$' -fuzztime $(FUZZTIME) ./smtpedge/
	$(GO) test -run '^$$' -fuzz '^FuzzFastReader$$' -fuzztime $(FUZZTIME) ./events/
	$(GO) test -run '^$$' -fuzz '^FuzzFastWriter$$' -fuzztime $(FUZZTIME) ./events/

fuzz:
	$(MAKE) fuzz-brief FUZZTIME=2m

# The fault campaign: 100 randomized trials of kill -9, SIGTERM, a full disk
# (as root) and a misbehaving next hop under load, each checked for lost
# mail, duplicates, a failing `replay --verify` and panic traces. `make test`
# runs 3 of them. LEDGERMAIL_CRASH_SEED repeats a campaign.
CRASH_TRIALS ?= 100
crashtest: deps
	@LEDGERMAIL_CRASH_TRIALS=$(CRASH_TRIALS) $(GO) test -race -count=1 -timeout 90m -run '^TestCrashCampaign$$' -v ./e2e/ > crashtest.log 2>&1; \
	  status=$$?; grep -E '^(crashtest:|--- FAIL|FAIL|ok)|faults |seed|got a 250|duplicates at' crashtest.log; \
	  echo "full output: crashtest.log"; exit $$status

test-unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

test-e2e: deps
	$(GO) test -race -count=1 -v ./e2e/

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 2s ./journal/
	$(GO) test -run '^$$' -bench . -benchtime 1s ./events/
	$(GO) test -run '^$$' -bench SubmitToJournal -benchtime 2000x ./smtpedge/
	$(GO) test -run '^$$' -bench RelayTransaction -benchtime 3000x ./mxrelay/
	$(GO) test -run '^$$' -bench . -benchtime 1x ./projections/
	$(GO) test -run '^$$' -bench AcceptLatency -benchtime 3x ./queue/
	$(GO) test -run '^$$' -bench 'Restart|HistoryCheck' -benchtime 3x ./queue/

# CPU and allocation profiles under the benchmark load ([admin] pprof).
profile: deps
	bash e2e/profile.sh

# Screenshots of the operator console's pages, from headless Chromium
# against a server with real traffic (not committed).
screens: deps
	LEDGERMAIL_SCREENS=$(CURDIR)/e2e/testdata/screens $(GO) test -count=1 -run '^TestConsoleInChromium$$' -v ./e2e/

# The submission path as clients drive it (STARTTLS/implicit TLS, AUTH,
# several messages per session; e2e/loadgen), ledgermail beside Postfix.
bench-submission: deps
	bash e2e/bench-submission.sh

# Throughput of 1, 2 and 3 cluster nodes on etcd, one load split over them
# (docs/SCALING.md).
bench-cluster: deps
	bash e2e/bench-cluster.sh

# ledgermail against a private Postfix instance, same load, same sink (root).
bench-postfix: deps
	bash e2e/bench-vs-postfix.sh

# Peak memory with 100 sessions each sending a 10 MiB message at once.
bench-large: deps
	bash e2e/bench-large.sh

# RSS and restart time with a large deferred queue (200,000 envelopes).
bench-deferred: deps
	bash e2e/bench-deferred.sh

# Device bytes written per accepted body byte (100,000 x 4 KiB messages).
bench-wamp: deps
	bash e2e/bench-wamp.sh

lint:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

fmt:
	gofmt -w .

deps:
	@bash .ci/deps
