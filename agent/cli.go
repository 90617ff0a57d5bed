package agent

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/cli"
	"github.com/qianzhi/qianzhi/pkg/logging"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/pkg/version"
)

const usage = `qz-agent — the Qianzhi front-end exchange agent

Usage:
  qz-agent enroll --hub HOST:PORT --token TOKEN   create keys and get a certificate from the hub
  qz-agent run                                    run the agent (as the systemd service does)
  qz-agent config check                           validate the configuration file
  qz-agent status [--json]                        spool, grants, lines and counters
  qz-agent doctor [--json]                        check hub, certificate, clock, resources and disk; say how to fix each
  qz-agent catalog search WORDS… [--json]         approved catalog entries in which every word occurs
  qz-agent apply RESOURCE --fields F,F --mode batch --purpose TEXT [--scenario TEXT]
                                                  apply for a resource (共享申请)
  qz-agent applications [--json]                  applications this node made, and those it must decide
  qz-agent approve ID [--mask FIELD=RULE]… [--days N] [--destroy] [--rate N] [--quota N]
                                                  the provider's approval: masking (脱敏), term, destruction at the end,
                                                  calls a second and a day for a query or verify grant
  qz-agent reject ID --reason TEXT                the provider's refusal
  qz-agent grants [--json]                        this node's own signed approvals, and each grant the hub lists:
                                                  served, or refused and why (the provider decides)
  qz-agent peers [--json]                         peers' seal keys as pinned here, with fingerprints to compare
                                                  by phone; a changed key is shown and needs an audited re-enrolment
  qz-agent feedback report RESOURCE --record KEY --field F --problem TEXT [--suggestion TEXT]
                                                  report an error in a record (纠错)
  qz-agent feedback list                          reports this node made, and those it must answer
  qz-agent feedback answer ID --text TEXT         the provider's answer
  qz-agent reconcile RESOURCE                     compare a table with its consumers' copies; resend what differs
  qz-agent copy RESOURCE --to NODE [--detach]     a full copy (批量复制) under NODE's grant, with progress; resumes after any interruption
  qz-agent copy status [--json]                   each copy: state, rows, files, bytes, batches
  qz-agent verify RESOURCE --with NODE            compare a table with NODE's copy, bucket by bucket; a difference exits non-zero
  qz-agent receipts [--grant G] [--json]          batches provided, and the consumers' receipts checked (exit 1 if one fails)
  qz-agent receipts --destroyed [--grant G]       ended grants provided, and the consumers' destruction receipts checked
  qz-agent call RESOURCE CALL --param NAME=VALUE… [--value FIELD=VALUE…] [--json]
                                                  a query (查询引用), or with --value a verification (比对验证),
                                                  through the hub; the answer is checked against its signed receipt;
                                                  NAME=- reads the value from standard input (one line each), so
                                                  ID numbers stay out of the process list and shell history
  qz-agent calls [--grant G] [--limit N] [--json] calls this node made or answered, with their receipts
  qz-agent batch inspect FILE [--seal-key KEY]    print a batch's header and check its seal
  qz-agent audit checkpoints [--export DIR] [--json]
                                                  the hub's signed audit checkpoints this agent keeps; --export writes
                                                  them for the hub operator's 'qz-central audit verify --against DIR'
  qz-agent version

Every command takes --config FILE (default ` + DefaultConfigPath + ` when present).
`

// Run is qz-agent's main; it returns the error to print.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args = cli.Hoist(args)
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	cmd, rest := args[0], args[1:]
	if (cmd == "config" || cmd == "batch" || cmd == "catalog" || cmd == "feedback" || cmd == "audit") && len(rest) > 0 || cmd == "copy" && len(rest) > 0 && rest[0] == "status" {
		cmd, rest = cmd+" "+rest[0], rest[1:]
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	cfgPath := fs.String("config", "", "configuration file")
	hub := fs.String("hub", "", "hub address host:port")
	token := fs.String("token", "", "enrolment token")
	asJSON := fs.Bool("json", false, "print JSON")
	grantID := fs.String("grant", "", "only this grant")
	sealKey := fs.String("seal-key", "", "provider seal public key (ed25519:…) to check the seal against")
	fields := fs.String("fields", "", "comma-separated fields")
	mode := fs.String("mode", "batch", "batch, query or verify")
	purpose := fs.String("purpose", "", "what the data is for (用途)")
	scenario := fs.String("scenario", "", "where it is used (应用场景)")
	reason := fs.String("reason", "", "why (required to reject)")
	record := fs.String("record", "", "which record: its key, e.g. 身份证号=110101…")
	field := fs.String("field", "", "the field that is wrong")
	problem := fs.String("problem", "", "what is wrong")
	suggestion := fs.String("suggestion", "", "what it should be")
	text := fs.String("text", "", "the answer")
	days := fs.Int("days", 0, "the grant's term in days (0: no end)")
	destroy := fs.Bool("destroy", false, "the consumer destroys what it received once the grant ends")
	destroyed := fs.Bool("destroyed", false, "receipts: the consumers' destruction receipts of ended grants instead")
	to := fs.String("to", "", "the consumer's node ID")
	with := fs.String("with", "", "the consumer's node ID")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the verdict")
	detach := fs.Bool("detach", false, "start the copy and return without following it")
	rate := fs.Float64("rate", 0, "calls a second the grant allows (query and verify; 0: the hub's default)")
	quota := fs.Int("quota", 0, "calls a day the grant allows (query and verify; 0: the hub's default)")
	limit := fs.Int("limit", 100, "at most this many records")
	callTimeout := fs.Duration("call-timeout", 0, "give up on the call after this long (0: the hub's timeout)")
	export := fs.String("export", "", "folder to write the audit checkpoints to (audit checkpoints)")
	params := cli.Pairs{}
	fs.Var(params, "param", "NAME=VALUE parameter of the call (repeatable)")
	values := cli.Pairs{}
	fs.Var(values, "value", "FIELD=VALUE to verify (repeatable); makes the call a verification")
	masks := cli.Pairs{}
	fs.Var(masks, "mask", "FIELD=RULE masking rule for the grant (repeatable): keep(A,B), idcard, phone, name, truncate(N), hash, null")
	pos, err := cli.Parse(fs, rest)
	if err != nil {
		return err
	}
	switch cmd {
	case "version":
		fmt.Fprintln(stdout, version.String("qz-agent"))
		return nil
	case "batch inspect":
		if err := cli.Want(pos, 1, "qz-agent batch inspect FILE"); err != nil {
			return err
		}
		return inspect(pos[0], *sealKey, *cfgPath, stdout)
	}
	path := *cfgPath
	if path == "" {
		if _, err := os.Stat(DefaultConfigPath); err == nil {
			path = DefaultConfigPath
		}
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	switch cmd {
	case "config check":
		if path == "" {
			path = "built-in defaults"
		}
		if err := checkConnections(cfg, logging.New(stderr, "warn", "")); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: OK (%d resources, %d subscriptions; each opened and checked)\n", path, len(cfg.Resources), len(cfg.Subscriptions))
		return nil
	case "enroll":
		if *token == "" {
			return cli.Usagef("--token is required: the token printed by 'qz-central node add'")
		}
		addr := cfg.Hub
		if *hub != "" {
			addr = *hub
		}
		id, err := Enroll(ctx, cfg.identityDir(), addr, *token, cfg.Transport, logging.New(stderr, "warn", ""))
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "enrolled as node %s; certificate valid until %s\n", id.NodeID, id.Leaf.NotAfter.Local().Format(time.DateOnly))
		return nil
	case "run":
		// Caught from the start: a SIGHUP while starting is a reload
		// once running, not the end of the process.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		a, err := New(cfg, logging.New(stderr, cfg.LogLevel, ""))
		if err != nil {
			return err
		}
		defer a.Close()
		return a.Serve(ctx, path, hup)
	case "status":
		return status(cfg, *asJSON, stdout)
	case "doctor":
		return doctor(ctx, cfg, path, *asJSON, stdout)
	case "apply":
		if err := cli.Want(pos, 1, "qz-agent apply RESOURCE --fields F,F --mode batch --purpose TEXT"); err != nil {
			return err
		}
		a, err := Apply(ctx, cfg, api.ApplicationRequest{Resource: pos[0], Fields: cli.List(*fields), Mode: *mode, Purpose: *purpose, Scenario: *scenario})
		if err != nil {
			return err
		}
		return printApplications(stdout, []api.Application{a}, "", false)
	case "applications":
		as, me, err := Applications(ctx, cfg)
		if err != nil {
			return err
		}
		return printApplications(stdout, as, me, *asJSON)
	case "approve", "reject":
		if err := cli.Want(pos, 1, "qz-agent "+cmd+" APPLICATION_ID"); err != nil {
			return err
		}
		// A rejection without a reason goes to the hub too: it refuses it
		// and records the attempt.
		d := api.Decision{Approve: cmd == "approve", Reason: *reason, Days: *days, Destroy: *destroy, Rate: *rate, Quota: *quota}
		if len(masks) > 0 {
			d.Masks = masks
		}
		decide := Decide
		if d.Approve {
			// Signed and kept here first: the provider serves only
			// the grant that matches its own record.
			decide = ApproveApplication
		}
		a, err := decide(ctx, cfg, pos[0], d)
		if err != nil {
			return err
		}
		return printApplications(stdout, []api.Application{a}, "", false)
	case "grants":
		r, err := ReadGrants(ctx, cfg)
		if err != nil {
			return err
		}
		return printGrants(stdout, r, *asJSON)
	case "peers":
		me, ks, err := Peers(ctx, cfg)
		if err != nil {
			return err
		}
		return printPeers(stdout, me, ks, *asJSON)
	case "feedback report":
		if err := cli.Want(pos, 1, "qz-agent feedback report RESOURCE --record KEY --field F --problem TEXT"); err != nil {
			return err
		}
		var f api.Feedback
		me, err := hubCall(ctx, cfg, http.MethodPost, "/v1/feedback", api.FeedbackRequest{Resource: pos[0], Record: *record, Field: *field, Problem: *problem, Suggestion: *suggestion}, &f)
		if err != nil {
			return err
		}
		return printFeedback(stdout, []api.Feedback{f}, me)
	case "feedback list":
		var fs []api.Feedback
		me, err := hubCall(ctx, cfg, http.MethodGet, "/v1/feedback", nil, &fs)
		if err != nil {
			return err
		}
		return printFeedback(stdout, fs, me)
	case "feedback answer":
		if err := cli.Want(pos, 1, "qz-agent feedback answer ID --text TEXT"); err != nil {
			return err
		}
		var f api.Feedback
		me, err := hubCall(ctx, cfg, http.MethodPost, "/v1/feedback/"+url.PathEscape(pos[0])+"/answer", map[string]string{"text": *text}, &f)
		if err != nil {
			return err
		}
		return printFeedback(stdout, []api.Feedback{f}, me)
	case "catalog search":
		vs, err := SearchCatalog(ctx, cfg, pos)
		if err != nil {
			return err
		}
		return printCatalog(stdout, vs, *asJSON)
	case "reconcile":
		if err := cli.Want(pos, 1, "qz-agent reconcile RESOURCE"); err != nil {
			return err
		}
		gs, err := Reconcile(ctx, cfg, pos[0])
		if err != nil {
			return err
		}
		printReconcile(stdout, pos[0], gs)
		return nil
	case "copy":
		if err := cli.Want(pos, 1, "qz-agent copy RESOURCE --to NODE"); err != nil {
			return err
		}
		if *to == "" {
			return cli.Usagef("--to NODE is required: the consumer's node ID")
		}
		req, err := StartCopy(ctx, cfg, pos[0], *to)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "copy %s of %s to %s asked for (grant %s)\n", req.ID, req.Resource, req.Consumer, req.Grant)
		if *detach {
			return nil
		}
		return followCopy(ctx, cfg, req, stdout, logging.IsTerminal(stdout))
	case "verify":
		if err := cli.Want(pos, 1, "qz-agent verify RESOURCE --with NODE"); err != nil {
			return err
		}
		if *with == "" {
			return cli.Usagef("--with NODE is required: the consumer's node ID")
		}
		v, err := StartVerify(ctx, cfg, pos[0], *with)
		if err != nil {
			return err
		}
		return waitVerify(ctx, cfg, v, *timeout, stdout)
	case "copy status":
		cs, err := Copies(cfg)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, cs)
		}
		return printCopies(stdout, cs)
	case "receipts":
		if *destroyed {
			ls, err := ListDestructions(ctx, cfg, *grantID)
			if err != nil {
				return err
			}
			if err := printDestructions(stdout, ls, *asJSON); err != nil {
				return err
			}
			return failedDestructions(ls)
		}
		ls, err := ListReceipts(ctx, cfg, *grantID)
		if err != nil {
			return err
		}
		if err := printReceipts(stdout, ls, *asJSON); err != nil {
			return err
		}
		return failedReceipts(ls)
	case "call":
		if err := cli.Want(pos, 2, "qz-agent call RESOURCE CALL --param NAME=VALUE…"); err != nil {
			return err
		}
		if err := readDashValues(os.Stdin, params, values); err != nil {
			return err
		}
		req := api.CallRequest{Resource: pos[0], Call: pos[1], Mode: api.ModeQuery, Params: params, TimeoutMS: int(callTimeout.Milliseconds())}
		if len(values) > 0 {
			req.Mode, req.Values = api.ModeVerify, values
		}
		ans, err := Call(ctx, cfg, req)
		if err != nil {
			return err
		}
		return printAnswer(stdout, ans, *asJSON)
	case "audit checkpoints":
		return auditCheckpoints(cfg, *export, *asJSON, stdout)
	case "calls":
		recs, err := CallRecords(ctx, cfg, *grantID, *limit)
		if err != nil {
			return err
		}
		return printCallRecords(stdout, recs, *asJSON)
	}
	return cli.Usagef("unknown command %q; run 'qz-agent help'", strings.Join(args, " "))
}

// checkConnections opens every resource and subscription once, so that
// unreachable databases, wrong passwords, missing tables and keys show now
// rather than when the agent runs.
func checkConnections(cfg Config, log *slog.Logger) error {
	var errs []error
	for _, r := range cfg.Resources {
		src, err := r.Source.OpenSource(log.With("resource", r.ID))
		if err != nil {
			errs = append(errs, fmt.Errorf("resource %s: %w", r.ID, err))
			continue
		}
		src.Close()
	}
	for _, e := range cfg.Subscriptions {
		sink, err := e.Sink.OpenSink(log.With("subscription", e.ID))
		if err != nil {
			errs = append(errs, fmt.Errorf("subscription %s: %w", e.ID, err))
			continue
		}
		sink.Close()
	}
	return errors.Join(errs...)
}

// inspect prints a batch. The seal is checked against --seal-key, or this
// agent's own key when the batch is its own.
func inspect(path, key, cfgPath string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	info, err := batch.ReadInfo(f, fi.Size())
	if err != nil {
		return fmt.Errorf("%s is not a readable batch: %w", path, err)
	}
	lookup := func(keyID string) (seal.PublicKey, error) {
		if key != "" {
			return seal.ParsePublic(key)
		}
		cfg, err := LoadConfig(cfgPath)
		if err == nil {
			if id, err := LoadIdentity(cfg.identityDir()); err == nil && id.Seal.KeyID() == keyID {
				return id.Seal.Public(), nil
			}
		}
		return seal.PublicKey{}, fmt.Errorf("no public key for seal %s: pass --seal-key (see 'qz-central node list')", keyID)
	}
	_, verr := batch.Verify(f, fi.Size(), lookup)
	batch.Inspect(w, info, verr)
	if verr != nil {
		return errors.New("seal check failed")
	}
	return nil
}

// Status is what qz-agent status reports.
type Status struct {
	Node       string           `json:"node"`
	Hub        string           `json:"hub"`
	Transport  string           `json:"transport"`   // last used: quic or tcp
	Connected  string           `json:"connected"`   // when that connection was made (RFC 3339)
	Metrics    string           `json:"metrics"`     // where /metrics and /healthz are served, while running
	CallAPI    string           `json:"call_api"`    // where the local call endpoint listens, while running
	CertExpiry time.Time        `json:"cert_expiry"` // the node certificate's end (renewed by the running agent)
	SpoolBytes int64            `json:"spool_bytes"` // waiting and kept: what counts in the quota
	SpoolQuota int64            `json:"spool_quota"`
	Spooled    int              `json:"spooled_batches"` // waiting for upload
	Kept       int              `json:"kept_batches"`    // uploaded, kept until the consumer's receipt is known
	KeptBytes  int64            `json:"kept_bytes"`
	Quarantine int              `json:"quarantined_batches"`
	Applied    map[string]int64 `json:"applied"`
	Counters   map[string]int64 `json:"counters"`
	Rejections []Rejection      `json:"rejections"`
	Stopped    []StoppedLine    `json:"stopped"`
	Tables     []TableLine      `json:"tables"`
	// KeyWarnings are peers' seal keys that changed (accepted with an
	// audited re-enrolment) or were refused (see qz-agent peers).
	KeyWarnings []PeerKey `json:"key_warnings,omitempty"`
}

// TableLine is where the extraction of a table for one grant stands.
type TableLine struct {
	Grant     string `json:"grant"`
	Phase     string `json:"phase"`               // snapshot, incremental or done
	Position  string `json:"position,omitempty"`  // the incremental watermark reached
	Reconcile string `json:"reconcile,omitempty"` // requested, waiting for the consumer, resending
}

// ReadStatus reads the agent's status from its state; it works while the
// agent runs.
func ReadStatus(cfg Config) (*Status, error) {
	id, err := LoadIdentity(cfg.identityDir())
	if err != nil {
		return nil, err
	}
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return nil, err
	}
	defer st.Close()
	s := &Status{Node: id.NodeID, Hub: cfg.Hub, SpoolQuota: int64(cfg.Spool.Quota), Applied: map[string]int64{}}
	es, err := st.spoolAll()
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		switch e.State {
		case spoolWaiting:
			s.Spooled++
			s.SpoolBytes += e.Size
		case spoolKept:
			s.Kept++
			s.KeptBytes += e.Size
			s.SpoolBytes += e.Size
		case spoolQuarantined:
			s.Quarantine++
		}
	}
	s.Transport, s.Connected, s.Metrics = st.runtime("transport"), st.runtime("connected"), st.runtime("metrics")
	s.CallAPI = st.runtime("call_api")
	s.CertExpiry = id.Leaf.NotAfter
	rows, err := st.db.Query(`SELECT grant_id, seq FROM applied`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var g string
		var n int64
		rows.Scan(&g, &n)
		s.Applied[g] = n
	}
	rows.Close()
	if s.Counters, err = st.Counters(); err != nil {
		return nil, err
	}
	if s.Rejections, err = st.Rejections(); err != nil {
		return nil, err
	}
	if s.Stopped, err = st.Stopped(); err != nil {
		return nil, err
	}
	if s.Tables, err = tableLines(st); err != nil {
		return nil, err
	}
	ks, err := st.PeerKeys(context.Background())
	if err != nil {
		return nil, err
	}
	for _, k := range ks {
		if k.Status != PeerFirst {
			s.KeyWarnings = append(s.KeyWarnings, k)
		}
	}
	return s, nil
}

func status(cfg Config, asJSON bool, w io.Writer) error {
	s, err := ReadStatus(cfg)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s\nhub\t%s (last connected over %s at %s)\nspool\t%d batches to upload, %d kept until receipted (%d bytes), %d of %d bytes in use, %d quarantined\n",
		s.Node, s.Hub, orDash(s.Transport), orDash(s.Connected), s.Spooled, s.Kept, s.KeptBytes, s.SpoolBytes, s.SpoolQuota, s.Quarantine)
	fmt.Fprintf(tw, "certificate\tvalid until %s (%d days; renewed automatically)\n", s.CertExpiry.Local().Format(time.DateTime), int(time.Until(s.CertExpiry).Hours()/24))
	if s.Metrics != "" {
		fmt.Fprintf(tw, "metrics\thttp://%s/metrics\n", s.Metrics)
	}
	if s.CallAPI != "" {
		fmt.Fprintf(tw, "call API\thttp://%s/v1/ (token in %s)\n", s.CallAPI, cfg.callTokenFile())
	}
	var keys []string
	for k := range s.Applied {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "applied %s\tup to batch %d\n", k, s.Applied[k])
	}
	keys = keys[:0]
	for k := range s.Counters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%d\n", k, s.Counters[k])
	}
	for _, r := range s.Rejections {
		fmt.Fprintf(tw, "rejected\t%s/%d by %s at %s: %s\n", r.Grant, r.Seq, r.Side, r.At.Local().Format(time.DateTime), r.Reason)
	}
	for _, l := range s.Tables {
		line := l.Phase
		if l.Position != "" {
			line += ", up to " + l.Position
		}
		if l.Reconcile != "" {
			line += "; reconcile " + l.Reconcile
		}
		fmt.Fprintf(tw, "table %s	%s\n", l.Grant, line)
	}
	for _, l := range s.Stopped {
		fmt.Fprintf(tw, "STOPPED\t%s (%s) since %s: %s\n", l.Grant, l.Side, l.At.Local().Format(time.DateTime), l.Reason)
	}
	for _, k := range s.KeyWarnings {
		what := "KEY CHANGED"
		if k.Status == PeerRefused {
			what = "KEY REFUSED"
		}
		fmt.Fprintf(tw, "%s\tnode %s seal key %s since %s: %s (fingerprint %s)\n", what, k.Node, k.KeyID, k.FirstSeen.Local().Format(time.DateTime), peerState(k), k.Fingerprint)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
