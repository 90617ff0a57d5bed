package api

import "github.com/qianzhi/qianzhi/pkg/anchor"

// MaxCheckpoints is the most checkpoints one answer of
// GET /v1/audit/checkpoints carries: the newest ones after the record asked.
const MaxCheckpoints = 100

// AuditCheckpoints answers GET /v1/audit/checkpoints?after=N: the newest
// signed checkpoints of audit records after N (at most MaxCheckpoints),
// oldest first, and how often the hub signs them, so an agent asks again
// when the next may be there. The agent checks each against the CA it
// pinned at enrolment before keeping it.
type AuditCheckpoints struct {
	IntervalMS  int64               `json:"interval_ms"`
	Checkpoints []anchor.Checkpoint `json:"checkpoints"`
}
