// Package api holds the wire types of the hub's HTTP API, shared by the hub
// and the agent so that neither imports the other.
//
// Routes (all JSON unless noted; every route but ping and enroll needs a
// node certificate):
//
//	GET  /v1/ping                      liveness, also the transport probe
//	POST /v1/enroll                    EnrollRequest → EnrollResponse
//	POST /v1/renew                     RenewRequest → RenewResponse, before the certificate expires
//	POST /v1/resources                 []ResourceDecl (with catalog entries, for review)
//	GET  /v1/catalog?q=WORDS           → []CatalogVersion, the approved entries matching
//	POST /v1/applications              ApplicationRequest → Application (the caller is the consumer)
//	GET  /v1/applications              → []Application the caller provides or consumes
//	POST /v1/applications/{id}/decision Decision → Application (the caller must be the provider)
//	POST /v1/destructions              a signed destruction receipt (the caller is the grant's consumer)
//	POST /v1/feedback                  FeedbackRequest → Feedback (the caller holds a grant)
//	GET  /v1/feedback                  → []Feedback the caller reported or must answer
//	POST /v1/feedback/{id}/answer      {"text": …} → Feedback (the caller must be the provider)
//	GET  /v1/grants?wait=25s&version=V → []GrantInfo for the calling node (long poll)
//	GET  /v1/nodes/{id}/seal?key=K     → seal public key text, by key ID, with Qz-Enrolment
//	HEAD /v1/batches/{grant}/{seq}     upload status: Qz-Offset, Qz-Complete
//	PUT  /v1/batches/{grant}/{seq}     resumable upload from Qz-Offset, Qz-Total
//	GET  /v1/batches/{grant}/{seq}     download (Range supported)
//	GET  /v1/deliveries?wait=25s       long poll → []Delivery
//	POST /v1/receipts                  a signed receipt
//	GET  /v1/receipts?grant=G[&seq=N]  → []ReceiptRecord, for the grant's provider or consumer
//	GET  /v1/destructions[?grant=G]    → []DestructionRecord of the caller's grants revoked with destruction
//	POST /v1/rejections                Rejection → RejectionAnswer (the hub re-checks its copy)
//	POST /v1/resends                   ResendPoll → ResendAnswer (the caller is the grants' provider)
//	POST /v1/refusals                  GrantRefusal (the caller is the grant's provider)
//	POST /v1/calls                     CallRequest → CallAnswer (query or verify; the caller is the consumer)
//	GET  /v1/calls/next?wait=25s       long poll → []CallJob for the calling provider
//	POST /v1/calls/{id}/answer         CallAnswer, from the provider the call went to
//	POST /v1/calls/answers             []CallAnswer → []AnswerResult, several answers at once
//	GET  /v1/calls?grant=G&limit=N     → []CallRecord the caller made or answered, newest first
//	GET  /v1/audit/checkpoints?after=N → AuditCheckpoints: the hub's signed checkpoints of records after N
package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// Headers of the resumable upload.
const (
	HeaderOffset   = "Qz-Offset"   // bytes the hub holds / the upload starts at
	HeaderTotal    = "Qz-Total"    // the batch file's full size
	HeaderComplete = "Qz-Complete" // "1" when the hub has stored the batch
	HeaderVersion  = "Qz-Version"  // opaque version of a long-polled list
	HeaderTime     = "Qz-Time"     // the hub's clock (RFC 3339), on /v1/ping
	// HeaderEnrolment, on a seal key, names the audit record of the
	// enrolment that registered it: "SEQ HASH". Agents that pinned a
	// node's earlier key accept a new one only with it.
	HeaderEnrolment = "Qz-Enrolment"
)

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

// WriteError answers with status code and an Error.
func WriteError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(Error{Error: msg})
}

// WriteJSON answers 200 with v.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// EnrollRequest is what qz-agent enroll sends.
type EnrollRequest struct {
	Token   string `json:"token"`
	CSR     string `json:"csr"`
	SealPub string `json:"seal_pub"`
}

// EnrollResponse carries the issued identity.
type EnrollResponse struct {
	NodeID string `json:"node_id"`
	Cert   string `json:"cert"`
	CA     string `json:"ca"`
}

// RenewRequest asks for a new certificate, over the node's own connection.
type RenewRequest struct {
	CSR string `json:"csr"`
}

// RenewResponse carries the renewed certificate.
type RenewResponse struct {
	Cert string `json:"cert"`
}

// ResourceDecl is how an agent declares what it provides.
type ResourceDecl struct {
	ID      string        `json:"id"`
	Kind    string        `json:"kind"`
	Catalog *CatalogEntry `json:"catalog,omitempty"`
}

// GrantInfo is a grant as agents see it.
type GrantInfo struct {
	ID       string   `json:"id"`
	Resource string   `json:"resource"`
	Provider string   `json:"provider"`
	Consumer string   `json:"consumer"`
	Mode     string   `json:"mode"`
	Fields   []string `json:"fields,omitempty"`
	// Masks are masking rules by field (see pkg/mask), applied by the
	// provider before sealing.
	Masks  map[string]string `json:"masks,omitempty"`
	Active bool              `json:"active"`
	// Destroy, on an ended grant, tells the consumer to destroy what it
	// received under it and send a signed destruction receipt.
	Destroy bool      `json:"destroy,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
	// Rate and Quota bound a query or verify grant's calls per second and
	// per day, as the hub enforces them.
	Rate  float64 `json:"rate,omitempty"`
	Quota int     `json:"quota,omitempty"`
}

// Delivery is one batch waiting for a consumer.
type Delivery struct {
	Grant    string `json:"grant"`
	Sequence uint64 `json:"seq"`
	Resource string `json:"resource"`
	Provider string `json:"provider"`
	Size     int64  `json:"size"`
	Digest   string `json:"digest"`
}

// ReceiptRecord is a stored batch and, once applied, the consumer's signed
// receipt for it (the receipt's JSON exactly as signed).
type ReceiptRecord struct {
	Sequence  uint64          `json:"seq"`
	Size      int64           `json:"size"`
	Digest    string          `json:"digest"`
	Stored    time.Time       `json:"stored"`
	Receipted time.Time       `json:"receipted,omitzero"`
	Receipt   json.RawMessage `json:"receipt,omitempty"`
}

// DestructionRecord is an ended grant that asked for destruction and, once the
// consumer has destroyed what it received, its signed destruction receipt
// (the JSON exactly as signed).
type DestructionRecord struct {
	Grant    string          `json:"grant"`
	Resource string          `json:"resource"`
	Provider string          `json:"provider"`
	Consumer string          `json:"consumer"`
	Status   string          `json:"status"` // revoked or expired
	Recorded time.Time       `json:"recorded,omitzero"`
	Receipt  json.RawMessage `json:"receipt,omitempty"`
}

// Rejection is a consumer's report that a delivered batch failed its checks.
type Rejection struct {
	Grant    string `json:"grant"`
	Sequence uint64 `json:"seq"`
	Reason   string `json:"reason"`
}

// GrantRefusal is a provider's report that it refuses to serve a grant
// the hub lists: the provider's own config and approvals do not cover it
// (see docs/governance.md). Reason is one line.
type GrantRefusal struct {
	Grant  string `json:"grant"`
	Reason string `json:"reason"`
}

// MaxRefusalReason bounds a refusal's reason, in bytes.
const MaxRefusalReason = 500

// ValidID checks a node, resource or grant ID: 1 to 64 letters, digits,
// '-', '_' and '.', not starting with '.'. IDs become file and folder names
// on both sides, so nothing else is allowed.
func ValidID(what, id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("%s ID must be 1 to 64 characters", what)
	}
	if id[0] == '.' {
		return fmt.Errorf("%s ID %q must not start with '.'", what, id)
	}
	for _, r := range id {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%s ID %q may hold only letters, digits, '-', '_' and '.'", what, id)
		}
	}
	return nil
}

// Copy is the progress of a full copy (批量复制) of one resource to one
// consumer, as the provider's agent keeps it and reports it to the hub.
type Copy struct {
	ID       string `json:"id"`
	Grant    string `json:"grant"`
	Resource string `json:"resource"`
	Provider string `json:"provider,omitempty"`
	Consumer string `json:"consumer"`
	// State is requested, running, waiting (outside the copy window),
	// sent (every batch sealed; the consumer has yet to apply the last),
	// done, or stopped (the grant ended).
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	Scheduled bool   `json:"scheduled,omitempty"`
	// Total is what the copy moves, estimated when it starts.
	TotalRows  int64 `json:"total_rows,omitempty"`
	TotalFiles int64 `json:"total_files,omitempty"`
	TotalBytes int64 `json:"total_bytes,omitempty"`
	// Rows, Files and Bytes (before compression) were sealed so far, in
	// Batches batches numbered FirstSeq to LastSeq; Sent is what those
	// batches weigh on the wire.
	Rows     int64     `json:"rows"`
	Files    int64     `json:"files"`
	Bytes    int64     `json:"bytes"`
	Sent     int64     `json:"sent_bytes"`
	Batches  int64     `json:"batches"`
	FirstSeq uint64    `json:"first_seq,omitempty"`
	LastSeq  uint64    `json:"last_seq,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Updated  time.Time `json:"updated,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// Copy states.
const (
	CopyRequested = "requested"
	CopyRunning   = "running"
	CopyWaiting   = "waiting"
	CopySent      = "sent"
	CopyDone      = "done"
	CopyStopped   = "stopped"
)

// Active reports whether the copy still has batches to seal.
func (c *Copy) Active() bool {
	return c.State == CopyRunning || c.State == CopyWaiting
}
