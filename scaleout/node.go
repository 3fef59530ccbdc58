// Package scaleout joins ledgermail nodes into one cluster on protoactor-go's
// cluster package: membership through its etcd provider, and one virtual
// actor (grain) per destination domain that owns the domain's limits for
// the whole cluster.
//
// The contract:
//   - Each node keeps its own journal on its own disk; nothing of the mail
//     is shared. What is shared is who is alive (etcd, through protoactor's
//     provider: a member's key lives on an etcd lease of 3 s) and each
//     destination's connection and rate budget (the grains).
//   - A connection to a destination is opened only under a connection lease
//     from the destination's grain, renewed every third of its TTL while the
//     connection lives and given back when it closes. A grain grants at
//     most the destination's max_connections leases at once.
//   - A grain's activation (first use, a move after a member joined or
//     left, its node's death) starts with a census: every member says which
//     of the domain's leases it holds, and the grain adopts them. If one
//     does not answer, no new lease is granted for one TTL, in which every
//     lease still held is renewed and adopted: the limit holds across the
//     move (briefly conservative; at worst the leases of a dead node count
//     until they expire).
//   - A node whose etcd is unreachable keeps accepting and delivering mail
//     within its own limits (each node then applies max_connections alone)
//     and says so in /readyz and ledgermail_cluster_etcd_up.
//   - A node without [cluster] etcd runs no cluster code at all.
package scaleout

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/cluster"
	"github.com/asynkron/protoactor-go/cluster/clusterproviders/etcd"
	"github.com/asynkron/protoactor-go/cluster/identitylookup/disthash"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// clusterName is the name every ledgermail node joins under; etcd keys live
// under /ledgermail/ledgermail/.
const clusterName = "ledgermail"

// nodeActor is the name of the actor every node runs for its peers
// (status, transfers).
const nodeActor = "ledgermail-node"

// Options configure a node.
type Options struct {
	Name      string   // unique in the cluster ([cluster] name)
	Etcd      []string // etcd endpoints
	Advertise string   // host:port of this node's remote endpoint; it is also bound
	// LeaseTTL is how long a connection lease lasts unless renewed.
	LeaseTTL time.Duration
	// Live returns how many live envelopes this node has.
	Live     func() int
	Registry *prometheus.Registry
	Log      *zap.Logger
}

// Node is this process's membership of the cluster.
type Node struct {
	o       Options
	sys     *actor.ActorSystem
	c       *cluster.Cluster
	etcd    *clientv3.Client
	etcdUp  atomic.Bool
	joined  atomic.Bool
	probed  atomic.Bool // one probe has finished
	since   atomic.Int64
	stop    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	members []*cluster.Member // the last topology event's
	hmu     sync.Mutex
	held    map[string]map[string]*lease // domain -> connection leases this node holds
	transferState
}

// Start starts the node's remote endpoint and joins the cluster in the
// background once etcd answers; until then (and whenever etcd is
// unreachable) the node works alone.
func Start(o Options) (*Node, error) {
	if o.Name == "" || len(o.Etcd) == 0 || o.Advertise == "" {
		return nil, fmt.Errorf("scaleout: name, etcd and advertise are required")
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Live == nil {
		o.Live = func() int { return 0 }
	}
	host, portStr, err := net.SplitHostPort(o.Advertise)
	if err != nil {
		return nil, fmt.Errorf("scaleout: advertise %q: %w", o.Advertise, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return nil, fmt.Errorf("scaleout: advertise %q: a port is required", o.Advertise)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: o.Etcd, DialTimeout: 2 * time.Second, Logger: o.Log.Named("etcd")})
	if err != nil {
		return nil, fmt.Errorf("scaleout: etcd client: %w", err)
	}
	core := o.Log.Named("protoactor").Core()
	sys := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(zapslog.NewHandler(core))
	}))
	sys.ID = o.Name // the member's ID in etcd: ledgermail@<name>
	provider, err := etcd.NewWithConfig("/ledgermail", clientv3.Config{Endpoints: o.Etcd, DialTimeout: 2 * time.Second, Logger: o.Log.Named("etcd")})
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("scaleout: etcd provider: %w", err)
	}
	var n *Node
	kind := cluster.NewKind(destinationKind, actor.PropsFromProducer(func() actor.Actor { return newGrain(n) }))
	rc := remote.Configure(host, port, remote.WithAdvertisedHost(o.Advertise))
	cc := cluster.Configure(clusterName, provider, disthash.New(), rc, cluster.WithKinds(kind),
		cluster.WithRequestTimeout(5*time.Second))
	n = &Node{o: o, sys: sys, etcd: cli, stop: make(chan struct{}),
		held:          map[string]map[string]*lease{},
		transferState: transferState{incoming: map[string]*incoming{}, refused: map[string]bool{}}}
	n.c = cluster.New(sys, cc)
	// MemberList.Members is read without its lock in protoactor; keep our
	// own copy of each topology instead.
	sys.EventStream.Subscribe(func(evt any) {
		if t, ok := evt.(*cluster.ClusterTopology); ok {
			n.mu.Lock()
			n.members = append([]*cluster.Member(nil), t.Members...)
			n.mu.Unlock()
		}
	})
	if _, err := sys.Root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &peerActor{n: n} }), nodeActor); err != nil {
		cli.Close()
		return nil, fmt.Errorf("scaleout: spawn node actor: %w", err)
	}
	n.since.Store(time.Now().UnixNano())
	if o.Registry != nil {
		o.Registry.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ledgermail_cluster_etcd_up",
				Help: "1 while this node reaches etcd; 0 while it works alone within its own limits."},
				func() float64 { return b2f(n.etcdUp.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ledgermail_cluster_members",
				Help: "Members of the cluster as this node sees them (itself included)."},
				func() float64 { return float64(n.memberCount()) }))
	}
	n.wg.Add(1)
	go n.run()
	return n, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// run probes etcd every second and joins the cluster the first time it
// answers.
func (n *Node) run() {
	defer n.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		up := n.probe()
		if up != n.etcdUp.Load() || !n.probed.Load() {
			n.since.Store(time.Now().UnixNano())
			if up {
				n.o.Log.Info("etcd reachable", zap.Strings("etcd", n.o.Etcd))
			} else {
				n.o.Log.Warn("etcd unreachable: delivering within this node's own limits", zap.Strings("etcd", n.o.Etcd))
			}
		}
		n.etcdUp.Store(up)
		n.probed.Store(true)
		if up && !n.joined.Load() {
			n.join()
		}
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
	}
}

func (n *Node) probe() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := n.etcd.Get(ctx, "/ledgermail/probe")
	return err == nil
}

// join starts the cluster member (remote endpoint, gossip, etcd
// registration). protoactor panics when it cannot; that is logged and
// retried at the next probe.
func (n *Node) join() {
	defer func() {
		if r := recover(); r != nil {
			n.o.Log.Error("joining the cluster failed; retrying", zap.Any("cause", r))
		}
	}()
	n.c.StartMember()
	n.joined.Store(true)
	n.o.Log.Info("joined the cluster", zap.String("name", n.o.Name), zap.String("advertise", n.o.Advertise),
		zap.Int("members", n.memberCount()))
}

// Clustered reports whether limits are the cluster's: this node has
// joined and reaches etcd.
func (n *Node) Clustered() bool { return n.joined.Load() && n.etcdUp.Load() }

// alone reports whether this node should work within its own limits: etcd
// is unreachable (after the first probe).
func (n *Node) alone() bool { return n.probed.Load() && !n.etcdUp.Load() }

func (n *Node) memberCount() int {
	if m := n.topology(); len(m) > 0 {
		return len(m)
	}
	return 1
}

// topology returns the members of the last topology this node saw.
func (n *Node) topology() []*cluster.Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.members
}

// Readiness returns the lines /readyz adds about the cluster.
func (n *Node) Readiness() []string {
	since := time.Unix(0, n.since.Load()).UTC().Format(time.RFC3339)
	switch {
	case !n.probed.Load():
		return []string{"cluster: connecting to etcd"}
	case !n.etcdUp.Load():
		return []string{"cluster: etcd unreachable since " + since + "; delivering within this node's own limits"}
	case !n.joined.Load():
		return []string{"cluster: etcd reachable, joining"}
	}
	return []string{fmt.Sprintf("cluster: member %s of %d", n.o.Name, n.memberCount())}
}

// Member is one node as `mta cluster status` shows it.
type Member struct {
	Name          string `json:"name"`
	Address       string `json:"address"`
	Alive         bool   `json:"alive"`
	LiveEnvelopes int    `json:"live_envelopes"`
	Error         string `json:"error,omitempty"`
}

// Status is the cluster as one node sees it.
type Status struct {
	Self    string   `json:"self"`
	EtcdUp  bool     `json:"etcd_up"`
	Joined  bool     `json:"joined"`
	Members []Member `json:"members"`
}

// Status asks every member for its live envelopes; a member that does not
// answer within the timeout is listed as not alive.
func (n *Node) Status(timeout time.Duration) Status {
	st := Status{Self: n.o.Name, EtcdUp: n.etcdUp.Load(), Joined: n.joined.Load()}
	if !st.Joined {
		st.Members = []Member{{Name: n.o.Name, Address: n.o.Advertise, Alive: true, LiveEnvelopes: n.o.Live()}}
		return st
	}
	members := n.topology()
	out := make([]Member, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		out[i] = Member{Name: memberName(m.Id), Address: m.Address()}
		wg.Add(1)
		go func(mb *Member) {
			defer wg.Done()
			var r statusReply
			if err := n.askPeer(mb.Address, statusReq{Op: "status"}, &r, timeout); err != nil {
				mb.Error = err.Error()
				return
			}
			mb.Alive, mb.LiveEnvelopes = true, r.Live
			if r.Name != "" {
				mb.Name = r.Name
			}
		}(&out[i])
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	st.Members = out
	return st
}

// memberName is the node name in a member ID ("ledgermail@<name>").
func memberName(id string) string {
	if i := strings.IndexByte(id, '@'); i >= 0 {
		return id[i+1:]
	}
	return id
}

// Peers returns the other members' names and addresses.
func (n *Node) Peers() map[string]string {
	out := map[string]string{}
	if !n.joined.Load() {
		return out
	}
	for _, m := range n.topology() {
		if name := memberName(m.Id); name != n.o.Name {
			out[name] = m.Address()
		}
	}
	return out
}

// askPeer sends req to the node actor at addr and decodes its reply.
func (n *Node) askPeer(addr string, req any, reply any, timeout time.Duration) error {
	pid := actor.NewPID(addr, nodeActor)
	res, err := n.sys.Root.RequestFuture(pid, wrap(req), timeout).Result()
	if err != nil {
		return fmt.Errorf("ask %s: %w", addr, err)
	}
	return unwrap(res, reply)
}

// Stop leaves the cluster (deregistering from etcd) and stops the node.
func (n *Node) Stop() {
	n.stopped.Do(func() {
		close(n.stop)
		n.wg.Wait()
		done := make(chan struct{})
		go func() {
			defer close(done)
			if n.joined.Load() {
				// Graceful (deregistered from etcd at once) only while etcd
				// answers: protoactor's provider waits for it without a
				// deadline. Otherwise the member's key expires with its
				// etcd lease (3 s).
				n.c.Shutdown(n.probe())
			} else {
				n.sys.Shutdown()
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			n.o.Log.Warn("leaving the cluster took more than 10 s; stopping anyway (the member's etcd key expires in 3 s)")
		}
		n.etcd.Close()
	})
}

type statusReq struct {
	Op string `json:"op"`
}

type statusReply struct {
	Name string `json:"name"`
	Live int    `json:"live"`
}

// peerActor answers the other nodes: status, and the transfer protocol of
// a drain.
type peerActor struct{ n *Node }

func (a *peerActor) Receive(c actor.Context) {
	msg := c.Message()
	kind, ok := op(msg)
	if !ok {
		return // protoactor's own messages (Started, ...)
	}
	switch kind {
	case "status":
		c.Respond(wrap(statusReply{Name: a.n.o.Name, Live: a.n.o.Live()}))
	case "held":
		var req heldReq
		unwrap(msg, &req)
		c.Respond(wrap(heldReply{Leases: a.n.heldHere(req.Domain)}))
	case "yield":
		var req yieldReq
		if unwrap(msg, &req) == nil {
			go a.n.yieldHere(req.Leases)
		}
	default:
		a.n.receiveTransfer(c, kind, msg)
	}
}
