package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Share categories (共享类别).
const (
	ShareUnconditional = "unconditional" // 无条件共享: any department, after the hub's check
	ShareConditional   = "conditional"   // 有条件共享: the provider decides each application
	ShareNone          = "none"          // 不予共享: cannot be applied for; needs a legal basis
)

// Share modes (共享方式).
const (
	ModeBatch  = "batch"  // 批量复制
	ModeQuery  = "query"  // 查询引用
	ModeVerify = "verify" // 比对验证
)

// Update frequencies (更新频率).
var Frequencies = []string{"realtime", "hourly", "daily", "weekly", "monthly", "quarterly", "yearly", "irregular"}

// CatalogEntry is a resource's entry in the data resource catalog
// (数据资源目录), with the fields the regulations list. The provider
// declares it with the resource in its agent config; the hub reviews each
// new or changed entry before other departments see it.
type CatalogEntry struct {
	// Resource is the resource ID; filled in from the resource.
	Resource string `json:"resource" yaml:"-"`
	// Name is the resource's name (资源名称), e.g. 户籍人口基本信息.
	Name string `json:"name" yaml:"name"`
	// Code is the catalog code (目录编码) the department's catalog assigns.
	Code string `json:"code" yaml:"code"`
	// Format is the data format (资源格式): table, file, or what the files are.
	Format string `json:"format" yaml:"format"`
	// Description says what the data is, for people searching the catalog.
	Description string `json:"description,omitempty" yaml:"description"`
	// Fields are the data items (信息项) with their types.
	Fields []CatalogField `json:"fields" yaml:"fields"`
	// Category is the share category: unconditional, conditional or none.
	Category string `json:"category" yaml:"category"`
	// Scope is the share scope (共享范围), e.g. 全市政务部门.
	Scope string `json:"scope,omitempty" yaml:"scope"`
	// Frequency is the update frequency (更新频率), one of Frequencies.
	Frequency string `json:"frequency" yaml:"frequency"`
	// Timeliness is the timeliness requirement (时效要求), e.g. 2个工作日内.
	Timeliness string `json:"timeliness,omitempty" yaml:"timeliness"`
	// Modes are the share modes offered: batch, query, verify.
	Modes []string `json:"modes" yaml:"modes"`
	// Department is the providing department's name (提供单位).
	Department string `json:"department" yaml:"department"`
	// Open marks data open to the public (是否向社会开放).
	Open bool `json:"open" yaml:"open"`
	// LegalBasis (依据) is required for conditional and none.
	LegalBasis string `json:"legal_basis,omitempty" yaml:"legal_basis"`
	// Dedicated lists consumer node IDs of a dedicated share (专用):
	// their applications are approved at once.
	Dedicated []string `json:"dedicated,omitempty" yaml:"dedicated"`
	// Calls are the declared calls that the query and verify modes answer.
	// They are copied from the resource's calls (without their SQL).
	Calls []CallDecl `json:"calls,omitempty" yaml:"-"`
}

// CallNamed returns the entry's declared call of that name.
func (e *CatalogEntry) CallNamed(name string) (*CallDecl, bool) {
	for i := range e.Calls {
		if e.Calls[i].Name == name {
			return &e.Calls[i], true
		}
	}
	return nil, false
}

// CatalogField is one data item of an entry.
type CatalogField struct {
	Name        string `json:"name" yaml:"name"`
	Type        string `json:"type" yaml:"type"`
	Description string `json:"description,omitempty" yaml:"description"`
}

// Validate reports every problem with the entry.
func (e *CatalogEntry) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf("catalog: "+format, args...)) }
	if strings.TrimSpace(e.Name) == "" {
		add("name is required (资源名称)")
	}
	if strings.TrimSpace(e.Code) == "" {
		add("code is required (目录编码)")
	}
	if strings.TrimSpace(e.Format) == "" {
		add("format is required (资源格式), e.g. table or file")
	}
	if strings.TrimSpace(e.Department) == "" {
		add("department is required (提供单位)")
	}
	if len(e.Fields) == 0 {
		add("fields are required: the data items (信息项) with their types")
	}
	seen := map[string]bool{}
	for i, f := range e.Fields {
		if f.Name == "" || f.Type == "" {
			add("fields[%d]: name and type are required", i)
		}
		if strings.ContainsAny(f.Name, ",=\n") {
			add("field %q: a name cannot hold a comma, '=' or a line break", f.Name)
		}
		if seen[f.Name] {
			add("field %q is listed twice", f.Name)
		}
		seen[f.Name] = true
	}
	switch e.Category {
	case ShareUnconditional:
	case ShareConditional, ShareNone:
		if strings.TrimSpace(e.LegalBasis) == "" {
			add("category %s needs legal_basis: the law or rule behind the restriction (依据)", e.Category)
		}
	default:
		add("category %q: use unconditional, conditional or none", e.Category)
	}
	if !slices.Contains(Frequencies, e.Frequency) {
		add("frequency %q: use one of %s", e.Frequency, strings.Join(Frequencies, ", "))
	}
	if len(e.Modes) == 0 && e.Category != ShareNone {
		add("modes are required: batch, query and/or verify")
	}
	for _, m := range e.Modes {
		if m != ModeBatch && m != ModeQuery && m != ModeVerify {
			add("mode %q: use batch, query or verify", m)
		}
	}
	calls := map[string]bool{}
	for i := range e.Calls {
		c := &e.Calls[i]
		if err := c.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("catalog: %w", err))
		}
		if calls[c.Name] {
			add("call %q is declared twice", c.Name)
		}
		calls[c.Name] = true
		for _, f := range c.Fields {
			if !seen[f] {
				add("call %q: field %q is not among the entry's fields", c.Name, f)
			}
		}
	}
	for _, d := range e.Dedicated {
		if err := ValidID("node", d); err != nil {
			add("dedicated: %v", err)
		}
	}
	return errors.Join(errs...)
}

// Hash identifies the entry's content: an unchanged entry sent again is
// not a new version.
func (e *CatalogEntry) Hash() string {
	b, _ := json.Marshal(e)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// HasField reports whether the entry lists a data item.
func (e *CatalogEntry) HasField(name string) bool {
	return slices.ContainsFunc(e.Fields, func(f CatalogField) bool { return f.Name == name })
}

// Matches reports whether every word occurs in the entry's name, code,
// description, department or field names (case-insensitive; Chinese words
// match as substrings).
func (e *CatalogEntry) Matches(words []string) bool {
	var b strings.Builder
	for _, s := range []string{e.Resource, e.Name, e.Code, e.Description, e.Department, e.Format, e.Scope} {
		b.WriteString(s)
		b.WriteByte('\n')
	}
	for _, f := range e.Fields {
		b.WriteString(f.Name + "\n" + f.Description + "\n")
	}
	text := strings.ToLower(b.String())
	for _, w := range words {
		if !strings.Contains(text, strings.ToLower(w)) {
			return false
		}
	}
	return true
}

// CatalogVersion is one version of an entry and its review.
type CatalogVersion struct {
	Entry     CatalogEntry `json:"entry"`
	Provider  string       `json:"provider"`
	Version   int          `json:"version"`
	Status    string       `json:"status"` // pending, approved, rejected
	Reason    string       `json:"reason,omitempty"`
	Submitted time.Time    `json:"submitted"`
	Deadline  time.Time    `json:"deadline"`
	Decided   time.Time    `json:"decided,omitzero"`
}

// Application states (共享申请).
const (
	AppHubReview      = "hub_review"      // the hub's compliance check
	AppProviderReview = "provider_review" // the provider's decision
	AppApproved       = "approved"        // a grant exists
	AppRejected       = "rejected"        // with a reason
	AppRevoked        = "revoked"         // its grant was revoked
	AppExpired        = "expired"         // its grant expired
)

// ApplicationRequest is what a consumer sends to apply for a resource.
type ApplicationRequest struct {
	Resource string   `json:"resource"`
	Fields   []string `json:"fields"`
	Mode     string   `json:"mode"`
	Purpose  string   `json:"purpose"`  // 用途
	Scenario string   `json:"scenario"` // 应用场景
}

// Application is an application and where it stands.
type Application struct {
	ID       string    `json:"id"`
	Resource string    `json:"resource"`
	Provider string    `json:"provider"`
	Consumer string    `json:"consumer"`
	Fields   []string  `json:"fields"`
	Mode     string    `json:"mode"`
	Purpose  string    `json:"purpose"`
	Scenario string    `json:"scenario"`
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"` // of a rejection
	Created  time.Time `json:"created"`
	// Deadline is when the current review step is due (zero once decided).
	Deadline time.Time `json:"deadline,omitzero"`
	Grant    string    `json:"grant,omitempty"`
	// Steps are the application's history, oldest first.
	Steps []ApplicationStep `json:"steps,omitempty"`
}

// ApplicationStep is one change of an application's state.
type ApplicationStep struct {
	State  string    `json:"state"`
	Actor  string    `json:"actor"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
	// Late is how many working days after its deadline the step was taken.
	Late int `json:"late,omitempty"`
}

// Decision is a reviewer's answer to an application.
type Decision struct {
	Approve bool   `json:"approve"`
	Reason  string `json:"reason,omitempty"`
	// Masks, in a provider's approval, are masking rules by field that
	// the grant will carry (see pkg/mask).
	Masks map[string]string `json:"masks,omitempty"`
	// Days, in a provider's approval, limits the grant's life (0: no end).
	Days int `json:"days,omitempty"`
	// Destroy, in a provider's approval, makes the consumer destroy what
	// it received once the grant ends, by expiry or revocation.
	Destroy bool `json:"destroy,omitempty"`
	// Rate and Quota, in a provider's approval of a query or verify
	// grant, bound its calls per second and per day (0: the hub's
	// defaults).
	Rate  float64 `json:"rate,omitempty"`
	Quota int     `json:"quota,omitempty"`
}

// FeedbackRequest is a consumer's report of an error in a record (纠错).
type FeedbackRequest struct {
	Resource   string `json:"resource"`
	Record     string `json:"record"` // which record: its key, e.g. 身份证号=110101…
	Field      string `json:"field"`
	Problem    string `json:"problem"`
	Suggestion string `json:"suggestion,omitempty"`
}

// Feedback is a reported error and its answer.
type Feedback struct {
	ID       string `json:"id"`
	Provider string `json:"provider"`
	Consumer string `json:"consumer"`
	FeedbackRequest
	Created  time.Time `json:"created"`
	Deadline time.Time `json:"deadline"`
	Answer   string    `json:"answer,omitempty"`
	Answered time.Time `json:"answered,omitzero"`
	// Late is how many working days after the deadline the answer came.
	Late int `json:"late,omitempty"`
}
