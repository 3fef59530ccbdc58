package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"github.com/ledgermail/ledgermail/actors"
	"github.com/ledgermail/ledgermail/admin"
	"github.com/ledgermail/ledgermail/console"
	"github.com/ledgermail/ledgermail/events"
	"github.com/ledgermail/ledgermail/httpedge"
	"github.com/ledgermail/ledgermail/journal"
	"github.com/ledgermail/ledgermail/maildrop"
	"github.com/ledgermail/ledgermail/mxrelay"
	"github.com/ledgermail/ledgermail/policy"
	"github.com/ledgermail/ledgermail/projections"
	"github.com/ledgermail/ledgermail/queue"
	"github.com/ledgermail/ledgermail/scaleout"
	"github.com/ledgermail/ledgermail/smtpedge"
	"github.com/ledgermail/ledgermail/webhooks"
)

func newServeCmd() *cobra.Command {
	var path string
	var f serveFlags
	c := &cobra.Command{
		Use:   "serve [-c FILE] [--daemon --pidfile F] [--user U --group G]",
		Short: "run the MTA (in the foreground unless --daemon; embedded defaults when no file is given)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := LoadConfig(path)
			if err != nil {
				return err
			}
			if err := cfg.CheckFiles(); err != nil {
				return err
			}
			if f.daemon {
				if f.pidfile == "" {
					return usageError{fmt.Errorf("--daemon needs --pidfile")}
				}
				if err := checkPidfile(f.pidfile); err != nil {
					return err
				}
				return daemonize(os.Args[1:])
			}
			ready := newReadyNotifier()
			if err := serve(cfg, f, ready); err != nil {
				ready.failed(err)
				return err
			}
			return nil
		},
	}
	c.Flags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	c.Flags().BoolVar(&f.daemon, "daemon", false, "detach; return once the listeners are bound and the pidfile is written")
	c.Flags().StringVar(&f.pidfile, "pidfile", "", "write the process ID to this file once listening")
	c.Flags().StringVar(&f.logFile, "log-file", "", "log to this file (reopened on SIGUSR1) instead of stderr")
	c.Flags().StringVar(&f.user, "user", "", "after binding the listeners, run as this user (needs root)")
	c.Flags().StringVar(&f.group, "group", "", "with --user: run as this group (default: the user's)")
	c.Flags().BoolVar(&f.ignoreCorrupt, "ignore-corrupt", false, "start even if the journal has corrupt records (each is logged with its sequence number)")
	return c
}

type serveFlags struct {
	daemon        bool
	pidfile       string
	logFile       string
	user, group   string
	ignoreCorrupt bool
}

func newLogger(cfg LogConfig, file *logFile) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(cfg.Level)
	if err != nil {
		return nil, configErrorf("log.level: %v", err)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.TimeKey = "time"
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if cfg.Format == "json" {
		enc = zapcore.NewJSONEncoder(ec)
	} else {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	var sink zapcore.WriteSyncer = zapcore.Lock(os.Stderr)
	if file != nil {
		sink = file
	}
	return zap.New(zapcore.NewCore(enc, sink, lvl), zap.ErrorOutput(sink)), nil
}

// serve runs the whole MTA until SIGTERM or SIGINT. Order matters: bind
// every listener (as root if need be), hand the data directory over and
// drop privileges, and only then open the journal and serve.
func serve(cfg Config, f serveFlags, ready *readyNotifier) error {
	var lf *logFile
	if f.logFile != "" {
		var err error
		if lf, err = openLogFile(f.logFile); err != nil {
			return err
		}
	}
	log, err := newLogger(cfg.Log, lf)
	if err != nil {
		return err
	}
	defer log.Sync()
	// Before the journal is opened and replayed: the limit covers start-up.
	memLimit := applyMemoryLimit(cfg.Limits.MemoryLimit.Bytes)
	acct, err := lookupAccount(f.user, f.group)
	if err != nil {
		return err
	}
	// A bad users file is a configuration problem: refuse before anything.
	users, err := smtpedge.OpenUsersFile(cfg.UsersFile(), cfg.Auth.CacheTTL.Duration)
	if err != nil {
		return err
	}
	if f.pidfile != "" {
		if err := checkPidfile(f.pidfile); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("cannot create data_dir %s: %w", cfg.DataDir, unwrapPathErr(err))
	}

	// Sockets first: ports 25/465/587 need root.
	lns, err := smtpedge.Listen(cfg.Submission.Listen, cfg.Submissions.Listen)
	if err != nil {
		return err
	}
	defer lns.Close()
	var adminLn net.Listener
	if cfg.Admin.Listen != "" {
		if adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
		defer adminLn.Close()
	}
	var httpLn net.Listener
	if cfg.HTTP.Listen != "" {
		if httpLn, err = net.Listen("tcp", cfg.HTTP.Listen); err != nil {
			return fmt.Errorf("http listener: %w", err)
		}
		defer httpLn.Close()
	}
	// Certificates may be readable by root only: load them before the drop.
	certPath, keyPath, generated := cfg.CertFiles()
	if generated {
		if err := smtpedge.SelfSigned(certPath, keyPath, cfg.Hostname); err != nil {
			return err
		}
	}
	certs, err := smtpedge.LoadCerts(certPath, keyPath)
	if err != nil {
		return err
	}
	dkimKeys, err := cfg.DKIMKeys()
	if err != nil {
		return err
	}
	forward, _ := cfg.ForwardRules()
	token, err := adminToken(cfg, cfg.Admin.Listen != "")
	if err != nil {
		return err
	}
	if err := prepareMaildrop(cfg); err != nil {
		return err
	}
	if acct != nil {
		if err := acct.handOver(cfg.DataDir); err != nil {
			return err
		}
		if err := maildropGroup(cfg); err != nil {
			return err
		}
		if f.pidfile != "" {
			os.WriteFile(f.pidfile, nil, 0o644)
			os.Chown(f.pidfile, acct.uid, acct.gid)
		}
		if err := acct.drop(); err != nil {
			return err
		}
		log.Info("privileges dropped", zap.String("user", acct.user), zap.Int("uid", acct.uid), zap.Int("gid", acct.gid))
	}

	j, err := journal.Open(journal.Options{Dir: cfg.JournalDir(), ArchiveDir: cfg.ArchiveDir(), Logger: log.Named("journal"), MinFree: cfg.Journal.MinFree.Bytes,
		CommitWindow: cfg.Journal.CommitWindow.Duration})
	if err != nil {
		if errors.Is(err, journal.ErrLocked) {
			return fmt.Errorf("data_dir %s is in use by another mta process", cfg.DataDir)
		}
		return err
	}
	defer j.Close()
	if j.Err() == nil && !j.HasRoom(0) {
		free, _ := journal.FreeBytes(cfg.JournalDir())
		log.Warn("journal storage is below journal.min_free: queued mail is delivered, new mail is refused (452 4.3.1) until space returns",
			zap.Int64("free_bytes", free), zap.Int64("min_free", cfg.Journal.MinFree.Bytes))
	}

	q := projections.NewQueue()
	snapSeq, checkHistory, err := queue.RebuildUnchecked(j, q, log, f.ignoreCorrupt)
	if err != nil {
		return err
	}
	// Before the first 250: the replay's garbage goes back to the system,
	// so that the server does not start out at twice the queue's memory
	// (the collector's goal), and the history check's bound starts from
	// what is live.
	live := queue.Collect()
	history := newHistoryCheck()
	j.Subscribe(q.Apply)
	metrics := projections.NewMetrics(q)
	j.Subscribe(metrics.Apply)
	activity := console.NewActivity()
	j.Subscribe(activity.Apply)
	j.SetOnCommit(func(d time.Duration, n int) {
		metrics.Commit(d, n)
		activity.Commit(d, n)
	})

	roots, err := cfg.RelayRoots()
	if err != nil {
		return err
	}
	relay, err := mxrelay.New(mxrelay.Options{
		RootCAs: roots, MTASTS: cfg.Relay.MTASTS, MTASTSPort: cfg.Relay.MTASTSPort, DNSSEC: cfg.Relay.DNSSEC,
		Mode: cfg.Relay.Mode, Smarthost: cfg.Relay.Smarthost, Username: cfg.Relay.Username, Password: cfg.Relay.Password,
		DNSServers: cfg.Relay.DNSServers, MXPort: cfg.Relay.MXPort, Hostname: cfg.Hostname, TLS: mxrelay.TLSMode(cfg.Relay.TLS),
		TLSFallbackPlaintext: cfg.Relay.TLSFallbackPlaintext, TLSVerify: cfg.Relay.TLSVerify,
		ConnectTimeout: cfg.Relay.ConnectTimeout.Duration, CommandTimeout: cfg.Relay.CommandTimeout.Duration, DataTimeout: cfg.Relay.DataTimeout.Duration,
	})
	if err != nil {
		return configErrorf("%v", err)
	}
	trusted, _ := cfg.TrustedNetworks()
	node, err := startClusterNode(cfg, q, metrics, log)
	if err != nil {
		return err
	}
	if node != nil {
		defer node.Stop() // after the actors: deliveries give their leases back first
	}

	sys, err := actors.Start(actors.Options{
		Journal: j, Queue: q, Relay: relay, Hostname: cfg.Hostname,
		Policies: policy.Options{AddDate: cfg.Policies.AddDateHeader, AddMessageID: cfg.Policies.AddMessageIDHeader,
			AddReceived: cfg.Policies.AddReceivedHeader, ReceivedAuthUser: cfg.Policies.ReceivedAuthUser, Split: cfg.Policies.Split, Forward: forward, DKIM: dkimKeys},
		Retry: durations(cfg.Queue.Retry), MaxAge: cfg.Queue.MaxAge.Duration, DelayWarning: cfg.Queue.DelayWarning.Duration, Logger: log.Named("queue"),
		MaxConnectionsPerDomain: cfg.Relay.MaxConnectionsPerDomain, Shaping: shaping(cfg.Relay.Destinations), IdleTimeout: cfg.Relay.IdleTimeout.Duration,
		DropBodies: !cfg.Queue.KeepBodies, Gate: clusterGate(node, cfg.Relay),
	})
	if err != nil {
		return err
	}
	if node != nil {
		node.SetLocal(&scaleout.Local{Journal: j, Queue: q, Withhold: sys.Withhold, Release: sys.Release, Enqueue: sys.Enqueue, DropBodies: !cfg.Queue.KeepBodies})
	}
	// Stop the actors, then snapshot the (now quiet) queue; deferred calls
	// run in reverse, so this is registered after sys.Stop would be.
	defer func() {
		sys.Stop()
		queue.SaveSnapshot(j, q, log)
	}()
	snapDone := make(chan struct{})
	defer close(snapDone)
	// Every 10 minutes when 50,000 events have come since the last one, and
	// whenever 250,000 have. A save streams (it leaves no buffer of the
	// queue's size behind): the heap is trimmed after one only when that
	// is worth a collection.
	go queue.Snapshots{Journal: j, Queue: q, Log: log, Interval: 10 * time.Minute, Every: 50000, Max: 250000, From: snapSeq,
		Saved: trimIfWorth}.Run(snapDone)
	// After a burst, give the heap's headroom back once the journal is quiet.
	go trimWhenIdle(j.LastSeq, 2*time.Second, snapDone)
	retention := &queue.Retention{Journal: j, Queue: q, Period: cfg.Journal.Retention.Duration, Archive: cfg.Journal.Archive,
		Bodies: cfg.Queue.KeepBodies, Log: log.Named("retention")}
	if retention.Period > 0 {
		go func() {
			// Nothing is archived before the history is checked.
			select {
			case <-history.passed:
				retention.Run(sweepInterval(retention.Period), snapDone)
			case <-snapDone:
			}
		}()
	} else {
		retention = nil
	}
	// sendmail's maildrop: what cron dropped while the server was down is
	// queued now, and new files within a second.
	bodyMemory := smtpedge.NewBodyMemory(cfg.Limits.BodyMemory.Bytes)
	metrics.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ledgermail_body_memory_bytes",
		Help: "Memory reserved by message bodies being received ([limits] body_memory caps it)."},
		func() float64 { return float64(bodyMemory.Used()) }))
	metrics.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ledgermail_journal_index_written_bytes_total",
		Help: "Bytes the journal's index (Pebble) has written to its tables, flushes and compactions, since start."},
		func() float64 { return float64(j.IndexWriteBytes()) }))
	drop := &maildrop.Ingester{Dir: cfg.MaildropDir(), Journal: j, Accepted: sys.Enqueue, Log: log.Named("maildrop"), MaxBytes: cfg.Limits.MaxMessageBytes, Memory: bodyMemory}
	// The maildrop stops at the end or at `mta drain`, whichever is first.
	dropStop, dropDone := make(chan struct{}), make(chan struct{})
	var dropOnce sync.Once
	stopDrop := func() { dropOnce.Do(func() { close(dropStop) }) }
	defer stopDrop()
	go func() {
		defer close(dropDone)
		drop.Run(time.Second, dropStop)
	}()

	edge, err := smtpedge.New(smtpedge.Options{
		Hostname: cfg.Hostname, Postmaster: cfg.Policies.Postmaster, Listeners: lns,
		TLS: certs.TLSConfig(), Auth: users, Journal: j, Accepted: sys.Enqueue, Rejected: metrics.Rejected, TrustedNetworks: trusted, BodyMemory: bodyMemory,
		AllowInsecureAuth: cfg.Auth.AllowInsecureAuth, RequireOwnership: cfg.Auth.RequireSenderOwnership,
		MaxMessageBytes: cfg.Limits.MaxMessageBytes, MaxRecipients: cfg.Limits.MaxRecipients,
		MaxConnections: cfg.Limits.MaxConnections, MaxAuthFailures: cfg.Limits.MaxAuthFailuresPerIP,
		ReadTimeout: cfg.Limits.CommandTimeout.Duration, DataTimeout: cfg.Limits.DataTimeout.Duration, HandshakeTimeout: cfg.Limits.TLSHandshakeTimeout.Duration, Logger: log.Named("smtp"),
		Scan: spamScanner(cfg.Policies, log.Named("spamd")),
	})
	if err != nil {
		return err
	}
	hooks, err := startWebhooks(cfg, j, metrics, log, snapDone)
	if err != nil {
		return err
	}
	var adminSrv *http.Server
	var state admin.State
	// The SMTP edge stops once: at `mta drain` (accepting ends, the queue
	// goes to the other nodes) or at the signal.
	var edgeOnce sync.Once
	stopEdge := func(ctx context.Context) {
		edgeOnce.Do(func() {
			state.Ready.Store(false)
			if err := edge.Shutdown(ctx); err != nil {
				log.Warn("SMTP sessions cut at shutdown", zap.Error(err))
			}
		})
	}
	var httpSrv *http.Server
	if httpLn != nil {
		httpSrv = &http.Server{Handler: httpedge.Handler(httpedge.Options{Edge: edge, MaxMessageBytes: cfg.Limits.MaxMessageBytes,
			Listener: "http/" + httpLn.Addr().String(), Logger: log.Named("http")}), ReadHeaderTimeout: 10 * time.Second}
		if cfg.HTTP.TLS {
			httpSrv.TLSConfig = certs.TLSConfig()
			go httpSrv.ServeTLS(httpLn, "", "")
		} else {
			go httpSrv.Serve(httpLn)
		}
	}
	if adminLn != nil {
		consoleH := console.New(console.Deps{Journal: j, Queue: q, Actors: sys, Activity: activity, Token: token, Log: log.Named("console")})
		adminSrv = &http.Server{Handler: admin.New(admin.Deps{Journal: j, Queue: q, Actors: sys, Metrics: metrics, State: &state,
			Token: token, MetricsPublic: cfg.Admin.MetricsPublic, Pprof: cfg.Admin.Pprof, Health: func() []string { return append([]string{history.line()}, hooksHealth(hooks)()...) }, KeepBodies: cfg.Queue.KeepBodies, Retention: retention, Log: log.Named("admin"),
			Console: consoleH, Cluster: clusterStatus(node), Readiness: clusterReadiness(node),
			Drain: clusterDrain(node, log, func(ctx context.Context) {
				stopEdge(ctx)
				// Files dropped from now on wait in the maildrop for
				// the node's next run.
				stopDrop()
				select {
				case <-dropDone:
				case <-ctx.Done():
				}
				if httpSrv != nil {
					httpSrv.Shutdown(ctx)
				}
			})}),
			ReadHeaderTimeout: 10 * time.Second}
		adminSrv.RegisterOnShutdown(consoleH.Stop) // Shutdown waits for open streams
		go adminSrv.Serve(adminLn)
	}
	edge.Serve()
	if f.pidfile != "" {
		if err := os.WriteFile(f.pidfile, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("write pidfile: %w", err)
		}
		defer os.Remove(f.pidfile)
	}
	state.Ready.Store(true)
	log.Info("ledgermail started", zap.String("version", version), zap.String("hostname", cfg.Hostname),
		zap.Strings("listen", edge.Addrs()), zap.String("http", cfg.HTTP.Listen), zap.String("admin", cfg.Admin.Listen), zap.String("data_dir", cfg.DataDir),
		zap.String("relay", cfg.Relay.Mode), zap.Uint64("journal_seq", j.LastSeq()), zap.Int("pid", os.Getpid()), zap.Int64("memory_limit", memLimit))
	ready.ready()
	// The check stops before the journal closes (defers run in reverse).
	histStop, histDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(histDone)
		queue.BoundedWhile(live, func() { history.run(checkHistory, histStop) })
		// What the check and the first minutes left: given back now, not
		// when the heap next fills.
		debug.FreeOSMemory()
	}()
	defer func() {
		close(histStop)
		<-histDone
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	var stopErr error
	for {
		var sig os.Signal
		select {
		case sig = <-sigs:
		case <-j.Failed():
			failStop(log, j, edge)
		case stopErr = <-history.failed:
			log.Error("journal history damaged; stopping", zap.Error(stopErr))
		}
		if stopErr != nil {
			break
		}
		if sig == syscall.SIGHUP {
			reload(log, users, certs)
			continue
		}
		if sig == syscall.SIGUSR1 {
			if lf != nil {
				if err := lf.Reopen(); err != nil {
					log.Error("reopen log file", zap.Error(err))
				} else {
					log.Info("log file reopened", zap.String("path", f.logFile))
				}
			}
			continue
		}
		log.Info("stopping", zap.String("signal", sig.String()))
		break
	}
	state.Ready.Store(false)
	// One grace period for both: sessions in DATA finish and get their
	// answer, deliveries in flight finish and journal their outcomes (so a
	// restart does not send them again); then the rest are cut.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.Duration)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		stopEdge(ctx)
	}()
	go func() {
		defer wg.Done()
		if err := sys.Drain(ctx); err != nil {
			log.Warn("deliveries cut at shutdown; they are retried after the restart", zap.Error(err))
		}
	}()
	wg.Wait()
	if adminSrv != nil {
		adminSrv.Shutdown(ctx)
	}
	if httpSrv != nil {
		httpSrv.Shutdown(ctx)
	}
	log.Info("stopped")
	return stopErr
}

// failStop ends the process after the journal failed (a write or sync error:
// nothing more can be made durable). Sessions get a moment to send the 451
// of the messages concerned; then one log line names the cause and the
// process exits 1, without the graceful path that would need the journal.
func failStop(log *zap.Logger, j *journal.Journal, edge *smtpedge.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	edge.Shutdown(ctx)
	cancel()
	log.Error("journal failed; exiting (restart once the cause is fixed: nothing acknowledged is lost)", zap.Error(j.Err()))
	log.Sync()
	os.Exit(1)
}

// spamScanner checks each message with spamd at DATA. A verdict of spam is
// refused when the action is "reject"; otherwise its headers are kept for
// the policies to add. When spamd fails or times out the message passes
// untagged, and that is logged.
func spamScanner(p PoliciesConfig, log *zap.Logger) func(body []byte) (string, bool) {
	if p.SpamAssassin == "" {
		return nil
	}
	spamd := policy.Spamd{Addr: p.SpamAssassin, Timeout: p.SpamTimeout.Duration}
	return func(body []byte) (string, bool) {
		res, err := spamd.Check(context.Background(), body)
		if err != nil {
			log.Warn("spam check failed; message passes untagged", zap.Error(err))
			return "", false
		}
		if res.Spam && p.SpamAction == "reject" {
			return "", true
		}
		return res.Headers(), false
	}
}

func reload(log *zap.Logger, users *smtpedge.UsersFile, certs *smtpedge.CertStore) {
	if err := users.Reload(); err != nil {
		log.Error("reload users file", zap.Error(err))
	}
	if err := certs.Reload(); err != nil {
		log.Error("reload certificates", zap.Error(err))
	}
	log.Info("reloaded users and certificates")
}

func unwrapPathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func tomlEncode(w interface{ Write([]byte) (int, error) }, v any) error {
	return toml.NewEncoder(w).Encode(v)
}

// prepareMaildrop creates <data_dir>/maildrop (mode 0700; 3730 with a
// [sendmail] group, set once the data directory is handed over).
func prepareMaildrop(cfg Config) error {
	if err := os.MkdirAll(cfg.MaildropDir(), 0o700); err != nil {
		return fmt.Errorf("cannot create the maildrop %s: %w", cfg.MaildropDir(), unwrapPathErr(err))
	}
	if cfg.Sendmail.Group == "" {
		return nil
	}
	return maildropGroup(cfg)
}

// maildropGroup gives the maildrop to [sendmail] group: members may drop
// files (write, search) but not list the directory; setgid makes each file
// the group's (readable by the server, mode 0640), and the sticky bit keeps
// senders from removing each other's.
func maildropGroup(cfg Config) error {
	if cfg.Sendmail.Group == "" {
		return nil
	}
	g, err := user.LookupGroup(cfg.Sendmail.Group)
	if err != nil {
		return configErrorf("sendmail.group: %v", err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	dir := cfg.MaildropDir()
	if err := os.Chown(dir, -1, gid); err != nil {
		return fmt.Errorf("maildrop %s: %w", dir, unwrapPathErr(err))
	}
	return os.Chmod(dir, 0o3730)
}

// startWebhooks starts a journal-tailing projection per [[webhooks]] entry
// (their cursors in <data_dir>/webhooks), stopped when done closes, with
// their lag as a metric.
func startWebhooks(cfg Config, j *journal.Journal, m *projections.Metrics, log *zap.Logger, done <-chan struct{}) ([]*webhooks.Hook, error) {
	if len(cfg.Webhooks) == 0 {
		return nil, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-done; cancel() }()
	dir := filepath.Join(cfg.DataDir, "webhooks")
	var hooks []*webhooks.Hook
	for _, w := range cfg.Webhooks {
		var types []events.Type
		for _, e := range w.Events {
			types = append(types, events.Type(e))
		}
		h, err := webhooks.Start(ctx, webhooks.Config{URL: w.URL, Events: types, Secret: w.Secret}, j, dir, log.Named("webhooks"))
		if err != nil {
			cancel()
			return nil, err
		}
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ledgermail_webhook_lag_events",
			Help: "Journal events a webhook has not dealt with yet.", ConstLabels: prometheus.Labels{"url": w.URL}},
			func() float64 { return float64(h.Lag()) }))
		hooks = append(hooks, h)
	}
	return hooks, nil
}

func hooksHealth(hooks []*webhooks.Hook) func() []string {
	return func() []string {
		var out []string
		for _, h := range hooks {
			out = append(out, fmt.Sprintf("webhook %s lag %d events", h.URL(), h.Lag()))
		}
		return out
	}
}

// shaping turns [[relay.destinations]] into the scheduler's per-domain
// limits: the domain's own entry, else "*", else none.
func shaping(dests []DestinationConfig) func(string) actors.Shaping {
	if len(dests) == 0 {
		return nil
	}
	by := map[string]actors.Shaping{}
	for _, d := range dests {
		r, _ := parseRate(d.Rate)
		by[strings.ToLower(d.Domain)] = actors.Shaping{MaxConnections: d.MaxConnections, Rate: rate.Limit(r), MaxMessagesPerConnection: d.MaxMessagesPerConnection}
	}
	return func(domain string) actors.Shaping {
		if s, ok := by[domain]; ok {
			return s
		}
		return by["*"]
	}
}

// sweepInterval is how often the retention sweep runs: half the retention
// period, between 10 seconds and an hour.
func sweepInterval(retention time.Duration) time.Duration {
	return min(max(retention/2, 10*time.Second), time.Hour)
}
