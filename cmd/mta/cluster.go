package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ledgermail/ledgermail/actors"
	"github.com/ledgermail/ledgermail/mxrelay"
	"github.com/ledgermail/ledgermail/projections"
	"github.com/ledgermail/ledgermail/scaleout"
)

// startClusterNode joins the cluster when [cluster] etcd is set; nil
// otherwise (a single node runs no cluster code).
func startClusterNode(cfg Config, q *projections.Queue, metrics *projections.Metrics, log *zap.Logger) (*scaleout.Node, error) {
	cc := cfg.Cluster
	if len(cc.Etcd) == 0 {
		return nil, nil
	}
	n, err := scaleout.Start(scaleout.Options{Name: cc.Name, Etcd: cc.Etcd, Advertise: cc.Advertise, LeaseTTL: cc.LeaseTTL.Duration,
		Live: q.Len, Registry: metrics.Registry, Log: log.Named("cluster")})
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return n, nil
}

// clusterGate gives each destination's pool the cluster's leases: its
// max_connections ([[relay.destinations]], else max_connections_per_domain)
// and rate hold across all nodes.
func clusterGate(n *scaleout.Node, rc RelayConfig) func(string) mxrelay.Gate {
	if n == nil {
		return nil
	}
	shape := shaping(rc.Destinations)
	return func(domain string) mxrelay.Gate {
		var s actors.Shaping // no [[relay.destinations]]: the defaults
		if shape != nil {
			s = shape(domain)
		}
		limit := s.MaxConnections
		if limit <= 0 {
			limit = rc.MaxConnectionsPerDomain
		}
		return n.Gate(domain, limit, float64(s.Rate))
	}
}

func clusterStatus(n *scaleout.Node) func() any {
	if n == nil {
		return nil
	}
	return func() any { return n.Status(3 * time.Second) }
}

func clusterReadiness(n *scaleout.Node) func() []string {
	if n == nil {
		return nil
	}
	return n.Readiness
}

func newClusterCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "cluster",
		Short: "the cluster this node belongs to ([cluster] etcd)",
	}
	var path string
	var asJSON bool
	status := &cobra.Command{
		Use:   "status [-c FILE] [--json]",
		Short: "members of the cluster, whether each answers, and their live envelopes (asks the running server)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st scaleout.Status
			if err := askServer(path, "GET", "/cluster", 0, &st); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			return writeClusterStatus(cmd.OutOrStdout(), st)
		},
	}
	status.Flags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	status.Flags().BoolVar(&asJSON, "json", false, `print {"members": [{"name", "address", "alive", "live_envelopes"}], ...}`)
	c.AddCommand(status)
	return c
}

func writeClusterStatus(w io.Writer, st scaleout.Status) error {
	etcd := "reachable"
	if !st.EtcdUp {
		etcd = "UNREACHABLE (this node delivers within its own limits)"
	}
	fmt.Fprintf(w, "node %s; etcd %s\n", st.Self, etcd)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDRESS\tALIVE\tLIVE ENVELOPES")
	for _, m := range st.Members {
		alive := "yes"
		if !m.Alive {
			alive = "no: " + m.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", m.Name, m.Address, alive, m.LiveEnvelopes)
	}
	return tw.Flush()
}

// askServer sends one request to the running server's admin API (the
// config at path names it) and decodes its JSON answer into out; timeout 0
// keeps the client's default.
func askServer(path, method, urlPath string, timeout time.Duration, out any) error {
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	a, err := adminClient(cfg)
	if err != nil {
		return err
	}
	if timeout > 0 {
		a.client.Timeout = timeout
	}
	resp, err := a.do(method, urlPath)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read the server's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("server: %s", strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("server: bad answer: %w", err)
	}
	return nil
}

// adminClient asks the running server's admin API.
func adminClient(cfg Config) (*adminSource, error) {
	if cfg.Admin.Listen == "" {
		return nil, fmt.Errorf("admin.listen is empty, so the server cannot be asked")
	}
	token, err := adminToken(cfg, false)
	if err != nil {
		return nil, err
	}
	return &adminSource{base: "http://" + cfg.Admin.Listen, token: token, client: &http.Client{Timeout: 5 * time.Minute}}, nil
}

// clusterDrain is POST /drain: stop accepting, then hand every live
// envelope to the other nodes.
func clusterDrain(n *scaleout.Node, log *zap.Logger, stopAccepting func(context.Context)) func(context.Context) (any, error) {
	if n == nil {
		return nil
	}
	return func(ctx context.Context) (any, error) {
		log.Info("drain: no more mail is accepted; the queue goes to the other nodes")
		stopAccepting(ctx)
		rep, err := n.Drain(ctx)
		n := 0
		for _, k := range rep.Transferred {
			n += k
		}
		log.Info("drain finished", zap.Int("transferred", n), zap.Int("left", len(rep.Left)), zap.Error(err))
		return rep, err
	}
}

func newDrainCmd() *cobra.Command {
	var path string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "drain [-c FILE] [--timeout 10m]",
		Short: "stop accepting mail and hand this node's queue to the other nodes of the cluster; returns when the queue is empty, or says what is left and why",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Report scaleout.DrainReport `json:"report"`
				Error  string               `json:"error"`
			}
			// The server answers at its timeout at the latest.
			if err := askServer(path, "POST", "/drain?timeout="+timeout.String(), timeout+time.Minute, &out); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			peers := make([]string, 0, len(out.Report.Transferred))
			for p := range out.Report.Transferred {
				peers = append(peers, p)
			}
			sort.Strings(peers)
			for _, p := range peers {
				fmt.Fprintf(w, "transferred %d envelopes to %s\n", out.Report.Transferred[p], p)
			}
			if len(out.Report.Left) == 0 && out.Error == "" {
				fmt.Fprintln(w, "drained: the queue is empty; this node can be stopped")
				return nil
			}
			ids := make([]string, 0, len(out.Report.Left))
			for id := range out.Report.Left {
				ids = append(ids, id)
			}
			sort.Strings(ids)
			for _, id := range ids {
				fmt.Fprintf(w, "left %s: %s\n", id, out.Report.Left[id])
			}
			why := out.Error
			if why == "" {
				why = "envelopes are left"
			}
			return fmt.Errorf("not drained (%s): %d envelopes left", why, len(ids))
		},
	}
	c.Flags().StringVarP(&path, "config", "c", "", "config file (TOML); default: embedded defaults")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long and report what is left")
	return c
}
