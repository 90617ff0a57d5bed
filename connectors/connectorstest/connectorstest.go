// Package connectorstest has helpers for testing connectors without an
// agent.
package connectorstest

import (
	"sort"
	"strings"

	"github.com/qianzhi/qianzhi/connectors"
)

// MemState is a connectors.State in memory that commits Changes the way the
// agent does. Its scope is "test" unless named.
type MemState struct {
	Name string
	KV   map[string][]byte
}

// NewMemState returns an empty state.
func NewMemState(scope string) *MemState {
	return &MemState{Name: scope, KV: map[string][]byte{}}
}

// Scope names the state.
func (m *MemState) Scope() string { return m.Name }

// Get returns a committed value.
func (m *MemState) Get(k string) ([]byte, bool, error) { v, ok := m.KV[k]; return v, ok, nil }

// Scan visits committed keys with a prefix in order.
func (m *MemState) Scan(prefix string, fn func(string, []byte) error) error {
	var keys []string
	for k := range m.KV {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn(k, m.KV[k]); err != nil {
			return err
		}
	}
	return nil
}

// Commit applies staged changes.
func (m *MemState) Commit(ch *connectors.Changes) {
	ch.Each(func(k string, v []byte) error {
		if v == nil {
			delete(m.KV, k)
		} else {
			m.KV[k] = v
		}
		return nil
	})
}
