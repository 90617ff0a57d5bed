package api

import (
	"strings"
	"testing"
)

func validEntry() CatalogEntry {
	return CatalogEntry{
		Resource: "gaj.hukou", Name: "户籍人口基本信息", Code: "GA-001", Format: "table", Department: "市公安局",
		Description: "常住户籍人口", Fields: []CatalogField{{Name: "身份证号", Type: "string"}, {Name: "姓名", Type: "string"}},
		Category: ShareConditional, Frequency: "daily", Modes: []string{ModeBatch, ModeVerify}, LegalBasis: "《户口登记条例》",
	}
}

func TestCatalogValidate(t *testing.T) {
	e := validEntry()
	if err := e.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		edit func(*CatalogEntry)
		want string
	}{
		"conditional without basis": {func(e *CatalogEntry) { e.LegalBasis = "" }, "needs legal_basis"},
		"none without basis":        {func(e *CatalogEntry) { e.Category, e.LegalBasis = ShareNone, "" }, "needs legal_basis"},
		"unconditional ok":          {func(e *CatalogEntry) { e.Category, e.LegalBasis = ShareUnconditional, "" }, ""},
		"bad category":              {func(e *CatalogEntry) { e.Category = "open" }, `category "open"`},
		"bad frequency":             {func(e *CatalogEntry) { e.Frequency = "sometimes" }, "frequency"},
		"bad mode":                  {func(e *CatalogEntry) { e.Modes = []string{"stream"} }, `mode "stream"`},
		"no fields":                 {func(e *CatalogEntry) { e.Fields = nil }, "fields are required"},
		"duplicate field":           {func(e *CatalogEntry) { e.Fields = append(e.Fields, CatalogField{Name: "姓名", Type: "string"}) }, "listed twice"},
		"no name":                   {func(e *CatalogEntry) { e.Name = " " }, "name is required"},
	} {
		t.Run(name, func(t *testing.T) {
			e := validEntry()
			c.edit(&e)
			err := e.Validate()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}

func TestCatalogMatches(t *testing.T) {
	e := validEntry()
	for words, want := range map[string]bool{
		"户籍":       true,
		"户籍 身份证号":  true,
		"公安局 人口":   true,
		"ga-001":   true,
		"户籍 婚姻":    false,
		"":         true,
		"Hukou 姓名": true,
	} {
		if got := e.Matches(strings.Fields(words)); got != want {
			t.Errorf("%q: %v, want %v", words, got, want)
		}
	}
}
