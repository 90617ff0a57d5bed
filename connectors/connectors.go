// Package connectors defines the contract between the agent and the kinds
// of data it reads and writes (folders now; MySQL, Oracle and an embedded SQL
// kind later), and the registry through which each kind makes itself known.
//
// The agent owns durability: connectors never write the agent's state
// directly. A source describes the next batch and the state changes that
// sending it implies; the agent seals and spools the batch and commits those
// changes in one transaction, so the source's checkpoint never moves before
// the batch is durable. A sink applies a batch and stages its state changes;
// the agent commits them together with the applied sequence number.
package connectors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/mask"
	"github.com/qianzhi/qianzhi/pkg/throttle"
)

// Common holds the keys every resource and subscription entry has.
type Common struct {
	// ID names the resource across the whole exchange, e.g. "dept-a.reports".
	ID string `yaml:"id"`
	// Kind selects the connector, e.g. "file".
	Kind string `yaml:"kind"`
	// Catalog is a provider's catalog entry for the resource (数据资源目录);
	// the hub reviews it before other departments see it.
	Catalog *api.CatalogEntry `yaml:"catalog"`
	// Copy schedules full copies (批量复制) of a resource to each of its
	// consumers; resources only.
	Copy *CopySchedule `yaml:"copy"`
	// Limits bound how fast a resource's batches are extracted and
	// uploaded, and when its full copies may run; resources only.
	Limits *throttle.Limits `yaml:"limits"`
	// Calls are the named, parameterised queries that consumers with a
	// query or verify grant may call (查询引用, 比对验证); table kinds
	// only. Their declarations (without the SQL) join the catalog entry.
	Calls []CallDef `yaml:"calls"`
}

// CallDef is a declared call with the SQL that answers it. Query names
// each parameter as :name; the agent binds the checked values, so a value
// is never part of the SQL text.
type CallDef struct {
	api.CallDecl `yaml:",inline"`
	Query        string `yaml:"query"`
}

// Caller is a source that answers declared calls.
type Caller interface {
	// Call runs c's query with params bound (already checked against the
	// declaration) and returns at most max rows of c.Fields, in that
	// order, as canonical text (nil for NULL).
	Call(ctx context.Context, c *CallDef, params map[string]string, max int) ([][][]byte, error)
}

// CopySchedule repeats full copies: a copy to each consumer starts when the
// last one finished Every ago (or never ran), inside the limits' window.
type CopySchedule struct {
	Every time.Duration `yaml:"every"`
}

// State is a connector's key-value state for one grant, as of the last
// commit. Implementations are not safe for concurrent use.
type State interface {
	// Scope identifies whose state this is (one grant's, on one side); it
	// is stable across calls and restarts.
	Scope() string
	Get(key string) (val []byte, ok bool, err error)
	// Scan calls fn for every key with the prefix, in key order.
	Scan(prefix string, fn func(key string, val []byte) error) error
}

// Changes are state updates a connector stages; the agent applies them in
// order, atomically with the batch they belong to.
type Changes struct {
	ops []change
	// Mismatch, set by a sink applying a reconcile digest, lists the
	// buckets in which the consumer's rows differ from the provider's; the
	// agent reports them in the batch's signed receipt.
	Mismatch []int
	// MismatchFiles, set by a sink applying a folder's verify batch, lists
	// the files that differ, as receipt.Receipt.MismatchFiles.
	MismatchFiles []string
}

// KeyVerifyRequest, set in a grant's source state by qz-agent verify, asks
// the source for a batch that the consumer only compares with its copy.
const KeyVerifyRequest = "vf_req"

type change struct {
	key string
	val []byte // nil deletes
}

// Put stages a write.
func (c *Changes) Put(key string, val []byte) { c.ops = append(c.ops, change{key, val}) }

// Delete stages a removal.
func (c *Changes) Delete(key string) { c.ops = append(c.ops, change{key, nil}) }

// Len is the number of staged operations.
func (c *Changes) Len() int { return len(c.ops) }

// Each calls fn for every staged operation in order; val is nil for deletes.
func (c *Changes) Each(fn func(key string, val []byte) error) error {
	for _, op := range c.ops {
		if err := fn(op.key, op.val); err != nil {
			return err
		}
	}
	return nil
}

// Output collects one batch from a source: the file manifest (for file
// kinds) or the schema and row count (for tables), the uncompressed body, and the state changes that sending it
// implies. Limit is the body size the source should stay under; a single
// entry may exceed it only when it cannot be split.
type Output struct {
	// Project, set by the agent before Next, is what the grant lets
	// through; a source that cannot honour it returns an error.
	Project *Projection

	Kind    string
	Files   []batch.FileEntry
	Schema  *batch.Schema // for row batches
	Rows    int64         // rows in Body
	Body    []byte
	Limit   int64
	Changes Changes
}

// Empty reports whether the output carries nothing to send.
func (o *Output) Empty() bool {
	return len(o.Files) == 0 && o.Rows == 0 && len(o.Body) == 0 && (o.Schema == nil || o.Schema.Reconcile == nil)
}

// Projection is what a grant lets through: its fields (every field when
// empty), the masking rule of each masked field, and the grant's hashing
// secret. Ungranted fields must never reach the batch.
type Projection struct {
	Fields []string
	Masks  map[string]mask.Rule
	Secret []byte
}

// Mask returns the masking rule of a field, if any.
func (p *Projection) Mask(field string) (mask.Rule, bool) {
	if p == nil {
		return mask.Rule{}, false
	}
	r, ok := p.Masks[field]
	return r, ok
}

// Empty reports whether the projection lets everything through unmasked.
func (p *Projection) Empty() bool { return p == nil || len(p.Fields) == 0 && len(p.Masks) == 0 }

// ErrIdle is returned by Source.Next when there is nothing to send now.
var ErrIdle = errors.New("nothing to send")

// Source reads a provider's resource.
//
// The agent calls Next from one goroutine per resource, for each grant in
// turn, with that grant's state. Next either fills out (files, body and/or
// state changes) and returns nil, or returns ErrIdle. An output with state
// changes but nothing to send is committed without producing a batch.
// Changed may be called from any goroutine.
type Source interface {
	Next(ctx context.Context, st State, out *Output) error
	// Changed receives a value when the source may have new data; the agent
	// also retries on its own timer, so a missed signal only delays.
	Changed() <-chan struct{}
	Close() error
}

// Sink writes a consumer's copy of a resource.
//
// The agent calls Apply for one grant's batches in sequence order from one
// goroutine, after the batch's seal and digest were verified. Apply may be
// called again for a batch whose earlier Apply or commit was interrupted by a
// crash, so it must be idempotent. State changes staged in ch are committed by
// the agent together with the batch's sequence number.
type Sink interface {
	Apply(ctx context.Context, h *batch.Header, body io.Reader, st State, ch *Changes) error
	Close() error
}

// Copier is a source that can start a full copy (批量复制) of a grant over
// again: StartCopy stages, in ch, the state changes after which Next sends
// everything from the start, and returns an estimate of what that is.
// Copying reports whether the copy's extraction is still under way; the
// agent ends a copy when Copying turns false or Next is idle.
type Copier interface {
	StartCopy(ctx context.Context, st State, ch *Changes) (Size, error)
	Copying(st State) (bool, error)
}

// Size is how much a full copy moves: rows (tables) or files, and bytes
// (0 when unknown).
type Size struct {
	Rows  int64 `json:"rows,omitempty"`
	Files int64 `json:"files,omitempty"`
	Bytes int64 `json:"bytes,omitempty"`
}

// Skipper is a source that leaves some entries of its data out on purpose,
// such as a folder's symlinks, pipes and devices, which are never followed
// or sent. qz-agent status shows how many, so that an operator learns why a
// file does not arrive. Skipped returns the count as of the source's last
// look and a few of their names; it is safe for concurrent use.
type Skipper interface {
	Skipped() (n int, some []string)
}

// Destroyer is a sink that can destroy what it received under a grant, when
// the grant ends with the order to destroy (数据销毁). It returns what it
// destroyed, for the signed destruction receipt. It must be idempotent: a
// crash may make the agent call it again.
type Destroyer interface {
	Destroy(ctx context.Context, grant string, st State, ch *Changes) (what string, err error)
}

// SourceConfig is a kind's decoded resource entry.
type SourceConfig interface {
	Validate() error
	OpenSource(log *slog.Logger) (Source, error)
}

// SinkConfig is a kind's decoded subscription entry.
type SinkConfig interface {
	Validate() error
	OpenSink(log *slog.Logger) (Sink, error)
}

// Kind describes one connector kind. Either constructor may be nil when the
// kind is only a source or only a sink. Each returns a pointer to a fresh
// config with defaults filled, into which the agent decodes the entry.
type Kind struct {
	Name       string
	SourceConf func() SourceConfig
	SinkConf   func() SinkConfig
}

var (
	mu    sync.RWMutex
	kinds = map[string]Kind{}
)

// Register makes a kind available by name. It panics on an empty or
// duplicate name: both are programming errors found at start-up.
func Register(k Kind) {
	mu.Lock()
	defer mu.Unlock()
	if k.Name == "" {
		panic("connectors: Register with an empty kind name")
	}
	if _, dup := kinds[k.Name]; dup {
		panic("connectors: Register called twice for kind " + k.Name)
	}
	kinds[k.Name] = k
}

// Lookup returns a registered kind.
func Lookup(name string) (Kind, error) {
	mu.RLock()
	defer mu.RUnlock()
	k, ok := kinds[name]
	if !ok {
		return Kind{}, fmt.Errorf("unknown connector kind %q (known: %v)", name, namesLocked())
	}
	return k, nil
}

// Names lists the registered kinds.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	return namesLocked()
}

func namesLocked() []string {
	var out []string
	for n := range kinds {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
