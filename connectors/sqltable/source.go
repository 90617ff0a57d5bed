package sqltable

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/qianzhi/qianzhi/connectors"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/mask"
)

// Source state keys, per grant.
const (
	keyPhase   = KeyPhase
	keySnapKey = "snap_key" // JSON [][]byte (base64): the last key sent by the snapshot
	keySnapTok = "snap_tok" // the snapshot's resume token (Oracle SCN)
	keyIncFrom = "inc_from" // where incremental starts: the database time when the snapshot began, minus lag
	keyMark    = "mark"     // JSON mark: the last (watermark, key) sent incrementally
)

// KeyPhase is the state key holding a grant's phase: "snapshot",
// "incremental" or "done" (absent before the first batch).
const KeyPhase = "phase"

// Progress says where a grant's extraction stands, from its state: the
// phase, the watermark reached, and the step of a reconciliation ("" when
// none is under way).
func Progress(st connectors.State) (phase, position, reconcile string, err error) {
	ph, _, err := st.Get(keyPhase)
	if err != nil {
		return "", "", "", err
	}
	if raw, ok, err := st.Get(keyMark); err != nil {
		return "", "", "", err
	} else if ok {
		var m mark
		if json.Unmarshal(raw, &m) == nil {
			position = m.Value
		}
	}
	for _, k := range []struct{ key, what string }{
		{KeyReconcileDiff, "resending differing buckets"},
		{KeyReconcileWait, "waiting for the consumer's comparison"},
		{KeyReconcileRequest, "requested"},
	} {
		if _, ok, err := st.Get(k.key); err != nil {
			return "", "", "", err
		} else if ok {
			reconcile = k.what
			break
		}
	}
	return string(ph), position, reconcile, nil
}

// mark is an incremental checkpoint: rows after (Value, Key) come next; a
// nil Key means rows at Value itself have not been sent yet, and an empty
// Value with no Key means from the start (a numeric watermark of an empty
// table). Key values are bytes, kept exactly (base64 in JSON): binary keys
// are not text.
type mark struct {
	Value string   `json:"value"`
	Key   [][]byte `json:"key,omitempty"`
}

type source struct {
	cfg     *SourceConfig
	d       Dialect
	db      *sql.DB
	log     *slog.Logger
	changed chan struct{}
	stop    chan struct{}
	wg      sync.WaitGroup

	mu    sync.Mutex
	snaps map[string]*openSnap // open snapshots by grant scope

	calls    sync.Map  // *compiledCall by call query text
	callInit sync.Once // the pool grows for calls at the first one
}

// openSnap is a grant's snapshot and when it was last read.
type openSnap struct {
	Snapshot
	used time.Time
}

// snapshotIdle is how long a snapshot may go unread before it is closed,
// so that a revoked grant or a long-full spool does not hold a transaction
// open on the department's database (MySQL would keep old row versions
// for it). The next page then reads in a new snapshot, from the checkpoint.
const snapshotIdle = 10 * time.Minute

func openSource(cfg *SourceConfig, log *slog.Logger) (*source, error) {
	db, err := cfg.open(cfg.dialect)
	if err != nil {
		return nil, err
	}
	s := &source{cfg: cfg, d: cfg.dialect, db: db, log: log, changed: make(chan struct{}, 1), stop: make(chan struct{}), snaps: map[string]*openSnap{}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.schema(ctx, nil); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.checkWatermarkIndex(ctx); err != nil {
		db.Close()
		return nil, err
	}
	s.wg.Add(1)
	go s.tick()
	return s, nil
}

func (s *source) tick() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.closeIdle(time.Now().Add(-snapshotIdle))
			select {
			case s.changed <- struct{}{}:
			default:
			}
		}
	}
}

func (s *source) Changed() <-chan struct{} { return s.changed }

func (s *source) Close() error {
	close(s.stop)
	s.wg.Wait()
	s.mu.Lock()
	for k, sn := range s.snaps {
		sn.Close()
		delete(s.snaps, k)
	}
	s.mu.Unlock()
	return s.db.Close()
}

// shape is what one pass reads: the published schema plus the columns read
// only for bookkeeping.
type shape struct {
	schema *batch.Schema
	cols   []batch.Column // what is selected, as the table types it: schema columns, then extras
	masks  []*mask.Rule   // by schema column: the grant's masking rule, or nil
	secret []byte         // the grant's hashing secret
	key    []int          // indexes of the key columns in cols
	mark   int            // index of the watermark column in cols, or -1
	soft   int            // index of the soft-delete column in cols, or -1
	from   string         // table reference or (query) alias
}

// describe returns the table's (or query's) columns and keys as they are
// now. It asks the database on every pass, though that is a query per
// batch and per idle poll: a shape remembered for even a few seconds would
// let rows changed just after an ALTER travel without the new column, and
// the watermark would move past them.
func (s *source) describe(ctx context.Context) (*Table, error) {
	var t *Table
	c := s.cfg
	fail := func(format string, args ...any) error {
		return fmt.Errorf("resource %s: "+format, append([]any{c.ID}, args...)...)
	}
	if c.Query != "" {
		cols, nat, err := s.d.DescribeQuery(ctx, s.db, c.Query)
		if err != nil {
			return nil, fail("query: %v", err)
		}
		t = &Table{Name: "query", Columns: cols, Native: nat}
	} else {
		var err error
		t, err = s.d.Describe(ctx, s.db, c.Table)
		if errors.Is(err, ErrNoTable) {
			return nil, fail("table %s does not exist (check table: and the database named in the dsn)", c.Table)
		}
		if err != nil {
			return nil, fail("describe table %s: %v", c.Table, err)
		}
		t.Name = c.Table
	}
	return t, nil
}

// schema describes the table now and builds what is read from it. Every
// problem names the resource and what to change.
func (s *source) schema(ctx context.Context, proj *connectors.Projection) (*shape, error) {
	c := s.cfg
	fail := func(format string, args ...any) error {
		return fmt.Errorf("resource %s: "+format, append([]any{c.ID}, args...)...)
	}
	t, err := s.describe(ctx)
	if err != nil {
		return nil, err
	}
	all, native, key, unique, name := t.Columns, t.Native, t.Key, t.Unique, t.Name
	byName := map[string]batch.Column{}
	var names []string
	for _, col := range all {
		byName[col.Name] = col
		names = append(names, col.Name)
	}
	for _, col := range all {
		if strings.ContainsAny(col.Name, ".`\"\x00") && (len(c.Columns) == 0 || slices.Contains(c.Columns, col.Name)) {
			return nil, fail("column %q has a character (. ` \" or NUL) that cannot travel in a column name: leave it out with columns: [...]", col.Name)
		}
		if col.Type == "" && (len(c.Columns) == 0 || slices.Contains(c.Columns, col.Name)) {
			return nil, fail("column %s has type %s, which cannot travel yet: leave it out with columns: [...]", col.Name, native[col.Name])
		}
	}
	if len(c.Key) > 0 {
		if c.Query == "" && !slices.ContainsFunc(unique, func(u []string) bool { return sameSet(u, c.Key) }) {
			return nil, fail("key %v is neither the primary key nor a unique index of %s: rows could collide; add a unique index or name one", c.Key, name)
		}
		key = c.Key
	}
	if len(key) == 0 {
		return nil, fail("table %s has no primary key: add one, or name unique columns with key: [...]", name)
	}
	for _, k := range key {
		if col, ok := byName[k]; ok && col.Nullable && c.Query == "" {
			return nil, fail("key column %s allows NULL, and rows with a NULL key cannot be told apart: make it NOT NULL, or name other columns with key: [...]", k)
		}
	}
	pick := c.Columns
	if len(pick) == 0 {
		for _, col := range all {
			pick = append(pick, col.Name)
		}
	}
	for _, n := range pick {
		if _, ok := byName[n]; !ok {
			return nil, fail("column %s is not in %s (it has: %s)", n, name, strings.Join(names, ", "))
		}
	}
	for _, k := range key {
		if !slices.Contains(pick, k) {
			return nil, fail("key column %s must be among columns", k)
		}
	}
	if !proj.Empty() {
		// Only what the grant names leaves, and the key, which the
		// consumer needs to apply rows at all.
		var granted []string
		for _, n := range pick {
			if len(proj.Fields) == 0 || slices.Contains(proj.Fields, n) || slices.Contains(key, n) {
				granted = append(granted, n)
			}
		}
		for _, f := range proj.Fields {
			if !slices.Contains(pick, f) {
				return nil, fail("the grant names field %s, which this resource does not publish (it publishes: %s)", f, strings.Join(pick, ", "))
			}
		}
		pick = granted
	}
	sh := &shape{mark: -1, soft: -1}
	sch := &batch.Schema{Table: name, Key: key}
	hashKey, _ := mask.Parse(mask.Hash)
	for _, n := range pick {
		col := byName[n]
		var rule *mask.Rule
		r, ok := proj.Mask(n)
		if !ok && proj != nil && len(proj.Fields) > 0 && !slices.Contains(proj.Fields, n) {
			// A key column the grant does not name still has to travel,
			// or rows could not be told apart: it travels hashed.
			r, ok = hashKey, true
		}
		if ok {
			if slices.Contains(key, n) && !r.Deterministic() {
				return nil, fail("the grant masks key column %s with %s, which would make distinct rows collide: only hash keeps keys apart", n, r)
			}
			rule, col = &r, r.Column(col)
		}
		sch.Columns = append(sch.Columns, col)
		sh.masks = append(sh.masks, rule)
		sh.cols = append(sh.cols, byName[n])
	}
	if proj != nil {
		sh.secret = proj.Secret
	}
	sch.Fingerprint = batch.SchemaFingerprint(sch.Columns, sch.Key)
	sh.schema = sch
	extra := func(n, what string) (int, error) {
		if i := slices.IndexFunc(sh.cols, func(x batch.Column) bool { return x.Name == n }); i >= 0 {
			return i, nil
		}
		col, ok := byName[n]
		if !ok {
			return -1, fail("%s column %s is not in %s (it has: %s)", what, n, name, strings.Join(names, ", "))
		}
		sh.cols = append(sh.cols, col)
		return len(sh.cols) - 1, nil
	}
	if c.Strategy == StrategyIncremental {
		if sh.mark, err = extra(c.Watermark, "watermark"); err != nil {
			return nil, err
		}
		switch sh.cols[sh.mark].Type {
		case batch.TypeInt, batch.TypeDecimal, batch.TypeDate, batch.TypeDatetime, batch.TypeTimestamp:
		default:
			return nil, fail("watermark column %s has type %s: use a date/time or number column that grows with every change", c.Watermark, native[c.Watermark])
		}
	}
	if c.SoftDelete != nil {
		if sh.soft, err = extra(c.SoftDelete.Column, "soft_delete"); err != nil {
			return nil, err
		}
	}
	for _, k := range key {
		sh.key = append(sh.key, slices.IndexFunc(sh.cols, func(x batch.Column) bool { return x.Name == k }))
	}
	sh.from = s.d.Quote(c.Table)
	if c.Query != "" {
		sh.from = "(" + c.Query + ") qz_q"
	}
	return sh, nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// checkWatermarkIndex warns, with the engine's plan, when no index leads
// with the watermark column: every incremental read would scan the table.
func (s *source) checkWatermarkIndex(ctx context.Context) error {
	c := s.cfg
	if c.Strategy != StrategyIncremental || c.Query != "" {
		return nil
	}
	t, err := s.d.Describe(ctx, s.db, c.Table)
	if err != nil {
		return err
	}
	if t.Leading[c.Watermark] {
		return nil
	}
	sh, err := s.schema(ctx, nil)
	if err != nil {
		return err
	}
	q, args := s.incrementalQuery(sh, mark{Value: "1970-01-01 00:00:00"}, "")
	if sh.cols[sh.mark].Type == batch.TypeInt || sh.cols[sh.mark].Type == batch.TypeDecimal {
		q, args = s.incrementalQuery(sh, mark{Value: "0"}, "")
	}
	plan, perr := s.d.Explain(ctx, s.db, q, args)
	if perr != nil {
		plan = "(plan unavailable: " + perr.Error() + ")"
	}
	s.log.Warn(fmt.Sprintf("resource %s: no index starts with watermark column %s, so every incremental read scans the whole table; add one: CREATE INDEX %s_%s ON %s (%s, %s)",
		c.ID, c.Watermark, strings.ReplaceAll(c.Table, ".", "_"), c.Watermark, c.Table, c.Watermark, strings.Join(t.Key, ", ")), "plan", plan)
	return nil
}

// Next reads the next batch of one grant: snapshot pages first, then
// incremental changes.
func (s *source) Next(ctx context.Context, st connectors.State, out *connectors.Output) error {
	phase, _, err := st.Get(keyPhase)
	if err != nil {
		return err
	}
	sh, err := s.schema(ctx, out.Project)
	if err != nil {
		return err
	}
	if string(phase) == "incremental" || string(phase) == "done" {
		if ok, err := s.reconcileStep(ctx, st, sh, out); ok || err != nil {
			return err
		}
		if string(phase) == "done" {
			return connectors.ErrIdle
		}
	}
	switch string(phase) {
	case "":
		return s.begin(ctx, st, sh, out)
	case "snapshot":
		return s.snapshot(ctx, st, sh, out, nil)
	case "incremental":
		return s.incremental(ctx, st, sh, out)
	}
	return fmt.Errorf("resource %s: unknown phase %q in state", s.cfg.ID, phase)
}

// begin starts a grant's snapshot, noting where incremental reads will
// start so that the hand-over leaves no gap: every change committed after
// this moment (less the lag) is read again incrementally.
func (s *source) begin(ctx context.Context, st connectors.State, sh *shape, out *connectors.Output) error {
	if s.cfg.Strategy == StrategyIncremental {
		from, err := s.incrementalStart(ctx, sh)
		if err != nil {
			return err
		}
		out.Changes.Put(keyIncFrom, []byte(from))
	}
	sn, err := s.d.Snapshot(ctx, s.db, "")
	if err != nil {
		return fmt.Errorf("resource %s: begin snapshot: %w", s.cfg.ID, err)
	}
	s.keep(st.Scope(), sn)
	out.Changes.Put(keyPhase, []byte("snapshot"))
	out.Changes.Put(keySnapTok, []byte(sn.Token()))
	s.log.Info("snapshot started", "grant", st.Scope())
	return s.snapshot(ctx, st, sh, out, sn)
}

func (s *source) keep(scope string, sn Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.snaps[scope]; old != nil && old.Snapshot != sn {
		old.Close()
	}
	s.snaps[scope] = &openSnap{Snapshot: sn, used: time.Now()}
}

// open returns a grant's open snapshot, or nil, and marks it used.
func (s *source) open(scope string) Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	o := s.snaps[scope]
	if o == nil {
		return nil
	}
	o.used = time.Now()
	return o.Snapshot
}

// closeIdle closes the snapshots last read before t.
func (s *source) closeIdle(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for scope, o := range s.snaps {
		if o.used.Before(t) {
			o.Close()
			delete(s.snaps, scope)
			s.log.Info("closed an idle snapshot; the next page reads in a new one", "grant", scope)
		}
	}
}

func (s *source) drop(scope string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sn := s.snaps[scope]; sn != nil {
		sn.Close()
		delete(s.snaps, scope)
	}
}

// incrementalStart is where incremental reads begin once the snapshot is
// done: the database time minus lag, or for a numeric watermark the
// largest value now ("" for an empty table: from the start). It warns when
// the table holds watermarks far ahead of the database clock, the sign of
// a time_zone that does not match the writers'.
func (s *source) incrementalStart(ctx context.Context, sh *shape) (string, error) {
	mc := sh.cols[sh.mark]
	var top any
	if err := s.db.QueryRowContext(ctx, "SELECT MAX("+s.d.Select(mc, s.d.Quote(mc.Name))+") FROM "+sh.from).Scan(&top); err != nil {
		return "", fmt.Errorf("resource %s: read the largest watermark: %w", s.cfg.ID, err)
	}
	maxText, err := ToText(&mc, top)
	if err != nil {
		return "", err
	}
	from, err := s.now(ctx, s.db, sh)
	if err != nil || from == "" {
		return string(maxText), err
	}
	if ahead := timeAhead(string(maxText), from); ahead > time.Hour {
		s.log.Warn(fmt.Sprintf("resource %s: watermark %s holds values %s ahead of the database clock: changes stamped in the future are read only once the clock reaches them; if the writers use another time zone, set time_zone", s.cfg.ID, mc.Name, ahead.Round(time.Minute)), "largest", string(maxText), "database_time", from)
	}
	return from, nil
}

// timeAhead is how far canonical date-time a lies after b (0 if not, or if
// either does not parse).
func timeAhead(a, b string) time.Duration {
	parse := func(v string) (time.Time, bool) {
		for _, layout := range []string{"2006-01-02 15:04:05.999999999", "2006-01-02"} {
			if t, err := time.Parse(layout, v); err == nil {
				return t, true
			}
		}
		return time.Time{}, false
	}
	ta, okA := parse(a)
	tb, okB := parse(b)
	if !okA || !okB || !ta.After(tb) {
		return 0
	}
	return ta.Sub(tb)
}

// now is the database's time minus lag in the watermark's form; for a
// numeric watermark there is no bound ("").
func (s *source) now(ctx context.Context, q Querier, sh *shape) (string, error) {
	c := sh.cols[sh.mark]
	if c.Type == batch.TypeInt || c.Type == batch.TypeDecimal {
		return "", nil
	}
	v, err := s.d.Now(ctx, q, c, s.cfg.Lag, s.cfg.TimeZone)
	if err != nil {
		return "", fmt.Errorf("resource %s: read the database time: %w", s.cfg.ID, err)
	}
	return v, nil
}

// snapshot reads the next pages in key order inside the grant's snapshot.
func (s *source) snapshot(ctx context.Context, st connectors.State, sh *shape, out *connectors.Output, sn Snapshot) error {
	scope := st.Scope()
	if sn == nil {
		sn = s.open(scope)
	}
	if sn == nil {
		tok, _, err := st.Get(keySnapTok)
		if err != nil {
			return err
		}
		if sn, err = s.d.Snapshot(ctx, s.db, string(tok)); err != nil {
			return fmt.Errorf("resource %s: resume snapshot: %w", s.cfg.ID, err)
		}
		s.keep(scope, sn)
	}
	var last [][]byte
	if raw, ok, err := st.Get(keySnapKey); err != nil {
		return err
	} else if ok {
		if err := json.Unmarshal(raw, &last); err != nil {
			return fmt.Errorf("resource %s: snapshot checkpoint: %w", s.cfg.ID, err)
		}
	}
	sh.schema.Phase = "snapshot"
	var w batch.RowWriter
	renewed, finished := false, false
	for {
		p := params{d: s.d}
		where := ""
		var args []any
		if last != nil {
			where, args = keyAfter(s.d, s.keyCols(sh), last, p.next)
			where = " WHERE " + where
		}
		q := s.d.Limit("SELECT "+s.selectList(sh)+" FROM "+sn.From(sh.from)+where+" ORDER BY "+s.keyList(sh), s.cfg.PageRows)
		n, lastKey, _, err := s.read(ctx, sn.Q(), q, args, sh, &w, out.Limit, false)
		if errors.Is(err, ErrSnapshotTooOld) && !renewed {
			// Go on from the checkpoint in a new view. Rows already sent
			// stay as they were read; changes since the old view are read
			// again incrementally (inc_from lies before both views).
			s.log.Warn("snapshot too old; going on from the checkpoint in a new snapshot", "grant", scope, "err", err)
			s.drop(scope)
			if sn, err = s.d.Snapshot(ctx, s.db, ""); err != nil {
				return fmt.Errorf("resource %s: begin snapshot: %w", s.cfg.ID, err)
			}
			s.keep(scope, sn)
			out.Changes.Put(keySnapTok, []byte(sn.Token()))
			renewed = true
			continue // from last: rows of the failed page read again are upserted twice, harmlessly
		}
		if err != nil {
			s.drop(scope)
			return fmt.Errorf("resource %s: snapshot read: %w", s.cfg.ID, err)
		}
		if lastKey != nil {
			last = lastKey
		}
		if n < s.cfg.PageRows || int64(w.Len()) >= out.Limit {
			if n < s.cfg.PageRows && int64(w.Len()) < out.Limit {
				// The end of the table: hand over to incremental.
				finished = true
				s.drop(scope)
				s.finishSnapshot(st, out)
				s.log.Info("snapshot finished", "grant", scope)
			}
			break
		}
	}
	if last != nil && !finished {
		raw, _ := json.Marshal(last)
		out.Changes.Put(keySnapKey, raw)
	}
	s.fill(out, sh, &w)
	return nil
}

func (s *source) finishSnapshot(st connectors.State, out *connectors.Output) {
	out.Changes.Delete(keySnapKey)
	out.Changes.Delete(keySnapTok)
	if s.cfg.Strategy != StrategyIncremental {
		out.Changes.Put(keyPhase, []byte("done"))
		return
	}
	from, ok := pending(&out.Changes, keyIncFrom)
	if !ok {
		v, _, _ := st.Get(keyIncFrom)
		from = v
	}
	raw, _ := json.Marshal(mark{Value: string(from)})
	out.Changes.Put(keyMark, raw)
	out.Changes.Put(keyPhase, []byte("incremental"))
}

// pending finds a value staged earlier in the same output.
func pending(ch *connectors.Changes, key string) ([]byte, bool) {
	var v []byte
	var ok bool
	ch.Each(func(k string, val []byte) error {
		if k == key {
			v, ok = val, val != nil
		}
		return nil
	})
	return v, ok
}

// incremental reads rows whose watermark is past the mark and before the
// database's time minus lag, in (watermark, key) order.
func (s *source) incremental(ctx context.Context, st connectors.State, sh *shape, out *connectors.Output) error {
	raw, _, err := st.Get(keyMark)
	if err != nil {
		return err
	}
	var m mark
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("resource %s: incremental checkpoint: %w", s.cfg.ID, err)
	}
	upper, err := s.now(ctx, s.db, sh)
	if err != nil {
		return err
	}
	sh.schema.Phase = "incremental"
	if sh.mark < len(sh.masks) && sh.masks[sh.mark] == nil {
		// The range says what was read; only where the column itself
		// travels in clear.
		sh.schema.From, sh.schema.To = m.Value, upper
	}
	var w batch.RowWriter
	for {
		q, args := s.incrementalQuery(sh, m, upper)
		n, lastKey, lastMark, err := s.read(ctx, s.db, q, args, sh, &w, out.Limit, true)
		if err != nil {
			return fmt.Errorf("resource %s: incremental read: %w", s.cfg.ID, err)
		}
		if lastKey != nil {
			m = mark{Value: lastMark, Key: lastKey}
		}
		if n < s.cfg.PageRows || int64(w.Len()) >= out.Limit {
			break
		}
	}
	if w.Rows() == 0 {
		return connectors.ErrIdle
	}
	raw, _ = json.Marshal(m)
	out.Changes.Put(keyMark, raw)
	s.fill(out, sh, &w)
	return nil
}

func (s *source) incrementalQuery(sh *shape, m mark, upper string) (string, []any) {
	p := params{d: s.d}
	mc := sh.cols[sh.mark]
	wq := s.d.Quote(mc.Name)
	var cond string
	var args []any
	switch {
	case m.Value == "" && m.Key == nil:
		cond = wq + " IS NOT NULL"
	case m.Key == nil:
		cond = wq + " >= " + s.d.Bind(mc, p.next())
		args = append(args, m.Value)
	default:
		// (w, key) > (mark, last key), spelled so that it plans as a
		// range on w: w >= m AND (w > m OR key > last).
		cond = wq + " >= " + s.d.Bind(mc, p.next()) + " AND (" + wq + " > " + s.d.Bind(mc, p.next()) + " OR "
		args = append(args, m.Value, m.Value)
		k, kargs := keyAfter(s.d, s.keyCols(sh), m.Key, p.next)
		cond += "(" + k + "))"
		args = append(args, kargs...)
	}
	if upper != "" {
		cond += " AND " + wq + " < " + s.d.Bind(mc, p.next())
		args = append(args, upper)
	}
	return s.d.Limit("SELECT "+s.selectList(sh)+" FROM "+sh.from+" WHERE "+cond+" ORDER BY "+wq+", "+s.keyList(sh), s.cfg.PageRows), args
}

// publish turns a row as read (canonical text of sh.cols) into the values
// the batch carries: the schema's columns, masked as the grant says. The
// slice is reused.
func (sh *shape) publish(text [][]byte, out [][]byte) [][]byte {
	out = out[:0]
	for i, r := range sh.masks {
		v := text[i]
		if r != nil {
			v = r.Apply(v, sh.secret)
		}
		out = append(out, v)
	}
	return out
}

// publishedKey is a row's key as the batch carries it.
func (sh *shape) publishedKey(text [][]byte) [][]byte {
	keys := make([][]byte, len(sh.key))
	for j, i := range sh.key {
		keys[j] = text[i]
		if r := sh.masks[i]; r != nil {
			keys[j] = r.Apply(text[i], sh.secret)
		}
	}
	return keys
}

func (s *source) keyCols(sh *shape) []batch.Column {
	var cs []batch.Column
	for _, i := range sh.key {
		cs = append(cs, sh.cols[i])
	}
	return cs
}

func (s *source) keyList(sh *shape) string {
	var q []string
	for _, i := range sh.key {
		q = append(q, s.d.Quote(sh.cols[i].Name))
	}
	return strings.Join(q, ", ")
}

func (s *source) selectList(sh *shape) string {
	var q []string
	for _, c := range sh.cols {
		q = append(q, s.d.Select(c, s.d.Quote(c.Name)))
	}
	return strings.Join(q, ", ")
}

// read runs one page query and appends its rows to w, stopping early once
// w reaches limit. It returns the rows read and the key (and watermark) of
// the last row appended.
func (s *source) read(ctx context.Context, q Querier, query string, args []any, sh *shape, w *batch.RowWriter, limit int64, withMark bool) (int, [][]byte, string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return 0, nil, "", fmt.Errorf("%w [%s]", s.classify(err), query)
	}
	defer rows.Close()
	var pub [][]byte
	var n int
	var lastKey [][]byte
	var lastMark string
	err = scanRows(rows, sh.cols, func(text [][]byte) error {
		n++
		lastKey = lastKey[:0:0]
		for _, i := range sh.key {
			lastKey = append(lastKey, slices.Clone(text[i]))
		}
		if withMark {
			lastMark = string(text[sh.mark])
		}
		if s.deleted(sh, text) {
			w.Delete(sh.publishedKey(text))
		} else {
			pub = sh.publish(text, pub)
			w.Upsert(pub)
		}
		if int64(w.Len()) >= limit {
			return errBatchFull
		}
		return nil
	})
	if errors.Is(err, errBatchFull) {
		err = nil
	}
	return n, lastKey, lastMark, s.classify(err)
}

// errBatchFull stops a page read once the batch is full.
var errBatchFull = errors.New("batch full")

// deleted reports whether a row is marked deleted (soft_delete).
func (s *source) deleted(sh *shape, text [][]byte) bool {
	return sh.soft >= 0 && text[sh.soft] != nil && string(text[sh.soft]) == s.cfg.SoftDelete.Value
}

func (s *source) classify(err error) error {
	if c, ok := s.d.(Classifier); ok && err != nil {
		return c.Classify(err)
	}
	return err
}

func (s *source) fill(out *connectors.Output, sh *shape, w *batch.RowWriter) {
	out.Kind = batch.KindRows
	out.Body = w.Bytes()
	out.Rows = w.Rows()
	out.Schema = sh.schema
}
