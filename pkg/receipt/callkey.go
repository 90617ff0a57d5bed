package receipt

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// A call's key keys the digests of a version 2 call receipt (see
// KeyedParamsDigest). The consumer and the provider agree it without
// sending it: each takes an ECDH shared secret between its own node key
// (the key of its TLS certificate, which never leaves its server) and the
// other's public key, and derives the call's key from that secret and the
// call's ID and nodes with HKDF-SHA256. The hub relays both public keys
// and the call ID but holds neither private key, so it can compute
// neither the key nor a digest to compare with the receipt's: a guessed
// ID number cannot be confirmed from what it stores. Either node can
// derive the key again later from its own node key and the other's public
// key, which the receipt names; the consumer may show one call's key to
// a third party to prove that call's parameters without revealing any
// other call's.

// callKeyCache bounds the shared secrets a CallKeyer remembers: a peer's
// secret is worked out once, but a hostile hub must not grow the cache
// with made-up keys.
const callKeyCache = 4096

// CallKeyer agrees call keys with other nodes from this node's key.
type CallKeyer struct {
	priv *ecdh.PrivateKey
	pub  []byte // this node's public key, PKIX DER

	mu   sync.Mutex
	prks map[string][]byte // peer's PKIX DER → HKDF pseudorandom key of the shared secret
}

// NewCallKeyer makes a CallKeyer from a node's private key, which must be
// an ECDSA key on a curve crypto/ecdh supports (node keys are P-256).
func NewCallKeyer(k crypto.PrivateKey) (*CallKeyer, error) {
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("call key: the node key is a %T, not an ECDSA key: it cannot agree call keys", k)
	}
	priv, err := ek.ECDH()
	if err != nil {
		return nil, fmt.Errorf("call key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&ek.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("call key: %w", err)
	}
	return &CallKeyer{priv: priv, pub: pub, prks: map[string][]byte{}}, nil
}

// Public is this node's public key (PKIX DER), which the other node needs
// to agree a call's key.
func (k *CallKeyer) Public() []byte { return k.pub }

// ErrPeerKey means another node's public key cannot agree a call's key.
var ErrPeerKey = errors.New("the other node's public key cannot agree the call's key")

// CallKey is the key of call id between consumer and provider, agreed with
// peer, the other node's public key (PKIX DER).
func (k *CallKeyer) CallKey(peer []byte, id, consumer, provider string) ([]byte, error) {
	prk, err := k.prk(peer)
	if err != nil {
		return nil, err
	}
	return hkdf.Expand(sha256.New, prk, callKeyInfo(id, consumer, provider), 32)
}

// callKeyInfo binds a call's key to the call and both nodes; JSON keeps
// the three apart whatever they hold.
func callKeyInfo(id, consumer, provider string) string {
	b, _ := json.Marshal([]string{CallKeyDomain, id, consumer, provider})
	return string(b)
}

// CallKeyDomain separates call keys from any other use of the shared
// secret.
const CallKeyDomain = "qianzhi-call-key-v2"

func (k *CallKeyer) prk(peer []byte) ([]byte, error) {
	k.mu.Lock()
	prk, ok := k.prks[string(peer)]
	k.mu.Unlock()
	if ok {
		return prk, nil
	}
	if len(peer) == 0 || len(peer) > 1024 {
		return nil, fmt.Errorf("%w: %d bytes", ErrPeerKey, len(peer))
	}
	p, err := x509.ParsePKIXPublicKey(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPeerKey, err)
	}
	var pub *ecdh.PublicKey
	switch p := p.(type) {
	case *ecdsa.PublicKey:
		if pub, err = p.ECDH(); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrPeerKey, err)
		}
	case *ecdh.PublicKey:
		pub = p
	default:
		return nil, fmt.Errorf("%w: a %T", ErrPeerKey, p)
	}
	if pub.Curve() != k.priv.Curve() {
		return nil, fmt.Errorf("%w: it is on another curve than this node's key", ErrPeerKey)
	}
	z, err := k.priv.ECDH(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPeerKey, err)
	}
	prk, err = hkdf.Extract(sha256.New, z, []byte(CallKeyDomain))
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	if len(k.prks) >= callKeyCache {
		clear(k.prks)
	}
	k.prks[string(peer)] = prk
	k.mu.Unlock()
	return prk, nil
}
