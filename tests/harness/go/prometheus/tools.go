//go:build tools

// Package tools names the commands this module exists to build.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
