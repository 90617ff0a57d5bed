package agent

// Peers are pinned: the first seal key this node meets for a peer is
// kept in its state database, and from then on the hub's word alone does
// not change it. A new key for a known peer is accepted only when the hub
// names the audit record of the enrolment that registered it (the
// Qz-Enrolment header; a re-enrolment with a token from the hub
// operator); it is then shown as a warning. A key the hub holds by any
// other way (its database edited by hand, say) is refused, so a hub
// cannot forge a department's seal by swapping its key.

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/qianzhi/qianzhi/pkg/api"
	"github.com/qianzhi/qianzhi/pkg/batch"
	"github.com/qianzhi/qianzhi/pkg/calendar"
	"github.com/qianzhi/qianzhi/pkg/seal"
	"github.com/qianzhi/qianzhi/transport"
)

// Peer key states.
const (
	PeerFirst   = "first"   // the first key met for the node: trusted on first use
	PeerChanged = "changed" // a later key, registered by an audited enrolment
	PeerRefused = "refused" // a later key the hub holds without an audited enrolment
)

// ErrKeyNotPinned means a peer presented a seal key that this node has
// not pinned and may not accept: its batches and receipts are refused.
var ErrKeyNotPinned = errors.New("seal key not pinned")

// PeerKey is a peer's seal key as this node keeps it.
type PeerKey struct {
	Node        string    `json:"node"`
	KeyID       string    `json:"key_id"`
	Pub         string    `json:"pub"`
	Fingerprint string    `json:"fingerprint"`
	FirstSeen   time.Time `json:"first_seen"`
	Status      string    `json:"status"`
	// Enrolment is the hub's audit record ("SEQ HASH") of the enrolment
	// that registered the key, when the hub named one.
	Enrolment string `json:"enrolment,omitempty"`
}

// Fingerprint is the SHA-256 of a public key's raw bytes in groups of
// four hex digits, to read aloud and compare over the phone.
func Fingerprint(p seal.PublicKey) string {
	sum := sha256.Sum256(p.Bytes())
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var groups []string
	for i := 0; i < len(h); i += 4 {
		groups = append(groups, h[i:i+4])
	}
	return strings.Join(groups, " ")
}

// PeerKeys lists every pinned, changed and refused key, by node and when
// first seen.
func (s *State) PeerKeys(ctx context.Context) ([]PeerKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT node, key_id, pub, first_seen, status, enrolment FROM peer_keys ORDER BY node, first_seen, key_id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PeerKey
	for rows.Next() {
		var k PeerKey
		var at string
		if err := rows.Scan(&k.Node, &k.KeyID, &k.Pub, &at, &k.Status, &k.Enrolment); err != nil {
			return nil, err
		}
		k.FirstSeen, _ = time.Parse(time.RFC3339Nano, at)
		if p, err := seal.ParsePublic(k.Pub); err == nil {
			k.Fingerprint = Fingerprint(p)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// pinnedKey returns node's seal key keyID if this node accepts it: pinned
// before, or met now as the node's first key, or registered by an audited
// enrolment. log may be nil (one-off commands).
func pinnedKey(ctx context.Context, st *State, hub *transport.Client, log *slog.Logger, node, keyID string) (seal.PublicKey, error) {
	var pub, status string
	err := st.db.QueryRowContext(ctx, `SELECT pub, status FROM peer_keys WHERE node = ? AND key_id = ?`, node, keyID).Scan(&pub, &status)
	if err == nil && status != PeerRefused {
		return seal.ParsePublic(pub)
	}
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return seal.PublicKey{}, fmt.Errorf("read pinned keys: %w", err)
	}
	k, enrolment, err := fetchPeerKey(ctx, hub, node, keyID)
	if err != nil {
		return k, err
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	var verdict string
	err = st.tx(ctx, func(tx *sql.Tx) error {
		var known int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM peer_keys WHERE node = ? AND status != ? AND key_id != ?`, node, PeerRefused, keyID).Scan(&known); err != nil {
			return err
		}
		switch {
		case known == 0:
			verdict = PeerFirst
		case enrolment != "":
			verdict = PeerChanged
		default:
			verdict = PeerRefused
		}
		_, err := tx.Exec(`INSERT INTO peer_keys (node, key_id, pub, first_seen, status, enrolment) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (node, key_id) DO UPDATE SET status = excluded.status, enrolment = excluded.enrolment`, node, keyID, k.String(), now, verdict, enrolment)
		return err
	})
	if err != nil {
		return seal.PublicKey{}, fmt.Errorf("pin seal key: %w", err)
	}
	switch verdict {
	case PeerChanged:
		if log != nil {
			log.Warn("a peer's seal key changed: accepted, registered by an audited re-enrolment; compare its fingerprint with the department (qz-agent peers)",
				"peer", node, "key", keyID, "fingerprint", Fingerprint(k), "enrolment", enrolment)
		}
	case PeerRefused:
		if log != nil && status != PeerRefused {
			log.Error("a peer's seal key changed without an audited re-enrolment: refused; what it sealed is refused too (qz-agent peers)",
				"peer", node, "key", keyID, "fingerprint", Fingerprint(k))
		}
		return seal.PublicKey{}, fmt.Errorf("%w: %w: node %s presents seal key %s, which the hub holds without an audited re-enrolment, and this node pinned another key for it (see 'qz-agent peers'); a changed key is accepted only after 'qz-agent enroll' with a token from the hub operator",
			batch.ErrUnknownKey, ErrKeyNotPinned, node, keyID)
	}
	return k, nil
}

// fetchPeerKey asks the hub for a node's seal key by key ID, with the
// audit record of the enrolment that registered it ("" if the hub names
// none), and checks the answer is that key.
func fetchPeerKey(ctx context.Context, hub *transport.Client, node, keyID string) (seal.PublicKey, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hub.URL("/v1/nodes/"+url.PathEscape(node)+"/seal?"+url.Values{"key": {keyID}}.Encode()), nil)
	if err != nil {
		return seal.PublicKey{}, "", err
	}
	resp, err := hub.Do(req)
	if err != nil {
		return seal.PublicKey{}, "", fmt.Errorf("%w: %w", errTransient, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return seal.PublicKey{}, "", fmt.Errorf("%w: %s is not a seal key of node %s", batch.ErrUnknownKey, keyID, node)
	}
	if resp.StatusCode != http.StatusOK {
		return seal.PublicKey{}, "", fmt.Errorf("seal key of %s: %s", node, apiError(resp))
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return seal.PublicKey{}, "", err
	}
	pub, err := seal.ParsePublic(string(b))
	if err != nil {
		return pub, "", err
	}
	if pub.KeyID() != keyID {
		return seal.PublicKey{}, "", fmt.Errorf("hub sent seal key %s for %s", pub.KeyID(), keyID)
	}
	return pub, enrolmentRef(resp.Header.Get(api.HeaderEnrolment)), nil
}

// enrolmentRef checks the form of an enrolment reference, "SEQ HASH";
// anything else counts as none.
func enrolmentRef(h string) string {
	seq, hash, ok := strings.Cut(strings.TrimSpace(h), " ")
	if n, err := strconv.ParseInt(seq, 10, 64); !ok || err != nil || n <= 0 {
		return ""
	}
	if b, err := hex.DecodeString(hash); err != nil || len(b) != sha256.Size {
		return ""
	}
	return seq + " " + hash
}

// pinnedKeys opens this node's pinned keys for a one-off command; the
// lookup it returns pins as the running agent does.
func pinnedKeys(cfg Config, hub *transport.Client) (func(ctx context.Context, node, keyID string) (seal.PublicKey, error), func(), error) {
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context, node, keyID string) (seal.PublicKey, error) {
		return pinnedKey(ctx, st, hub, nil, node, keyID)
	}, func() { st.Close() }, nil
}

// Peers reads this node's own seal key and the peers' keys it keeps.
func Peers(ctx context.Context, cfg Config) (PeerKey, []PeerKey, error) {
	id, err := LoadIdentity(cfg.identityDir())
	if err != nil {
		return PeerKey{}, nil, err
	}
	st, err := OpenState(cfg.dbPath())
	if err != nil {
		return PeerKey{}, nil, err
	}
	defer st.Close()
	me := PeerKey{Node: id.NodeID, KeyID: id.Seal.KeyID(), Pub: id.Seal.Public().String(), Fingerprint: Fingerprint(id.Seal.Public())}
	ks, err := st.PeerKeys(ctx)
	return me, ks, err
}

func printPeers(w io.Writer, me PeerKey, ks []PeerKey, asJSON bool) error {
	if asJSON {
		return printJSON(w, struct {
			Self  PeerKey   `json:"self"`
			Peers []PeerKey `json:"peers"`
		}{me, ks})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "this node %s\tseal key %s\tfingerprint %s\n\n", me.Node, me.KeyID, me.Fingerprint)
	fmt.Fprintln(tw, "NODE\tKEY\tFINGERPRINT (SHA-256)\tFIRST SEEN (CST)\tSTATE")
	for _, k := range ks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Node, k.KeyID, k.Fingerprint, k.FirstSeen.In(calendar.CST).Format(time.DateTime), peerState(k))
	}
	if len(ks) == 0 {
		fmt.Fprintln(tw, "(no peer met yet)")
	}
	return tw.Flush()
}

func peerState(k PeerKey) string {
	switch k.Status {
	case PeerFirst:
		return "pinned on first use"
	case PeerChanged:
		seq, _, _ := strings.Cut(k.Enrolment, " ")
		return "CHANGED: accepted, re-enrolment audit record " + seq + "; compare the fingerprint with the department"
	default:
		return "REFUSED: the hub holds it without an audited re-enrolment"
	}
}
