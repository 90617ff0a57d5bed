package sqltable

import "testing"

func TestColumnHint(t *testing.T) {
	for _, c := range []struct{ ddl, quoted, want string }{
		{"CREATE TABLE `x` (\n  `户籍` VARCHAR(20),\n  PRIMARY KEY (`户籍`)\n)", "`户籍`", ", e.g. ADD `户籍` VARCHAR(20)"},
		{"CREATE TABLE `x` (\n  `a` DECIMAL(12,2) NOT NULL,\n  PRIMARY KEY (`a`)\n)", "`a`", ", e.g. ADD `a` DECIMAL(12,2)"},
		{`CREATE TABLE "x" ("a" NUMBER(12,2) NOT NULL, PRIMARY KEY ("a"))`, `"a"`, `, e.g. ADD "a" NUMBER(12,2)`},
		{`CREATE TABLE "x" ("a" TEXT)`, `"a"`, `, e.g. ADD "a" TEXT`},
		{`CREATE TABLE "x" ("b" TEXT)`, `"a"`, ""},
	} {
		if got := columnHint(c.ddl, c.quoted); got != c.want {
			t.Errorf("columnHint(%q) = %q, want %q", c.ddl, got, c.want)
		}
	}
}
