package mask

import (
	"bytes"
	"strings"
	"testing"

	"github.com/qianzhi/qianzhi/pkg/batch"
)

func TestRules(t *testing.T) {
	secret := Secret([]byte("key"), "g-1")
	for _, c := range []struct {
		rule, in, want string
	}{
		{"idcard", "110101199003078515", "110***********8515"},
		{"keep(3,4)", "13812345678", "138****5678"},
		{"name", "张三丰", "张**"},
		{"keep(1,1)", "李四", "**"}, // too short to keep anything
		{"truncate(3)", "北京市海淀区中关村", "北京市"},
		{"truncate(10)", "短", "短"},
		{"keep(2,0)", "", ""},
	} {
		r, err := Parse(c.rule)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(r.Apply([]byte(c.in), secret)); got != c.want {
			t.Errorf("%s(%q) = %q, want %q", c.rule, c.in, got, c.want)
		}
	}
	h, _ := Parse("hash")
	a, b := h.Apply([]byte("110101199003078515"), secret), h.Apply([]byte("110101199003078515"), secret)
	other := h.Apply([]byte("110101199003078515"), Secret([]byte("key"), "g-2"))
	if !bytes.Equal(a, b) || bytes.Equal(a, other) || len(a) != HashLen || bytes.Contains(a, []byte("8515")) {
		t.Fatalf("hash: %s %s %s", a, b, other)
	}
	n, _ := Parse("null")
	if n.Apply([]byte("x"), secret) != nil || h.Apply(nil, secret) != nil {
		t.Fatal("null must give NULL, and NULL stay NULL")
	}
	for _, bad := range []string{"keep(3)", "mask", "truncate(-1)", "keep(a,b)", "hash()"} {
		if _, err := Parse(bad); err == nil || !strings.Contains(err.Error(), "use keep(A,B)") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestColumn(t *testing.T) {
	id := batch.Column{Name: "身份证号", Type: batch.TypeString, Length: 18}
	amount := batch.Column{Name: "金额", Type: batch.TypeDecimal, Precision: 12, Scale: 2}
	for _, c := range []struct {
		rule string
		in   batch.Column
		want batch.Column
	}{
		{"idcard", id, batch.Column{Name: "身份证号", Type: batch.TypeString, Length: 18}},
		{"hash", amount, batch.Column{Name: "金额", Type: batch.TypeString, Length: HashLen}},
		{"truncate(3)", amount, batch.Column{Name: "金额", Type: batch.TypeString, Length: 3}},
		{"keep(1,1)", amount, batch.Column{Name: "金额", Type: batch.TypeText}},
		{"null", amount, batch.Column{Name: "金额", Type: batch.TypeDecimal, Precision: 12, Scale: 2, Nullable: true}},
	} {
		r, _ := Parse(c.rule)
		if got := r.Column(c.in); got != c.want {
			t.Errorf("%s on %+v: %+v, want %+v", c.rule, c.in, got, c.want)
		}
	}
}
