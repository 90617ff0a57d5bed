package api

// What the hub found when a consumer rejected a delivered batch
// (RejectionAnswer.Action).
const (
	// RejectRefetch: the hub's copy passes its check, so the damage was on
	// the consumer's side; download it again (after a backoff).
	RejectRefetch = "refetch"
	// RejectResend: the hub's copy is damaged too; it dropped it and asked
	// the provider for it again. The batch is delivered once it is back.
	RejectResend = "resend"
)

// RejectionAnswer is the hub's answer to a Rejection.
type RejectionAnswer struct {
	Action string `json:"action"` // RejectRefetch or RejectResend
}

// ResendPoll is a provider's periodic question about the batch grants it
// provides: for each, the highest sequence number whose receipt it has
// already checked.
type ResendPoll struct {
	Grants []ResendGrant `json:"grants"`
}

// ResendGrant is one grant of a ResendPoll.
type ResendGrant struct {
	Grant string `json:"grant"`
	After uint64 `json:"after"` // receipts up to here are known
}

// ResendAnswer lists, for the polled grants where there is news, the
// latest receipt after ResendGrant.After and the batches the hub wants
// again.
type ResendAnswer struct {
	Grants []ResendNews `json:"grants"`
}

// ResendNews is what changed for one grant.
type ResendNews struct {
	Grant string `json:"grant"`
	// Receipt is the grant's receipted batch with the highest sequence
	// number, with the consumer's signed receipt exactly as signed; the
	// consumer applies in order, so it covers every batch before it.
	Receipt *ReceiptRecord `json:"receipt,omitempty"`
	// Resend lists batches whose stored copy the hub found damaged and
	// dropped: the provider sends each again under the same sequence
	// number, or a replacement (see docs/protocol.md).
	Resend []uint64 `json:"resend,omitempty"`
}
