package central

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/central/store"
	"github.com/qianzhi/qianzhi/pkg/anchor"
	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/cli"
	"github.com/qianzhi/qianzhi/pkg/logging"
	"github.com/qianzhi/qianzhi/pkg/mask"
	"github.com/qianzhi/qianzhi/pkg/pki"
	"github.com/qianzhi/qianzhi/pkg/version"
)

// DefaultConfigPath is read when --config is not given and it exists.
const DefaultConfigPath = "/etc/qianzhi/central.yaml"

const usage = `qz-central — the Qianzhi hub

Usage:
  qz-central init                     create the CA, server certificate and database
  qz-central run                      serve agents (QUIC and TLS/TCP)
  qz-central config check             validate the configuration file
  qz-central backup DIR               copy the hub's state (database, CA, payloads) while it runs
  qz-central restore DIR              put a backup in place of a stopped hub's (moved-away) state
  qz-central status [--json]          health, nodes (last seen, certificate), grants, batches held
  qz-central node add ID --name NAME  add a node and print its one-time enrolment token
  qz-central node token ID            print a new enrolment token for a node
  qz-central node revoke ID [--destroy]
                                      refuse the node's certificate from now on and end every grant
                                      it takes part in; --destroy orders their consumers to destroy
                                      what they received
  qz-central node list
  qz-central grant add --resource R --consumer NODE [--mode batch|query|verify] [--expires 720h] [--fields F,F]
                      [--mask FIELD=RULE]… [--destroy] [--rate N] [--quota N]
                                      --rate and --quota bound a query or verify grant's calls a second
                                      and a day (default: the hub's call_rate and call_quota);
                                      refused for conditional and none resources: their provider decides
                                      through the application workflow
  qz-central grant revoke GRANT_ID [--destroy]
  qz-central grant list
  qz-central batch list [--grant G]   stored batches: size, receipt, purge
  qz-central copy list                full copies (批量复制) the providers reported: state, rows, files, bytes
  qz-central calls [--grant G] [--node N] [--limit 100] [--json]
                                      query and verify calls, newest first: who asked what, what became of it
  qz-central audit verify [--against DIR]
                                      check the audit log's hash chain, and hold it to the hub's signed
                                      checkpoints (--against: those gathered from agents with
                                      'qz-agent audit checkpoints --export DIR'); names records cut or rewritten
  qz-central audit accept-cut --reason TEXT
                                      when no backup holds records the hub's checkpoints signed: drop those
                                      checkpoints and record the loss (audit.cut), so the hub starts again
  qz-central audit checkpoints [--export DIR]
                                      the signed checkpoints the hub keeps; --export writes them for a later --against
  qz-central audit list
  qz-central audit export [--from DATE] [--to DATE] [--format jsonl|csv]
                                      the audit records of a period, for archiving or review
  qz-central calendar [YEAR]          the working-day calendar: holidays and working weekends
  qz-central catalog list             every catalog entry's newest version, its review and deadline
  qz-central catalog show RESOURCE    an entry's versions, in full
  qz-central catalog approve RESOURCE --version N
  qz-central catalog reject RESOURCE --version N --reason TEXT
  qz-central application list [--state S,S]
  qz-central application show ID      an application and its history
  qz-central application approve ID   the hub's compliance review: passes it on (or approves an unconditional one)
  qz-central application reject ID --reason TEXT
  qz-central report overdue           review steps past their deadline, in working days
  qz-central report departments [--format table|csv]
                                      each department's evaluation (考核): resources, freshness,
                                      data provided and used, decisions and answers on time
  qz-central operator add NAME --role operator|reviewer --out DIR
                                      on the hub host: a certificate for a person who runs
                                      commands from elsewhere (--remote HOST:PORT --operator DIR)
  qz-central operator revoke NAME | operator list
  qz-central version

Every command takes --config FILE (default ` + DefaultConfigPath + ` when present). On the hub
host, while the hub runs, commands go through its admin socket and the audit log names the user.
From elsewhere: --remote HOST:PORT --operator DIR; the reviewer role may approve and reject catalog
entries and applications, the operator role manage nodes and grants, both may list and report.
`

// needsProvider refuses the operator's grant for a resource whose provider
// must decide (谁提供谁负责): one its catalog entry, approved or newly
// declared, makes conditional or none. The provider's agent would refuse
// such a grant anyway; saying so here saves the operator the surprise.
func needsProvider(ctx context.Context, st store.Store, resource string) error {
	vs, err := st.CatalogVersions(ctx, resource)
	if err != nil {
		return err
	}
	// The newest version (what the provider declares now) and the newest
	// approved one (what the catalog shows) both count.
	var check []api.CatalogVersion
	if len(vs) > 0 {
		check = append(check, vs[0])
	}
	for _, v := range vs {
		if v.Status == store.CatalogApproved {
			check = append(check, v)
			break
		}
	}
	for _, v := range check {
		switch v.Entry.Category {
		case api.ShareNone:
			return fmt.Errorf("resource %s is not shared (不予共享, category none): no grant can be made for it, and its provider's agent would refuse one", resource)
		case api.ShareConditional:
			return fmt.Errorf("resource %s is conditional (有条件共享): its provider decides; the consumer applies with 'qz-agent apply', the hub reviews with 'qz-central application approve', the provider approves with 'qz-agent approve'", resource)
		}
	}
	return nil
}

// Run is qz-central's main; it returns the error to print.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	args = cli.Hoist(args)
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	cmd, rest := splitCommand(args)
	o, pos, err := parseFlags(cmd, rest)
	if err != nil {
		return err
	}
	if cmd == "version" {
		fmt.Fprintln(stdout, version.String("qz-central"))
		return nil
	}
	if o.remote != "" {
		if readsHostFolder(cmd, o) {
			return cli.Usagef("%s reads or writes a folder on the hub host: run it there", cmd)
		}
		return viaRemote(ctx, o, args, stdout, stderr)
	}
	path := o.config
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
		if _, err := cfg.Calendar(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: OK\n", orDefaults(path))
		return nil
	case "calendar":
		return printCalendar(cfg, pos, stdout)
	case "init":
		return initHub(cfg, stdout)
	case "backup", "restore":
		if err := cli.Want(pos, 1, "qz-central "+cmd+" DIR"); err != nil {
			return err
		}
		if cmd == "backup" {
			return backup(ctx, cfg, pos[0], stdout)
		}
		return restore(ctx, cfg, pos[0], stdout)
	case "operator add":
		return operatorAdd(store.WithActor(ctx, localActor()), cfg, pos, o, stdout)
	case "run":
		log := logging.New(stderr, cfg.LogLevel, "")
		// SIGHUP would end the process by default (and systemd counts it a
		// clean stop, so it would stay down): say what it does here instead.
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for range hup {
				log.Warn("SIGHUP ignored: the hub re-reads holiday calendars by itself; other settings change at a restart (systemctl restart qz-central)")
			}
		}()
		h, err := Open(cfg, log)
		if err != nil {
			return err
		}
		defer h.Close()
		return h.Serve(ctx, nil)
	}
	// With the hub running, its admin socket carries the command: the hub
	// runs it on its own store and records who asked.
	// Except commands that name a folder here: the hub would read or write
	// it as its own user, from its own working directory.
	if !readsHostFolder(cmd, o) {
		if handled, err := viaSocket(ctx, cfg, args, stdout, stderr); handled {
			return err
		}
	}
	st, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	return admin(store.WithActor(ctx, localActor()), cfg, st, cmd, pos, o, stdout, stderr)
}

// opts are the admin commands' flags.
type opts struct {
	config, name, resource, consumer, grantID, from, to, format, reason, state, fields string
	remote, operator, role, out, node, mode, against, export                           string
	expires                                                                            time.Duration
	rate                                                                               float64
	quota, limit                                                                       int
	destroy                                                                            bool
	version                                                                            int
	masks                                                                              cli.Pairs
	replace, json                                                                      bool
	raw                                                                                []string // the arguments as given
}

// splitCommand takes the command words (one or two) off args.
func splitCommand(args []string) (string, []string) {
	cmd, rest := args[0], args[1:]
	if (cmd == "node" || cmd == "grant" || cmd == "audit" || cmd == "config" || cmd == "batch" || cmd == "copy" || cmd == "catalog" || cmd == "application" || cmd == "report" || cmd == "operator") && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		cmd, rest = cmd+" "+rest[0], rest[1:]
	}
	return cmd, rest
}

// parseFlags reads the flags of a command.
func parseFlags(cmd string, rest []string) (*opts, []string, error) {
	o := &opts{masks: cli.Pairs{}}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.StringVar(&o.config, "config", "", "configuration file")
	fs.StringVar(&o.name, "name", "", "node display name")
	fs.StringVar(&o.resource, "resource", "", "resource ID")
	fs.StringVar(&o.consumer, "consumer", "", "consumer node ID")
	fs.StringVar(&o.grantID, "grant", "", "only this grant")
	fs.DurationVar(&o.expires, "expires", 0, "grant lifetime (0: no end)")
	fs.StringVar(&o.from, "from", "", "first day, 2006-01-02 (China time)")
	fs.StringVar(&o.to, "to", "", "last day, 2006-01-02 (China time)")
	fs.StringVar(&o.format, "format", "", "output format: jsonl or csv (audit export), table or csv (report departments)")
	fs.StringVar(&o.reason, "reason", "", "why (required to reject)")
	fs.StringVar(&o.state, "state", "", "only applications in these states")
	fs.BoolVar(&o.destroy, "destroy", false, "the consumer must destroy what it received under the grant")
	fs.IntVar(&o.version, "version", 0, "the catalog entry version reviewed")
	fs.StringVar(&o.fields, "fields", "", "comma-separated fields the grant lets through (default all)")
	fs.Var(o.masks, "mask", "FIELD=RULE masking rule (repeatable)")
	fs.StringVar(&o.remote, "remote", "", "run the command on the hub at HOST:PORT, as the operator of --operator")
	fs.StringVar(&o.operator, "operator", "", "folder with an operator's certificate (qz-central operator add)")
	fs.StringVar(&o.role, "role", "", "operator or reviewer")
	fs.StringVar(&o.out, "out", "", "folder to write the operator's key and certificate to")
	fs.BoolVar(&o.replace, "replace", false, "issue a new certificate for an existing operator")
	fs.BoolVar(&o.json, "json", false, "print JSON (status, calls)")
	fs.StringVar(&o.node, "node", "", "only calls this node made or answered")
	fs.IntVar(&o.limit, "limit", 100, "at most this many (calls)")
	fs.StringVar(&o.mode, "mode", api.ModeBatch, "the grant's mode: batch, query or verify")
	fs.Float64Var(&o.rate, "rate", 0, "calls a second a query or verify grant allows (0: the hub's call_rate)")
	fs.IntVar(&o.quota, "quota", 0, "calls a day a query or verify grant allows (0: the hub's call_quota)")
	fs.StringVar(&o.against, "against", "", "folder of exported audit checkpoints to verify the log against (audit verify)")
	fs.StringVar(&o.export, "export", "", "folder to write the hub's audit checkpoints to (audit checkpoints)")
	o.raw = rest
	pos, err := cli.Parse(fs, rest)
	return o, pos, err
}

// admin runs an admin command on the hub's store; the actor in ctx is who
// the audit log names.
func admin(ctx context.Context, cfg Config, st store.Store, cmd string, pos []string, o *opts, stdout, stderr io.Writer) error {
	if slices.Contains(viewOnly, cmd) && cmd != "audit verify" {
		// Reading is an action too: who looked at what is on record.
		// (Not verifying: that must leave the log it checks as it is.)
		if err := st.Audit(ctx, store.Actor(ctx), "admin.view", cmd, strings.Join(o.raw, " ")); err != nil {
			return err
		}
	}
	switch cmd {
	case "operator revoke":
		if err := cli.Want(pos, 1, "qz-central operator revoke NAME"); err != nil {
			return err
		}
		if err := st.RevokeOperator(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "operator %s revoked: refused at the next handshake\n", pos[0])
		return nil
	case "operator list":
		ops, err := st.Operators(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLE\tADDED\tREVOKED")
		for _, op := range ops {
			rev := "-"
			if !op.Revoked.IsZero() {
				rev = op.Revoked.In(calendar.CST).Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", op.Name, op.Role, op.Added.In(calendar.CST).Format(time.DateTime), rev)
		}
		return tw.Flush()
	case "node add":
		if err := cli.Want(pos, 1, "qz-central node add NODE_ID --name NAME"); err != nil {
			return err
		}
		if o.name == "" {
			return cli.Usagef("--name is required: the department's name, e.g. --name \"市人社局\"")
		}
		if err := validID(pos[0]); err != nil {
			return err
		}
		tok, err := newToken(cfg)
		if err != nil {
			return err
		}
		if err := st.AddNode(ctx, pos[0], o.name, tok.Hash(), time.Now().Add(cfg.TokenTTL)); err != nil {
			if errors.Is(err, store.ErrExists) {
				return fmt.Errorf("%w; use 'qz-central node token %s' for a new token", err, pos[0])
			}
			return err
		}
		fmt.Fprintf(stderr, "node %s added; its enrolment token (single use, valid %s):\n", pos[0], cfg.TokenTTL)
		fmt.Fprintln(stdout, tok)
		return nil
	case "node token":
		if err := cli.Want(pos, 1, "qz-central node token NODE_ID"); err != nil {
			return err
		}
		tok, err := newToken(cfg)
		if err != nil {
			return err
		}
		if err := st.NewToken(ctx, pos[0], tok.Hash(), time.Now().Add(cfg.TokenTTL)); err != nil {
			return err
		}
		fmt.Fprintln(stdout, tok)
		return nil
	case "node revoke":
		if err := cli.Want(pos, 1, "qz-central node revoke NODE_ID [--destroy]"); err != nil {
			return err
		}
		ended, err := st.RevokeNode(ctx, pos[0], o.destroy)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "node %s revoked: its certificate is refused from now on\n", pos[0])
		if len(ended) == 0 {
			fmt.Fprintln(stdout, "it took part in no active grant")
			return nil
		}
		fmt.Fprintf(stdout, "its %d active grants ended with it (nothing more is stored or delivered under them): %s\n", len(ended), strings.Join(ended, ", "))
		if o.destroy {
			fmt.Fprintln(stdout, "their consumers destroy what they received and send signed destruction receipts (see grant list); a revoked consumer can no longer connect to learn of it")
		}
		return nil
	case "status":
		s, err := readHubStatus(ctx, cfg, st)
		if err != nil {
			return err
		}
		return printHubStatus(s, o.json, stdout)
	case "node list":
		ns, err := st.Nodes(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tNAME\tSTATUS\tCERT EXPIRES\tSEAL KEY")
		for _, n := range ns {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.ID, n.Name, n.Status, day(n.CertExpiry), n.SealPub)
		}
		return tw.Flush()
	case "grant add":
		if o.resource == "" || o.consumer == "" {
			return cli.Usagef("qz-central grant add --resource RESOURCE --consumer NODE_ID")
		}
		r, err := st.Resource(ctx, o.resource)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("resource %s is not known: its provider's agent registers it when it starts with the resource in its config", o.resource)
		}
		if err != nil {
			return err
		}
		if err := needsProvider(ctx, st, r.ID); err != nil {
			return err
		}
		c, err := st.Node(ctx, o.consumer)
		if err != nil {
			return fmt.Errorf("consumer: %w; add it with 'qz-central node add'", err)
		}
		if c.Status == store.NodeRevoked {
			return fmt.Errorf("consumer %s is revoked", c.ID)
		}
		if c.ID == r.Provider {
			return fmt.Errorf("node %s provides %s itself; a grant needs another consumer", c.ID, r.ID)
		}
		if o.mode != api.ModeBatch && o.mode != api.ModeQuery && o.mode != api.ModeVerify {
			return cli.Usagef("--mode %q: use batch, query or verify", o.mode)
		}
		if o.rate < 0 || o.quota < 0 {
			return cli.Usagef("--rate and --quota must not be negative (0: the hub's call_rate and call_quota)")
		}
		if (o.rate != 0 || o.quota != 0) && o.mode == api.ModeBatch {
			return cli.Usagef("--rate and --quota bound query and verify calls: add --mode query or --mode verify")
		}
		g := store.Grant{ID: "g-" + randHex(6), Resource: r.ID, Provider: r.Provider, Consumer: c.ID, Mode: o.mode, Fields: cli.List(o.fields), Destroy: o.destroy,
			Rate: o.rate, Quota: o.quota}
		for f, rule := range o.masks {
			if _, err := mask.Parse(rule); err != nil {
				return fmt.Errorf("--mask %s: %w", f, err)
			}
		}
		if len(o.masks) > 0 {
			g.Masks = o.masks
		}
		if o.expires > 0 {
			g.Expires = time.Now().Add(o.expires)
		}
		if err := st.AddGrant(ctx, g); err != nil {
			return err
		}
		fmt.Fprintln(stdout, g.ID)
		return nil
	case "grant revoke":
		if err := cli.Want(pos, 1, "qz-central grant revoke GRANT_ID [--destroy]"); err != nil {
			return err
		}
		if err := st.RevokeGrant(ctx, pos[0], o.destroy); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "grant %s revoked: nothing more is delivered under it\n", pos[0])
		if o.destroy {
			fmt.Fprintln(stdout, "the consumer destroys what it received and sends a signed destruction receipt (see grant list)")
		}
		return nil
	case "grant list":
		gs, err := st.Grants(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "GRANT\tRESOURCE\tPROVIDER\tCONSUMER\tMODE\tSTATUS\tEXPIRES\tDESTROYED")
		for _, g := range gs {
			destroyed := "-"
			if g.Destroy {
				destroyed = "waiting for the consumer's receipt"
				if rc, at, err := st.Destruction(ctx, g.ID); err == nil && rc != nil {
					destroyed = at.In(calendar.CST).Format(time.DateTime) + " (signed receipt)"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.Resource, g.Provider, g.Consumer, g.Mode, g.Status, day(g.Expires), destroyed)
		}
		return tw.Flush()
	case "batch list":
		bs, err := st.Batches(ctx, o.grantID)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "GRANT\tBATCH\tRESOURCE\tPROVIDER → CONSUMER\tBYTES\tSTORED\tRECEIPT\tPAYLOAD")
		for _, b := range bs {
			rc, payload := "waiting", "held"
			if !b.Receipted.IsZero() {
				rc = b.Receipted.Local().Format(time.DateTime)
			}
			if !b.Purged.IsZero() {
				payload = "purged"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s → %s\t%d\t%s\t%s\t%s\n", b.Grant, b.Sequence, b.Resource, b.Provider, b.Consumer, b.Size, b.Stored.Local().Format(time.DateTime), rc, payload)
		}
		return tw.Flush()
	case "copy list":
		cs, err := st.Copies(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "COPY	RESOURCE	PROVIDER → CONSUMER	STATE	ROWS	FILES	BYTES	BATCHES	UPDATED	NOTE")
		for _, c := range cs {
			note := c.Reason
			if note == "" {
				note = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s → %s\t%s\t%d/%d\t%d/%d\t%d/%d\t%d\t%s\t%s\n", c.ID, c.Resource, c.Provider, c.Consumer, c.State,
				c.Rows, c.TotalRows, c.Files, c.TotalFiles, c.Bytes, c.TotalBytes, c.Batches, c.Updated.Local().Format(time.DateTime), note)
		}
		return tw.Flush()
	case "calls":
		return listCalls(ctx, st, o, stdout)
	case "audit list":
		recs, err := st.AuditLog(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tACTION\tSUBJECT\tDETAIL")
		for _, r := range recs {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.At.Local().Format(time.DateTime), r.Actor, r.Action, r.Subject, r.Detail)
		}
		return tw.Flush()
	case "catalog list", "catalog show", "catalog approve", "catalog reject":
		return catalogCommand(ctx, st, cmd, pos, o.version, o.reason, stdout)
	case "application list", "application show", "application approve", "application reject":
		if cmd == "application reject" && strings.TrimSpace(o.reason) == "" {
			st.Audit(ctx, store.Actor(ctx), "application.refuse", strings.Join(pos, " "), "rejection without a reason")
			return cli.Usagef("a rejection needs --reason: the consumer must know why")
		}
		return applicationCommand(ctx, cfg, st, cmd, pos, o.state, o.reason, stdout)
	case "report overdue":
		return reportOverdue(ctx, cfg, st, stdout)
	case "report departments":
		return reportDepartments(ctx, st, o.format, stdout)
	case "audit export":
		recs, err := st.AuditLog(ctx)
		if err != nil {
			return err
		}
		return exportAudit(recs, o.from, o.to, o.format, stdout)
	case "audit verify":
		return auditVerify(ctx, cfg, st, o.against, stdout)
	case "audit checkpoints":
		return auditCheckpoints(ctx, st, o.export, stdout)
	case "audit accept-cut":
		return acceptCut(ctx, cfg, st, o.reason, stdout)
	}
	return cli.Usagef("unknown command %q; run 'qz-central help'", strings.Join(append([]string{cmd}, pos...), " "))
}

// readsHostFolder reports whether a command reads or writes a folder named
// on its command line, and so must run where it was typed.
func readsHostFolder(cmd string, o *opts) bool {
	return cmd == "audit checkpoints" || cmd == "audit verify" && o.against != ""
}

// auditVerify checks the chain, then holds the log to the hub's own
// checkpoints and to those exported into against (if not "").
func auditVerify(ctx context.Context, cfg Config, st store.Store, against string, stdout io.Writer) error {
	recs, err := st.AuditLog(ctx)
	if err != nil {
		return err
	}
	var problems []error
	if err := VerifyAudit(recs); err != nil {
		problems = append(problems, err)
	}
	own, err := st.Checkpoints(ctx, 0, 0)
	if err != nil {
		return err
	}
	files := []anchor.File{{Holder: "hub", Checkpoints: own}}
	if against != "" {
		fs, err := anchor.ReadDir(against)
		if err != nil {
			return err
		}
		files = append(files, fs...)
	}
	ca, err := loadCACert(cfg)
	if err != nil {
		return err
	}
	rep := verifyAgainst(recs, files, ca)
	if err := joinProblems(append(problems, rep.Problems...)); err != nil {
		// A loss the operator accepted is still a loss; say where the
		// log records it.
		for _, r := range recs {
			if r.Action == "audit.cut" {
				err = fmt.Errorf("%w\n(record %d, audit.cut by %s at %s: %s: %s)", err, r.Seq, r.Actor, cst(r.At), r.Subject, r.Detail)
			}
		}
		return err
	}
	fmt.Fprintf(stdout, "audit log intact: %d records\n", len(recs))
	if rep.Newest == nil {
		if against != "" {
			return fmt.Errorf("%s holds no checkpoint: nothing anchors the log", against)
		}
		fmt.Fprintln(stdout, "no signed checkpoint yet: records cut from the end would not show; verify with --against DIR and the agents' checkpoints")
		return nil
	}
	fmt.Fprintf(stdout, "matches %d signed checkpoints held by %s; newest: %s\n", rep.Checked, strings.Join(rep.Holders, ", "), rep.Newest)
	if last := int64(len(recs)); rep.Newest.Seq < last {
		fmt.Fprintf(stdout, "%s came after it: not anchored yet, a cut there would not show\n", recordRange(rep.Newest.Seq+1, last))
	}
	return nil
}

// acceptCut drops the hub's checkpoints that its log no longer holds and
// records the loss, with the operator's reason, in the same transaction:
// the hub's signature over the lost records is kept in that record, and
// the agents' copies go on showing the loss to audit verify --against.
func acceptCut(ctx context.Context, cfg Config, st store.Store, reason string, stdout io.Writer) error {
	if strings.TrimSpace(reason) == "" {
		return cli.Usagef("accept-cut needs --reason: why the records are gone and no backup holds them, for whoever reads the log later")
	}
	ca, err := loadCACert(cfg)
	if err != nil {
		return err
	}
	recs, err := st.AuditLog(ctx)
	if err != nil {
		return err
	}
	cps, err := st.Checkpoints(ctx, 0, 0)
	if err != nil {
		return err
	}
	stale := staleCheckpoints(recs, cps, ca)
	if len(stale) == 0 {
		fmt.Fprintln(stdout, "nothing to accept: the log holds what every checkpoint of the hub signed")
		return nil
	}
	newest := stale[len(stale)-1]
	last := int64(len(recs))
	subject := fmt.Sprintf("record %d", newest.Seq)
	if newest.Seq > last {
		subject = recordRange(last+1, newest.Seq)
	}
	seqs := make([]int64, len(stale))
	for i, c := range stale {
		seqs[i] = c.Seq
	}
	detail := fmt.Sprintf("checkpoints_dropped=%d newest_seq=%d newest_head=%s newest_signed=%s reason=%s", len(stale), newest.Seq, newest.Head, newest.At.Format(time.RFC3339), reason)
	if err := st.DropCheckpoints(ctx, seqs, subject, detail); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "recorded in the audit log (audit.cut): %s no longer as the hub signed them; %d checkpoints dropped; the hub starts again, and 'audit verify --against' goes on reporting the loss from the agents' checkpoints\n", subject, len(stale))
	return nil
}

// loadCACert reads the hub's CA certificate, which checkpoints are checked
// against.
func loadCACert(cfg Config) (*x509.Certificate, error) {
	b, err := os.ReadFile(cfg.caCert())
	if err != nil {
		return nil, fmt.Errorf("read the hub's CA certificate, which checkpoints are checked against: %w", err)
	}
	ca, err := pki.ParseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.caCert(), err)
	}
	return ca, nil
}

// auditCheckpoints lists the hub's checkpoints, or exports them into dir.
func auditCheckpoints(ctx context.Context, st store.Store, dir string, stdout io.Writer) error {
	cps, err := st.Checkpoints(ctx, 0, 0)
	if err != nil {
		return err
	}
	if dir != "" {
		path, err := anchor.Write(dir, anchor.File{Holder: "hub", Exported: time.Now().UTC(), Checkpoints: cps})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d checkpoints written to %s\n", len(cps), path)
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECORD\tSIGNED (CST)\tHEAD")
	for _, c := range cps {
		fmt.Fprintf(tw, "%d\t%s\t%s\n", c.Seq, c.At.In(calendar.CST).Format(time.DateTime), c.Head)
	}
	return tw.Flush()
}

// VerifyAudit checks the hash chain: a changed, removed or reordered record
// breaks it.
func VerifyAudit(recs []store.AuditRecord) error {
	prev := ""
	for i, r := range recs {
		if r.Seq != int64(i+1) {
			return fmt.Errorf("audit record %d is missing or out of order (found %d)", i+1, r.Seq)
		}
		if store.AuditHash(r) != r.Hash {
			return fmt.Errorf("audit record %d was changed: its hash does not match its content", r.Seq)
		}
		if r.Prev != prev {
			return fmt.Errorf("audit record %d does not follow record %d: record %d (or one before it) was changed and re-hashed, or a record was inserted", r.Seq, r.Seq-1, r.Seq-1)
		}
		prev = r.Hash
	}
	return nil
}

func orDefaults(p string) string {
	if p == "" {
		return "built-in defaults"
	}
	return p
}

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateOnly)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// validID accepts node IDs such as unified social credit codes.
func validID(id string) error {
	if err := api.ValidID("node", id); err != nil {
		return cli.Usagef("%v", err)
	}
	return nil
}

func openStore(cfg Config) (store.Store, error) {
	if _, err := os.Stat(cfg.caCert()); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no CA in %s; run 'qz-central init' first", ErrNotInitialised, cfg.StateDir)
	}
	return store.OpenSQLite(cfg.dbPath())
}

func newToken(cfg Config) (pki.Token, error) {
	b, err := os.ReadFile(cfg.caCert())
	if err != nil {
		return pki.Token{}, err
	}
	c, err := pki.ParseCertPEM(b)
	if err != nil {
		return pki.Token{}, err
	}
	return pki.NewToken(pki.Fingerprint(c))
}

func initHub(cfg Config, stdout io.Writer) error {
	if _, err := os.Stat(cfg.caCert()); err == nil {
		return fmt.Errorf("hub already initialised in %s (a new CA would orphan every enrolled node)", cfg.StateDir)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	ca, err := pki.NewCA("Qianzhi hub CA", 10*365*24*time.Hour)
	if err != nil {
		return err
	}
	key, err := pki.NewKey()
	if err != nil {
		return err
	}
	srv, err := ca.IssueServer(key.Public(), cfg.Hosts, 2*365*24*time.Hour)
	if err != nil {
		return err
	}
	// The CA certificate goes last: its presence marks a finished init.
	for _, step := range []func() error{
		func() error { return pki.SaveKey(cfg.caKey(), ca.Key) },
		func() error { return pki.SaveKey(cfg.serverKey(), key) },
		func() error { return pki.SaveCert(cfg.serverCert(), srv) },
		func() error {
			st, err := store.OpenSQLite(cfg.dbPath())
			if err != nil {
				return err
			}
			defer st.Close()
			return st.Audit(context.Background(), "operator", "hub.init", pki.Fingerprint(ca.Cert), "hosts="+strings.Join(cfg.Hosts, ","))
		},
		func() error { return pki.SaveCert(cfg.caCert(), ca.Cert) },
	} {
		if err := step(); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	fmt.Fprintf(stdout, "hub initialised in %s\nCA fingerprint (SHA-256): %s\n", cfg.StateDir, pki.Fingerprint(ca.Cert))
	return nil
}
