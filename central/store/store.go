// Package store is the hub's durable record: nodes, enrolment tokens,
// resources, grants, batches and receipts, and the hash-chained audit log.
//
// Store is the interface the hub codes against. The embedded SQLite
// implementation is the default, so qz-central runs with no other server; the
// SQL is kept to what PostgreSQL also accepts so that several hub replicas can
// later share one database through a second implementation.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/qianzhi/qianzhi/pkg/anchor"
	"github.com/qianzhi/qianzhi/pkg/api"
)

// Sentinel errors; callers tell cases apart with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrTokenInvalid covers unknown, used and expired tokens alike, so a
	// caller cannot probe which tokens exist.
	ErrTokenInvalid = errors.New("enrolment token is unknown, already used or expired")
	ErrConflict     = errors.New("conflicts with the current state")
	// ErrInvalid is a request missing what the rules require (a reason for
	// a rejection, a field the catalog lists).
	ErrInvalid = errors.New("invalid request")
	// ErrGrantEnded is a batch refused because its grant was revoked or
	// expired before the batch could be stored.
	ErrGrantEnded = errors.New("grant is no longer active")
)

type actorKey struct{}

// WithActor names who acts in the audit records of the store calls made
// with ctx: "local:USER" for a command on the hub host, "operator:NAME" for
// a remote operator.
func WithActor(ctx context.Context, who string) context.Context {
	return context.WithValue(ctx, actorKey{}, who)
}

// Actor is the actor WithActor put in ctx, or "operator".
func Actor(ctx context.Context) string {
	if who, ok := ctx.Value(actorKey{}).(string); ok && who != "" {
		return who
	}
	return "operator"
}

// Node statuses.
const (
	NodePending = "pending" // added, not yet enrolled
	NodeActive  = "active"
	NodeRevoked = "revoked"
)

// Node is one department's agent.
type Node struct {
	ID         string
	Name       string
	Status     string
	CertSerial string    // hex serial of the current certificate
	PrevSerial string    // the certificate it renewed, accepted until the node reconnects
	LastSeen   time.Time // its last request, to the minute
	CertExpiry time.Time
	SealPub    string // seal public key text, "ed25519:…"
	Created    time.Time
	Enrolled   time.Time
}

// Summary is what the hub holds: batches not purged, how many of them
// await delivery and receipt, and the active grants.
type Summary struct {
	Batches          int   `json:"batches"`
	Bytes            int64 `json:"bytes"`
	AwaitingDelivery int   `json:"awaiting_delivery"`
	AwaitingReceipt  int   `json:"awaiting_receipt"`
	ActiveGrants     int   `json:"active_grants"`
}

// Accepts reports whether a certificate serial is the node's current one
// or the one it renewed.
func (n Node) Accepts(serial string) bool {
	return serial == n.CertSerial || n.PrevSerial != "" && serial == n.PrevSerial
}

// Resource is what a provider publishes. The catalog issue adds the
// catalog fields; the identity and owner are fixed here.
type Resource struct {
	ID       string
	Provider string
	Kind     string
	Updated  time.Time
}

// Grant statuses.
const (
	GrantActive  = "active"
	GrantRevoked = "revoked"
	GrantExpired = "expired"
)

// Grant lets one consumer receive one resource in one mode.
type Grant struct {
	ID          string
	Resource    string
	Provider    string
	Consumer    string
	Mode        string
	Fields      []string          // empty: every field
	Masks       map[string]string // masking rule by field (pkg/mask)
	Destroy     bool              // when it ends, the consumer destroys what it received
	Status      string
	Created     time.Time
	Expires     time.Time // zero: no end
	Application string    // the application it came from, when the workflow made it
	// Rate and Quota bound a query or verify grant's calls a second and
	// a CST day; 0 means the hub's defaults (call_rate, call_quota).
	Rate  float64
	Quota int
}

// Active reports whether the grant allows delivery at t.
func (g Grant) Active(t time.Time) bool {
	return g.Status == GrantActive && (g.Expires.IsZero() || t.Before(g.Expires))
}

// Batch is a stored batch's record; its bytes live in the payload folder.
type Batch struct {
	Grant     string
	Sequence  uint64
	Resource  string
	Provider  string
	Consumer  string
	Size      int64
	Rows      int64 // rows carried, for a table's batch
	Digest    string
	Stored    time.Time
	Receipted time.Time // zero until the consumer's receipt is in
	Receipt   []byte
	Purged    time.Time
}

// AuditRecord is one entry of the hash-chained audit log.
type AuditRecord struct {
	Seq     int64
	At      time.Time
	Actor   string // node ID, "local:USER" or "operator:NAME" (see WithActor), or "hub"
	Action  string
	Subject string
	Detail  string
	Prev    string
	Hash    string
}

// Store is the hub's persistence. Every method that changes state also
// appends its audit record in the same transaction.
type Store interface {
	AddNode(ctx context.Context, id, name, tokenHash string, tokenExpiry time.Time) error
	NewToken(ctx context.Context, nodeID, tokenHash string, expiry time.Time) error
	// Enroll consumes a token and activates its node with the certificate
	// and seal key, atomically. It returns the node ID the token was for.
	Enroll(ctx context.Context, tokenHash string, certSerial string, certExpiry time.Time, sealPub string) (string, error)
	// Renew replaces an active node's certificate; see SQLite.Renew.
	Renew(ctx context.Context, node, presentedSerial, certSerial string, certExpiry time.Time) error
	// TokenNode returns the node a valid token is for, without consuming it.
	TokenNode(ctx context.Context, tokenHash string) (string, error)
	// SealKey returns a node's seal key by key ID, including keys from
	// before a re-enrolment.
	SealKey(ctx context.Context, node, keyID string) (string, error)
	// SealKeyEnrolment returns the audit record (sequence, hash) of the
	// enrolment that registered a seal key; ErrNotFound if none did.
	SealKeyEnrolment(ctx context.Context, node, keyID string) (int64, string, error)
	// RevokeNode revokes a node and, in the same transaction, ends every
	// active grant it takes part in (as provider or consumer); with
	// destroy, the consumers of those grants must destroy what they
	// received, as RevokeGrant's destroy orders. It returns the grants
	// it ended.
	RevokeNode(ctx context.Context, id string, destroy bool) ([]string, error)
	Node(ctx context.Context, id string) (Node, error)
	Nodes(ctx context.Context) ([]Node, error)
	// RestoredFrom is when the backup this hub was restored from was
	// taken (zero if none); SetRestoredFrom records it at a restore.
	RestoredFrom(ctx context.Context) (time.Time, error)
	SetRestoredFrom(ctx context.Context, taken time.Time) error
	// Adopt makes a certificate issued after that backup a node's current one.
	Adopt(ctx context.Context, node, serial string, expiry time.Time, detail string) error
	// TouchNode records when a node was last heard from.
	TouchNode(ctx context.Context, id string, at time.Time) error
	// Summary counts what the hub holds.
	Summary(ctx context.Context) (Summary, error)
	// StoredBytes is the size of the batch payloads not yet purged.
	StoredBytes(ctx context.Context) (int64, error)

	RegisterResource(ctx context.Context, r Resource) error
	Resource(ctx context.Context, id string) (Resource, error)

	AddGrant(ctx context.Context, g Grant) error
	// RevokeGrant ends a grant; with destroy, its consumer must destroy
	// what it received under it and send a signed destruction receipt.
	RevokeGrant(ctx context.Context, id string, destroy bool) error
	// Resources lists every registered resource.
	Resources(ctx context.Context) ([]Resource, error)
	// GrantsExpiring counts the active grants whose term ends in (after, upTo].
	GrantsExpiring(ctx context.Context, after, upTo time.Time) (int, error)
	// PutDestruction records a consumer's signed destruction receipt.
	PutDestruction(ctx context.Context, grant, consumer string, receipt []byte) error
	// Destruction returns a grant's destruction receipt, if any.
	Destruction(ctx context.Context, grant string) ([]byte, time.Time, error)
	Grant(ctx context.Context, id string) (Grant, error)
	// GrantsFor lists grants where the node is provider or consumer.
	GrantsFor(ctx context.Context, node string) ([]Grant, error)
	Grants(ctx context.Context) ([]Grant, error)
	// GrantsVersion changes whenever a grant or a node's status changes,
	// whoever made the change (the hub or the admin CLI beside it).
	GrantsVersion(ctx context.Context) (int64, error)

	// PutBatch records a stored batch; a second call for the same
	// (grant, sequence) with the same digest is a no-op, with another
	// digest ErrConflict. It checks, in the same transaction, that the
	// grant is still active (ErrGrantEnded otherwise), so no batch is
	// stored after a revocation however the two race.
	PutBatch(ctx context.Context, b Batch) error
	// HighestSequence is the highest sequence number stored for a grant
	// (0 when none), purged batches included.
	HighestSequence(ctx context.Context, grant string) (uint64, error)
	// HeldBytes is, by provider, the bytes of batches stored and not yet
	// receipted under active grants; provider "" for every provider.
	HeldBytes(ctx context.Context, provider string) (map[string]int64, error)
	Batch(ctx context.Context, grant string, seq uint64) (Batch, error)
	// Pending lists stored, unreceipted batches for a consumer's active
	// grants in (grant, sequence) order.
	Pending(ctx context.Context, consumer string, limit int) ([]Batch, error)
	// Batches lists a grant's batch records in sequence order ("" for all).
	Batches(ctx context.Context, grant string) ([]Batch, error)
	PutReceipt(ctx context.Context, grant string, seq uint64, receipt []byte, at time.Time) error
	// MarkDelivered records a batch's first complete delivery (audited).
	MarkDelivered(ctx context.Context, grant string, seq uint64) error
	// Purgeable lists batches whose payload may go: receipted before the
	// cutoff, or stored before it under a grant that ended.
	Purgeable(ctx context.Context, cutoff time.Time) ([]Batch, error)
	MarkPurged(ctx context.Context, grant string, seq uint64) error
	// NoteRejection counts a consumer's rejection of a stored batch copy
	// (audited at counts 1, 2, 4, 8 …) and returns the count.
	NoteRejection(ctx context.Context, consumer string, b Batch, reason string) (int, error)
	// DropDamaged forgets a stored batch that failed the hub's own check
	// and asks its provider to send it again (audited: batch.damage).
	DropDamaged(ctx context.Context, b Batch, reason string) error
	// Resends lists the batches of a grant its provider is asked to send
	// again and that are not stored yet.
	Resends(ctx context.Context, grant string) ([]uint64, error)
	// LastReceipt returns a grant's receipted batch with the highest
	// sequence number.
	LastReceipt(ctx context.Context, grant string) (Batch, error)

	// SubmitCatalog records a new version of a provider's catalog entry
	// for review (unless unchanged); it returns the version and whether it
	// changed anything.
	SubmitCatalog(ctx context.Context, provider string, e api.CatalogEntry, deadline time.Time) (int, bool, error)
	// ReviewCatalog decides the pending version; a rejection needs a reason.
	ReviewCatalog(ctx context.Context, resource string, version int, approve bool, reason, actor string) (api.CatalogVersion, error)
	CatalogLatest(ctx context.Context) ([]api.CatalogVersion, error)
	CatalogApproved(ctx context.Context) ([]api.CatalogVersion, error)
	CatalogVersions(ctx context.Context, resource string) ([]api.CatalogVersion, error)

	// SubmitApplication checks a request against the approved catalog and
	// records it (approved at once for a dedicated consumer).
	SubmitApplication(ctx context.Context, consumer string, req api.ApplicationRequest, hubDeadline time.Time) (api.Application, error)
	// DecideApplication records the hub's or the provider's review.
	DecideApplication(ctx context.Context, id, actor string, hub bool, d api.Decision, providerDeadline time.Time, late int) (api.Application, error)
	Application(ctx context.Context, id string) (api.Application, error)
	Applications(ctx context.Context, node string, states ...string) ([]api.Application, error)

	// SubmitFeedback records a consumer's report of an error in a record.
	SubmitFeedback(ctx context.Context, consumer string, req api.FeedbackRequest, deadline time.Time) (api.Feedback, error)
	// AnswerFeedback records the provider's answer.
	AnswerFeedback(ctx context.Context, id, provider, answer string, late int) (api.Feedback, error)
	Feedback(ctx context.Context, node string, open bool) ([]api.Feedback, error)
	// PutCopy records a copy's progress report and returns its previous
	// state ("" when new); a report naming another grant than the copy's
	// record is ErrConflict. Copies lists them, newest first.
	PutCopy(ctx context.Context, c api.Copy) (string, error)
	Copies(ctx context.Context) ([]api.Copy, error)

	// RecordCalls writes query and verify call records, each with its
	// audit record (the consumer as actor), in one transaction.
	RecordCalls(ctx context.Context, recs []api.CallRecord) error
	// Calls lists call records a node made or answered (node "" for all),
	// of one grant if grant is not "", newest first.
	Calls(ctx context.Context, node, grant string, limit int) ([]api.CallRecord, error)
	// CallCount counts a grant's calls since a time that count against
	// its quota: all but those the hub refused.
	CallCount(ctx context.Context, grant string, since time.Time) (int, error)

	AddOperator(ctx context.Context, name, role, serial string) error
	RevokeOperator(ctx context.Context, name string) error
	Operators(ctx context.Context) ([]Operator, error)
	OperatorFor(ctx context.Context, name, serial string) (Operator, error)

	Audit(ctx context.Context, actor, action, subject, detail string) error
	AuditLog(ctx context.Context) ([]AuditRecord, error)
	// AuditHead is the last audit record's number and hash (0, "" if none);
	// AuditRecordHash the hash of one record.
	AuditHead(ctx context.Context) (int64, string, error)
	AuditRecordHash(ctx context.Context, seq int64) (string, error)
	// PutCheckpoint keeps a signed checkpoint of the audit log; Checkpoints
	// lists the newest limit kept after record seq, oldest first.
	PutCheckpoint(ctx context.Context, c anchor.Checkpoint) error
	Checkpoints(ctx context.Context, after int64, limit int) ([]anchor.Checkpoint, error)
	// DropCheckpoints deletes the hub's checkpoints of records seqs and
	// appends an audit.cut record, in one transaction.
	DropCheckpoints(ctx context.Context, seqs []int64, subject, detail string) error
	Close() error
}
