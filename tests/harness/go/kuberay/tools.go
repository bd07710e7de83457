//go:build tools

// Package tools names the commands this module exists to build.
package tools

import _ "github.com/ray-project/kuberay/ray-operator"
